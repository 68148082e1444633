//! Raw → validated configuration. Runs before any port is bound; collects every problem
//! with its place instead of stopping at the first.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme, Uri};
use toml::Spanned;

use super::location::SourceText;
use super::raw::{RawConfig, RawCredential, RawRoute, Text};
use super::units::{parse_duration, parse_size};
use super::*;
use crate::credentials::Secret;
use crate::proxy::headers::is_never_forwarded;

/// The kinds this build knows, for the "write one of" hint.
const KNOWN_KINDS: &str =
    "\"api_key\", \"bedrock_api_key\", \"aws\", \"google\", \"azure\" or \"acs\"";

/// Where a key comes from: shared by `api_key`, `bedrock_api_key` and `acs`.
const KEY_SOURCE_FIELDS: &[&str] = &[
    "env",
    "file",
    "value",
    "helper",
    "helper_env",
    "ttl",
    "helper_timeout",
];
const AZURE_FIELDS: &[&str] = &[
    "method",
    "scope",
    "authority_host",
    "tenant_id",
    "client_id",
    "key_env",
    "apply",
];
const GOOGLE_FIELDS: &[&str] = &["key_file", "scopes", "quota_project", "project", "region"];
const AWS_FIELDS: &[&str] = &[
    "profile",
    "region",
    "role_arn",
    "external_id",
    "session_name",
    "service",
    "bearer_env",
];

struct Validator<'a> {
    text: SourceText<'a>,
    origin: ConfigOrigin,
    problems: Vec<Problem>,
}

pub(super) fn validate(text: &str, origin: ConfigOrigin) -> Result<Config, ConfigError> {
    let file = origin.display_name();
    let source = SourceText::new(text);
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            let hint = hint_for_parse_error(&message);
            return Err(ConfigError {
                file,
                problems: vec![source.problem(span, message, hint)],
            });
        }
    };
    let mut v = Validator {
        text: source,
        origin,
        problems: Vec::new(),
    };
    let config = v.config(raw);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError {
            file,
            problems: v.problems,
        })
    }
}

fn hint_for_parse_error(message: &str) -> Option<String> {
    if message.starts_with("unknown field") {
        Some(
            "remove the key or correct its spelling; the keys this table takes are listed above"
                .into(),
        )
    } else if message.contains("invalid type") {
        Some(
            "check the value's type: strings are quoted, lists use [ ], true/false are bare".into(),
        )
    } else {
        None
    }
}

impl Validator<'_> {
    fn report(&mut self, at: &Text, message: impl Into<String>, hint: impl Into<Option<String>>) {
        let problem = self.text.problem(at.span(), message, hint.into());
        self.problems.push(problem);
    }

    /// Checks that a key naming an environment variable holds a name, not a value.
    fn env_name(&mut self, text: Option<&Text>, hint: &str) -> bool {
        match text {
            Some(var) if !is_env_name(var.get_ref()) => {
                self.report(
                    var,
                    format!("`{}` is not an environment variable name", var.get_ref()),
                    hint.to_string(),
                );
                false
            }
            _ => true,
        }
    }

    fn report_at(
        &mut self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        let problem = self.text.problem(span, message, hint.into());
        self.problems.push(problem);
    }

    fn report_span<T>(
        &mut self,
        at: &Spanned<T>,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        let problem = self.text.problem(at.span(), message, hint.into());
        self.problems.push(problem);
    }

    fn duration(&mut self, value: &Option<Text>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => match parse_duration(text.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.report(
                        text,
                        e,
                        "write a duration such as \"30s\", \"5m\" or \"1h30m\"".to_string(),
                    );
                    default
                }
            },
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let allow_non_loopback = raw
            .allow_non_loopback
            .as_ref()
            .is_some_and(|b| *b.get_ref());
        let default_listen = match &raw.listen {
            Some(text) => self.listen_addr(text, allow_non_loopback),
            None => Some(
                DEFAULT_LISTEN
                    .parse()
                    .expect("default listen address parses"),
            ),
        };
        let max_body = match &raw.max_body {
            None => DEFAULT_MAX_BODY,
            Some(text) => parse_size(text.get_ref()).unwrap_or_else(|e| {
                self.report(
                    text,
                    e,
                    "write a size such as \"32MiB\" or \"512KiB\"".to_string(),
                );
                DEFAULT_MAX_BODY
            }),
        };
        let connect_timeout = self.duration(&raw.connect_timeout, Duration::from_secs(10));
        let upstream_timeout = self.duration(&raw.upstream_timeout, Duration::from_secs(600));
        let shutdown_grace = self.duration(&raw.shutdown_grace, Duration::from_secs(30));
        let guard = self.guard(&raw);
        let ca_file = raw.ca_file.as_ref().map(|p| self.path(p.get_ref()));

        let (credentials, index) = self.credentials(&raw.credentials);
        let listeners = self.routes(
            &raw.routes,
            default_listen,
            allow_non_loopback,
            &index,
            &credentials,
        );
        Config {
            origin: self.origin.clone(),
            listeners,
            credentials,
            max_body,
            connect_timeout,
            upstream_timeout,
            shutdown_grace,
            guard,
            ca_file,
            regions: Vec::new(),
        }
    }

    fn listen_addr(&mut self, text: &Text, allow_non_loopback: bool) -> Option<SocketAddr> {
        match SocketAddr::from_str(text.get_ref()) {
            Err(_) => {
                self.report(
                    text,
                    format!("`{}` is not an address to listen on", text.get_ref()),
                    "write an IP address and port, such as \"127.0.0.1:8787\" or \"[::1]:8787\""
                        .to_string(),
                );
                None
            }
            Ok(addr) if !addr.ip().is_loopback() && !allow_non_loopback => {
                self.report(
                    text,
                    format!("`{addr}` is not a loopback address: anyone who can reach it could use your credentials"),
                    "listen on 127.0.0.1, or set `allow_non_loopback = true` at the top of the file if you really mean to serve other machines".to_string(),
                );
                None
            }
            Ok(addr) => Some(addr),
        }
    }

    fn guard(&mut self, raw: &RawConfig) -> GuardConfig {
        let mut guard = GuardConfig::default();
        for host in &raw.allowed_hosts {
            let name = host.get_ref().trim().to_ascii_lowercase();
            if name.is_empty() || name.contains(['/', ' ']) {
                self.report(
                    host,
                    format!("`{}` is not a host name", host.get_ref()),
                    "write a bare host name such as \"credproxy.internal\"".to_string(),
                );
            } else {
                guard.allowed_hosts.push(name);
            }
        }
        for origin in &raw.allowed_origins {
            let value = origin.get_ref().trim().trim_end_matches('/');
            match Uri::from_str(value) {
                Ok(uri)
                    if uri.scheme().is_some() && uri.authority().is_some() && uri.path() == "/" =>
                {
                    guard.allowed_origins.push(value.to_ascii_lowercase());
                }
                _ => self.report(
                    origin,
                    format!("`{}` is not a browser origin", origin.get_ref()),
                    "write scheme, host and port only, such as \"http://localhost:3000\""
                        .to_string(),
                ),
            }
        }
        guard
    }

    fn path(&self, text: &str) -> PathBuf {
        let expanded = match text.strip_prefix("~/") {
            Some(rest) => match std::env::var_os("HOME") {
                Some(home) => Path::new(&home).join(rest),
                None => PathBuf::from(text),
            },
            None => PathBuf::from(text),
        };
        match self.origin.base_dir() {
            Some(base) if expanded.is_relative() => base.join(expanded),
            _ => expanded,
        }
    }

    fn credentials(
        &mut self,
        raw: &BTreeMap<String, Spanned<RawCredential>>,
    ) -> (Vec<CredentialConfig>, HashMap<String, usize>) {
        let mut list = Vec::new();
        let mut index = HashMap::new();
        for (name, table) in raw {
            if let Some(spec) = self.credential(name, table) {
                index.insert(name.clone(), list.len());
                list.push(CredentialConfig {
                    name: name.clone(),
                    spec,
                });
            } else {
                // Remember the name so routes that use it are not reported a second time.
                index.insert(name.clone(), usize::MAX);
            }
        }
        (list, index)
    }

    fn credential(&mut self, name: &str, table: &Spanned<RawCredential>) -> Option<CredentialSpec> {
        let raw = table.get_ref();
        let Some(kind) = &raw.kind else {
            self.report_span(
                table,
                format!("credential `{name}` has no `kind`"),
                format!("add `kind = {KNOWN_KINDS}` to [credentials.{name}]"),
            );
            return None;
        };
        let kind_name = kind.get_ref().as_str();
        let groups: &[&[&str]] = match kind_name {
            "api_key" | "bedrock_api_key" => &[KEY_SOURCE_FIELDS, &["apply"]],
            "aws" => &[AWS_FIELDS],
            "google" => &[GOOGLE_FIELDS],
            "azure" => &[AZURE_FIELDS],
            "acs" => &[KEY_SOURCE_FIELDS],
            _ => &[],
        };
        let allowed: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
        let mut foreign = false;
        for (key, span) in raw.present() {
            if !allowed.is_empty() && !allowed.contains(&key) {
                let keys: Vec<_> = allowed.iter().map(|k| format!("`{k}`")).collect();
                self.report_at(
                    span,
                    format!("`{key}` does not apply to kind `{kind_name}`"),
                    format!("remove it; kind `{kind_name}` takes {}", keys.join(", ")),
                );
                foreign = true;
            }
        }
        if foreign {
            return None;
        }
        match kind_name {
            "api_key" => self
                .key_credential(name, table, Rejection::Unauthorized)
                .map(CredentialSpec::Key),
            "bedrock_api_key" => self
                .key_credential(name, table, Rejection::BedrockApiKey)
                .map(CredentialSpec::Key),
            "aws" => self
                .aws_credential(table.get_ref())
                .map(CredentialSpec::Aws),
            "google" => self
                .google_credential(table.get_ref())
                .map(CredentialSpec::Google),
            "azure" => self
                .azure_credential(table.get_ref())
                .map(CredentialSpec::Azure),
            "acs" => self
                .key_credential(name, table, Rejection::Unauthorized)
                .map(CredentialSpec::Acs),
            other => {
                self.report(
                    kind,
                    format!("credential `{name}` has unknown kind `{other}`"),
                    format!("write `kind = {KNOWN_KINDS}`"),
                );
                None
            }
        }
    }

    fn azure_credential(&mut self, raw: &RawCredential) -> Option<AzureSpec> {
        let text = |t: &Option<Text>| t.as_ref().map(|t| t.get_ref().trim().to_string());
        let mut ok = true;
        let method = match &raw.method {
            None => AzureMethod::Auto,
            Some(m) => match AzureMethod::NAMES
                .iter()
                .find(|(n, _)| *n == m.get_ref().trim())
            {
                Some((_, method)) => *method,
                None => {
                    let names: Vec<_> = AzureMethod::NAMES
                        .iter()
                        .map(|(n, _)| format!("\"{n}\""))
                        .collect();
                    self.report(
                        m,
                        format!("`{}` is not an Azure credential method", m.get_ref()),
                        format!("write one of {}", names.join(", ")),
                    );
                    ok = false;
                    AzureMethod::Auto
                }
            },
        };
        let scope = text(&raw.scope).unwrap_or_else(|| DEFAULT_AZURE_SCOPE.to_string());
        if let Some(s) = &raw.scope
            && (scope.is_empty() || scope.contains(char::is_whitespace))
        {
            self.report(
                s,
                format!("`{}` is not an Entra scope", s.get_ref()),
                format!("write a scope such as \"{DEFAULT_AZURE_SCOPE}\""),
            );
            ok = false;
        }
        if let Some(host) = &raw.authority_host
            && !host.get_ref().starts_with("https://")
        {
            self.report(host, format!("`{}` is not an https URL", host.get_ref()), "write the authority host as https://..., such as \"https://login.microsoftonline.us\"".to_string());
            ok = false;
        }
        ok &= self.env_name(
            raw.key_env.as_ref(),
            "write a variable name such as \"ANTHROPIC_FOUNDRY_API_KEY\"",
        );
        let key_apply = self.apply(
            raw.apply.as_ref(),
            Apply::Header(HeaderName::from_static("api-key")),
        );
        if let Some(apply) = &raw.apply
            && raw.key_env.is_none()
        {
            self.report(apply, "`apply` applies to the key of `key_env`", "add `key_env`, or remove `apply` (Entra tokens always go in Authorization: Bearer)".to_string());
            ok = false;
        }
        let key_apply = key_apply?;
        ok.then(|| AzureSpec {
            method,
            scope,
            authority_host: text(&raw.authority_host).map(|h| h.trim_end_matches('/').to_string()),
            tenant_id: text(&raw.tenant_id),
            client_id: text(&raw.client_id),
            key_env: text(&raw.key_env),
            key_apply,
        })
    }

    fn google_credential(&mut self, raw: &RawCredential) -> Option<GoogleSpec> {
        let text = |t: &Option<Text>| t.as_ref().map(|t| t.get_ref().trim().to_string());
        let mut ok = true;
        let mut scopes = Vec::new();
        if let Some(list) = &raw.scopes {
            if list.get_ref().is_empty() {
                self.report_span(
                    list,
                    "`scopes` is empty",
                    format!("leave it out for [\"{DEFAULT_GOOGLE_SCOPE}\"]"),
                );
                ok = false;
            }
            for scope in list.get_ref() {
                if scope.get_ref().trim().is_empty()
                    || scope.get_ref().contains(char::is_whitespace)
                {
                    self.report(
                        scope,
                        format!("`{}` is not an OAuth scope", scope.get_ref()),
                        format!("write a scope URL such as \"{DEFAULT_GOOGLE_SCOPE}\""),
                    );
                    ok = false;
                }
                scopes.push(scope.get_ref().trim().to_string());
            }
        }
        if scopes.is_empty() {
            scopes.push(DEFAULT_GOOGLE_SCOPE.to_string());
        }
        if let Some(region) = &raw.region
            && !is_google_region(region.get_ref())
        {
            self.report(region, format!("`{}` is not a Google Cloud region", region.get_ref()), "write a region such as \"us-east5\", \"europe-west1\", \"global\", \"us\" or \"eu\"".to_string());
            ok = false;
        }
        ok.then(|| GoogleSpec {
            key_file: raw.key_file.as_ref().map(|p| self.path(p.get_ref())),
            scopes,
            quota_project: text(&raw.quota_project),
            project: text(&raw.project),
            region: text(&raw.region),
        })
    }

    fn aws_credential(&mut self, raw: &RawCredential) -> Option<AwsSpec> {
        let text = |t: &Option<Text>| t.as_ref().map(|t| t.get_ref().trim().to_string());
        let mut ok = true;
        if let Some(region) = &raw.region
            && !is_region(region.get_ref())
        {
            self.report(
                region,
                format!("`{}` is not an AWS region", region.get_ref()),
                "write a region code such as \"us-east-1\"".to_string(),
            );
            ok = false;
        }
        if let Some(role) = &raw.role_arn
            && !role.get_ref().starts_with("arn:")
        {
            self.report(
                role,
                format!("`{}` is not a role ARN", role.get_ref()),
                "write the role's ARN, such as \"arn:aws:iam::123456789012:role/bedrock-user\""
                    .to_string(),
            );
            ok = false;
        }
        if raw.role_arn.is_none() {
            for extra in [&raw.external_id, &raw.session_name].into_iter().flatten() {
                self.report(
                    extra,
                    "this applies only when assuming a role",
                    "add `role_arn`, or remove this key".to_string(),
                );
                ok = false;
            }
        }
        ok &= self.env_name(
            raw.bearer_env.as_ref(),
            "write a variable name such as \"AWS_BEARER_TOKEN_BEDROCK\"",
        );
        let service = text(&raw.service).unwrap_or_else(|| "bedrock".to_string());
        if let Some(s) = &raw.service
            && (service.is_empty()
                || !service
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            self.report(
                s,
                format!("`{}` is not an AWS service name", s.get_ref()),
                "write the SigV4 signing name, such as \"bedrock\"".to_string(),
            );
            ok = false;
        }
        ok.then(|| AwsSpec {
            profile: text(&raw.profile),
            region: text(&raw.region),
            role_arn: text(&raw.role_arn),
            external_id: text(&raw.external_id),
            session_name: text(&raw.session_name),
            service,
            bearer_env: text(&raw.bearer_env),
        })
    }

    fn key_credential(
        &mut self,
        name: &str,
        table: &Spanned<RawCredential>,
        rejection: Rejection,
    ) -> Option<KeySpec> {
        let raw = table.get_ref();
        let sources: Vec<(&str, &Text)> = [
            ("env", &raw.env),
            ("file", &raw.file),
            ("value", &raw.value),
            ("helper", &raw.helper),
        ]
        .into_iter()
        .filter_map(|(key, v)| v.as_ref().map(|t| (key, t)))
        .collect();
        let mut ok = true;
        if let [_, (second_key, second), ..] = sources.as_slice() {
            let keys: Vec<_> = sources.iter().map(|(k, _)| format!("`{k}`")).collect();
            self.report(
                second,
                format!("credential `{name}` names {} sources ({}); `{second_key}` is one too many", sources.len(), keys.join(", ")),
                "keep exactly one of `env`, `file`, `value` or `helper` (a `helper_env` may stand beside it)".to_string(),
            );
            ok = false;
        }
        if sources.is_empty() && raw.helper_env.is_none() {
            self.report_span(
                table,
                format!("credential `{name}` says nowhere to get the key from"),
                "add one of `env = \"ANTHROPIC_API_KEY\"`, `file = \"~/.config/anthropic/key\"` or `helper = \"<command printing the key>\"`".to_string(),
            );
            ok = false;
        }
        for (key, text) in sources
            .iter()
            .chain(raw.helper_env.as_ref().map(|t| ("helper_env", t)).iter())
        {
            if text.get_ref().trim().is_empty() {
                self.report(text, format!("`{key}` is empty"), None);
                ok = false;
            }
        }
        let is_helper = raw.helper.is_some() || raw.helper_env.is_some();
        let is_file = raw.file.is_some();
        if let Some(ttl) = &raw.ttl
            && !is_helper
            && !is_file
        {
            self.report(
                ttl,
                "`ttl` applies only to a `helper`, `helper_env` or `file` key",
                "remove `ttl`: keys from `env` or `value` never change while credproxy runs"
                    .to_string(),
            );
        }
        if let Some(timeout) = &raw.helper_timeout
            && !is_helper
        {
            self.report(
                timeout,
                "`helper_timeout` applies only to a `helper` or `helper_env` key",
                "remove `helper_timeout`".to_string(),
            );
        }
        let ttl = raw
            .ttl
            .as_ref()
            .map(|t| self.duration(&Some(t.clone()), DEFAULT_HELPER_TTL));
        let helper_ttl = ttl.unwrap_or(DEFAULT_HELPER_TTL);
        let helper_timeout = self.duration(&raw.helper_timeout, DEFAULT_HELPER_TIMEOUT);
        let default_apply = match rejection {
            Rejection::Unauthorized => Apply::Header(HeaderName::from_static("x-api-key")),
            Rejection::BedrockApiKey => Apply::Bearer,
        };
        let apply = self.apply(raw.apply.as_ref(), default_apply);

        ok &= self.env_name(
            raw.env.as_ref(),
            "write the variable's name, such as \"ANTHROPIC_API_KEY\", not its value",
        );
        ok &= self.env_name(raw.helper_env.as_ref(), "write the name of a variable that holds a helper command, such as \"CREDPROXY_API_KEY_HELPER\"");
        let from = if let Some(env) = &raw.env {
            Some(KeyFrom::Env(env.get_ref().clone()))
        } else if let Some(file) = &raw.file {
            Some(KeyFrom::File {
                path: self.path(file.get_ref()),
                ttl,
            })
        } else if let Some(value) = &raw.value {
            Some(KeyFrom::Literal(Secret::new(value.get_ref().trim())))
        } else {
            raw.helper
                .as_ref()
                .map(|h| KeyFrom::Helper(h.get_ref().clone()))
        };
        let apply = apply?;
        ok.then_some(KeySpec {
            helper_env: raw.helper_env.as_ref().map(|t| t.get_ref().clone()),
            from,
            helper_ttl,
            helper_timeout,
            apply,
            rejection,
        })
    }

    fn apply(&mut self, text: Option<&Text>, default: Apply) -> Option<Apply> {
        let Some(text) = text else {
            return Some(default);
        };
        let value = text.get_ref().trim();
        if value.eq_ignore_ascii_case("bearer") {
            return Some(Apply::Bearer);
        }
        match HeaderName::from_str(value) {
            Ok(name) if name == http::header::AUTHORIZATION => {
                self.report(
                    text,
                    "`apply = \"authorization\"` would send the bare key without a scheme",
                    "write `apply = \"bearer\"` for `Authorization: Bearer <key>`".to_string(),
                );
                None
            }
            Ok(name)
                if is_never_forwarded(&name)
                    && !crate::proxy::headers::is_client_credential(&name) =>
            {
                self.report(
                    text,
                    format!("`{name}` is a connection header and cannot carry a key"),
                    "write `apply = \"x-api-key\"`, `\"bearer\"` or another end-to-end header name"
                        .to_string(),
                );
                None
            }
            Ok(name) => Some(Apply::Header(name)),
            Err(_) => {
                self.report(text, format!("`{value}` is not a header name"), "write `\"x-api-key\"` (the default), `\"bearer\"`, or a header name such as `\"api-key\"`".to_string());
                None
            }
        }
    }

    fn routes(
        &mut self,
        raw: &[Spanned<RawRoute>],
        default_listen: Option<SocketAddr>,
        allow_non_loopback: bool,
        index: &HashMap<String, usize>,
        credentials: &[CredentialConfig],
    ) -> Vec<Listener> {
        let mut listeners: Vec<Listener> = Vec::new();
        if let Some(addr) = default_listen {
            listeners.push(Listener {
                addr,
                routes: Vec::new(),
            });
        }
        let mut seen: HashMap<(SocketAddr, String), ()> = HashMap::new();
        if raw.is_empty() {
            let problem = self.text.problem(
                0..0,
                "the config has no routes, so credproxy would answer every request with 404",
                Some("add a `[[routes]]` table with `prefix`, `upstream` and `credential`".into()),
            );
            self.problems.push(problem);
        }
        for route in raw {
            let r = route.get_ref();
            let addr = match &r.listen {
                Some(text) => self.listen_addr(text, allow_non_loopback),
                None => default_listen,
            };
            let prefix = self.prefix(&r.prefix);
            let template = [
                REGION_PLACEHOLDER,
                VERTEX_HOST_PLACEHOLDER,
                FOUNDRY_BASE_PLACEHOLDER,
            ]
            .iter()
            .any(|p| r.upstream.get_ref().contains(p))
            .then(|| r.upstream.get_ref().clone());
            let upstream = self.upstream(&r.upstream);
            let credential = match index.get(r.credential.get_ref()) {
                Some(&i) => Some(i),
                None => {
                    let names: Vec<_> = credentials
                        .iter()
                        .map(|c| format!("\"{}\"", c.name))
                        .collect();
                    let hint = if names.is_empty() {
                        format!("add a [credentials.{}] table", r.credential.get_ref())
                    } else {
                        format!(
                            "write one of {}, or add a [credentials.{}] table",
                            names.join(", "),
                            r.credential.get_ref()
                        )
                    };
                    self.report(
                        &r.credential,
                        format!(
                            "route uses credential `{}`, which is not defined",
                            r.credential.get_ref()
                        ),
                        hint,
                    );
                    None
                }
            };
            let (Some(addr), Some(prefix), Some(upstream), Some(credential)) =
                (addr, prefix, upstream, credential)
            else {
                continue;
            };
            if credential == usize::MAX {
                continue; // the credential itself was reported
            }
            let regional = matches!(
                credentials[credential].spec,
                CredentialSpec::Aws(_) | CredentialSpec::Google(_)
            );
            let vertex = matches!(credentials[credential].spec, CredentialSpec::Google(_));
            if r.upstream.get_ref().contains(VERTEX_HOST_PLACEHOLDER) && !vertex {
                self.report(&r.upstream, "`{vertex_host}` can be filled in only from a `google` credential", format!("write the host into the URL, or use a credential of kind \"google\" (this route uses `{}`)", r.credential.get_ref()));
                continue;
            }
            if r.upstream.get_ref().contains(FOUNDRY_BASE_PLACEHOLDER)
                && r.upstream.get_ref().trim() != FOUNDRY_BASE_PLACEHOLDER
            {
                self.report(
                    &r.upstream,
                    "`{foundry_base}` stands for a whole URL",
                    "write `upstream = \"{foundry_base}\"` alone".to_string(),
                );
                continue;
            }
            if r.upstream.get_ref().contains(REGION_PLACEHOLDER) && !regional {
                self.report(&r.upstream, "`{region}` can be filled in only from an `aws` or `google` credential", format!("write the region into the URL, or use a credential of kind \"aws\" or \"google\" (this route uses `{}`)", r.credential.get_ref()));
                continue;
            }
            if seen.insert((addr, prefix.clone()), ()).is_some() {
                self.report(
                    &r.prefix,
                    format!("prefix `{prefix}` is used twice on {addr}"),
                    "give each route on one listener its own prefix".to_string(),
                );
                continue;
            }
            let listener = match listeners.iter_mut().position(|l| l.addr == addr) {
                Some(i) => &mut listeners[i],
                None => {
                    listeners.push(Listener {
                        addr,
                        routes: Vec::new(),
                    });
                    listeners.last_mut().expect("just pushed")
                }
            };
            listener.routes.push(Route {
                prefix,
                upstream,
                template,
                disabled: None,
                credential,
            });
        }
        // A default listener with no routes of its own is not bound.
        listeners.retain(|l| !l.routes.is_empty());
        listeners
    }

    fn prefix(&mut self, text: &Text) -> Option<String> {
        let value = text.get_ref();
        let ok = value.starts_with('/')
            && !value.contains(['?', '#', ' '])
            && http::uri::PathAndQuery::from_str(value).is_ok();
        if !ok {
            self.report(
                text,
                format!("`{value}` is not a path prefix"),
                "write a path starting with `/`, such as \"/\" or \"/bedrock\"".to_string(),
            );
            return None;
        }
        let trimmed = value.trim_end_matches('/');
        Some(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        })
    }

    fn upstream(&mut self, text: &Text) -> Option<Upstream> {
        // `{region}` is checked with a stand-in here and filled in for real at start.
        let value = text
            .get_ref()
            .replace(REGION_PLACEHOLDER, "us-east-1")
            .replace(VERTEX_HOST_PLACEHOLDER, "aiplatform.googleapis.com")
            .replace(
                FOUNDRY_BASE_PLACEHOLDER,
                "https://resource.services.ai.azure.com/anthropic",
            );
        match parse_upstream(&value) {
            Ok(upstream) => Some(upstream),
            Err((message, hint)) => {
                let message = message.replace(&value, text.get_ref());
                self.report(text, message, hint);
                None
            }
        }
    }
}

/// Checks an upstream URL: absolute, https (or http to loopback), no query or user info.
/// The default port is dropped so the authority is what `Host` and signatures carry.
pub fn parse_upstream(value: &str) -> Result<Upstream, (String, String)> {
    let hint = "write an absolute URL such as \"https://api.anthropic.com\"".to_string();
    let uri =
        Uri::from_str(value).map_err(|_| (format!("`{value}` is not a URL"), hint.clone()))?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err((format!("`{value}` is not an absolute URL"), hint));
    };
    if uri.query().is_some() || authority.as_str().contains('@') {
        return Err((
            format!("`{value}` carries a query or user info"),
            "write only scheme, host and path; credentials go in a [credentials] table".to_string(),
        ));
    }
    let host = authority.host();
    let is_https = *scheme == Scheme::HTTPS;
    if !is_https && *scheme != Scheme::HTTP {
        return Err((
            format!("`{scheme}` is not a supported scheme"),
            "write an https:// URL".to_string(),
        ));
    }
    if !is_https && !is_loopback_host(host) {
        return Err((
            format!("`{value}` would send credentials unencrypted to another machine"),
            format!("write https://{}", &value["http://".len()..]),
        ));
    }
    let default_port = if is_https { 443 } else { 80 };
    let authority = match authority.port_u16() {
        Some(port) if port == default_port => {
            Authority::from_str(host).map_err(|_| (format!("`{value}` has a bad host"), hint))?
        }
        _ => authority.clone(),
    };
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(Upstream {
        scheme: scheme.clone(),
        authority,
        base_path,
    })
}

/// In an upstream URL: replaced at start by the region of the route's `aws` credential.
pub const REGION_PLACEHOLDER: &str = "{region}";

/// In an upstream URL: the Vertex AI host for the region of the route's `google` credential.
pub const VERTEX_HOST_PLACEHOLDER: &str = "{vertex_host}";

/// An upstream URL that is exactly this: `$ANTHROPIC_FOUNDRY_BASE_URL`, else
/// `https://$ANTHROPIC_FOUNDRY_RESOURCE.services.ai.azure.com/anthropic`.
pub const FOUNDRY_BASE_PLACEHOLDER: &str = "{foundry_base}";

/// `us-east5`, `europe-west1`, and Vertex's `global`, `us`, `eu`.
fn is_google_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`.
pub fn is_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && region.contains('-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `localhost`, `127.0.0.0/8` and `::1`: hosts an http:// upstream may use.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
