//! Where a key comes from, for every key-shaped kind (`api_key`, `bedrock_api_key`,
//! `acs`): exactly one of `env`, `file`, `value` or `helper`, optionally preceded by a
//! `helper_env` variable that, when set, names a helper command instead. Also `apply`, how
//! a key goes onto the request, shared with the kinds that apply a key.

use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;

use super::{Environment, ReadContext, check_env_name};
use crate::credentials::keychain::{self, KeychainItem};
use crate::credentials::{Helper, Keychain, Secret, Source, StaticKey};
use crate::fields::{Checker, ConfigPath, Table, Text};
use crate::headers::{is_client_credential, is_never_forwarded};
use crate::schemes::Apply;

pub const DEFAULT_HELPER_TTL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// A helper or file is read again at most this often, and at least this rarely.
const TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3600);
/// Claude Code allows its own helper 600 s.
const TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq)]
pub struct KeySource {
    /// A variable that, when set, holds a helper command used instead of `from`.
    pub helper_env: Option<String>,
    pub from: Option<KeyFrom>,
    /// Used by a helper named through `helper_env`, and by `from` when it is a helper.
    pub helper_ttl: Duration,
    pub helper_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyFrom {
    Env(String),
    File {
        path: ConfigPath,
        ttl: Option<Duration>,
    },
    Literal(Secret),
    Helper(String),
    Keychain(KeychainItem),
}

impl KeySource {
    /// Reads `env`, `file`, `value`, `helper`, `keychain`, `helper_env`, `ttl` and
    /// `helper_timeout`.
    pub fn read(table: &mut Table, cx: &mut Checker, at: &ReadContext) -> Option<KeySource> {
        let before = cx.count();
        let env = table.string(cx, "env");
        let file = table.string(cx, "file");
        let value = table.string(cx, "value");
        let helper = table.string(cx, "helper");
        let keychain_at = table
            .value("keychain")
            .map(|v| Text::new(v.span(), String::new()));
        let keychain = read_keychain(table, cx, at);
        let helper_env = table.string(cx, "helper_env");
        let ttl = table.string(cx, "ttl");
        let helper_timeout = table.string(cx, "helper_timeout");
        let name = at.name;

        let sources: Vec<(&str, &Text)> = [
            ("env", &env),
            ("file", &file),
            ("value", &value),
            ("helper", &helper),
            ("keychain", &keychain_at),
        ]
        .into_iter()
        .filter_map(|(key, v)| v.as_ref().map(|t| (key, t)))
        .collect();
        if let [_, (second_key, second), ..] = sources.as_slice() {
            let keys: Vec<_> = sources.iter().map(|(k, _)| format!("`{k}`")).collect();
            cx.report(
                second.span(),
                format!(
                    "credential `{name}` names {} sources ({}); `{second_key}` is one too many",
                    sources.len(),
                    keys.join(", ")
                ),
                "keep exactly one of `env`, `file`, `value`, `helper` or `keychain` (a `helper_env` may stand beside it)".to_string(),
            );
        }
        if sources.is_empty() && helper_env.is_none() {
            cx.report(
                table.span(),
                format!("credential `{name}` says nowhere to get the key from"),
                "add one of `env = \"ANTHROPIC_API_KEY\"`, `file = \"~/.config/anthropic/key\"` or `helper = \"<command printing the key>\"`".to_string(),
            );
        }
        for (key, text) in sources
            .iter()
            .copied()
            .filter(|(key, _)| *key != "keychain")
            .chain(helper_env.as_ref().map(|t| ("helper_env", t)))
        {
            if text.get_ref().trim().is_empty() {
                cx.report(text.span(), format!("`{key}` is empty"), None);
            }
        }
        let is_helper = helper.is_some() || helper_env.is_some();
        if let Some(ttl) = &ttl
            && !is_helper
            && file.is_none()
        {
            cx.report(
                ttl.span(),
                "`ttl` applies only to a `helper`, `helper_env` or `file` key",
                "remove `ttl`: keys from `env` or `value` never change while credproxy runs"
                    .to_string(),
            );
        }
        if let Some(timeout) = &helper_timeout
            && !is_helper
        {
            cx.report(
                timeout.span(),
                "`helper_timeout` applies only to a `helper` or `helper_env` key",
                "remove `helper_timeout`".to_string(),
            );
        }
        let ttl = ttl.and_then(|t| cx.duration(&t, TTL_RANGE));
        let helper_timeout = helper_timeout
            .and_then(|t| cx.duration(&t, TIMEOUT_RANGE))
            .unwrap_or(DEFAULT_HELPER_TIMEOUT);
        check_env_name(
            cx,
            env.as_ref(),
            "write the variable's name, such as \"ANTHROPIC_API_KEY\", not its value",
        );
        check_env_name(
            cx,
            helper_env.as_ref(),
            "write the name of a variable that holds a helper command, such as \"CREDPROXY_API_KEY_HELPER\"",
        );
        let from = if let Some(env) = env {
            Some(KeyFrom::Env(env.into_inner()))
        } else if let Some(file) = file {
            Some(KeyFrom::File {
                path: ConfigPath::new(file.get_ref(), at.base_dir),
                ttl,
            })
        } else if let Some(value) = value {
            Some(KeyFrom::Literal(Secret::new(value.get_ref().trim())))
        } else if let Some(item) = keychain {
            Some(KeyFrom::Keychain(item))
        } else {
            helper.map(|h| KeyFrom::Helper(h.into_inner()))
        };
        (cx.count() == before).then(|| KeySource {
            helper_env: helper_env.map(|t| t.into_inner()),
            from,
            helper_ttl: ttl.unwrap_or(DEFAULT_HELPER_TTL),
            helper_timeout,
        })
    }

    /// The source this key comes from in `env`: the helper named by `helper_env` when
    /// that variable is set, else `from`.
    pub fn resolve(&self, name: &str, env: &Environment) -> Source {
        if let Some(var) = &self.helper_env
            && let Some(command) = env.get(var)
        {
            return Source::Helper(Helper::new(
                command.to_string(),
                self.helper_ttl,
                self.helper_timeout,
            ));
        }
        match &self.from {
            Some(KeyFrom::Env(var)) => Source::Static(StaticKey::Env {
                var: var.clone(),
                or_helper_env: self.helper_env.clone(),
            }),
            Some(KeyFrom::File { path, ttl }) => Source::Static(StaticKey::File {
                path: path.resolve(env.home().as_deref()),
                ttl: *ttl,
            }),
            Some(KeyFrom::Literal(secret)) => Source::Static(StaticKey::Literal(secret.clone())),
            Some(KeyFrom::Helper(command)) => Source::Helper(Helper::new(
                command.clone(),
                self.helper_ttl,
                self.helper_timeout,
            )),
            Some(KeyFrom::Keychain(item)) => match keychain::platform_store() {
                Ok(store) => Source::Keychain(Keychain::new(name.to_string(), item.clone(), store)),
                Err(missing) => Source::Unavailable(format!("keychain {item}: {missing}")),
            },
            None => Source::Unavailable(format!(
                "{} is not set; set it to a command that prints the key",
                self.helper_env.as_deref().unwrap_or("the helper variable")
            )),
        }
    }
}

/// `keychain = "SERVICE/ACCOUNT"` or `keychain = { service = "...", account = "..." }`.
fn read_keychain(table: &mut Table, cx: &mut Checker, at: &ReadContext) -> Option<KeychainItem> {
    let value = table.value("keychain")?;
    let hint = format!(
        "write `keychain = \"credproxy/{0}\"` (service/account) or `keychain = {{ service = \"credproxy\", account = \"{0}\" }}`",
        at.name
    );
    let item = if let Some(text) = value.get_ref().as_str() {
        text.split_once('/').map(|(service, account)| KeychainItem {
            service: service.trim().to_string(),
            account: account.trim().to_string(),
        })
    } else if let Some(entries) = value.get_ref().as_table() {
        let mut inner = Table::new(entries, value.span());
        let service = inner.string(cx, "service");
        let account = inner.string(cx, "account");
        inner.finish(cx);
        service.zip(account).map(|(s, a)| KeychainItem {
            service: s.into_inner(),
            account: a.into_inner(),
        })
    } else {
        None
    };
    match item {
        Some(item) if !item.service.is_empty() && !item.account.is_empty() => Some(item),
        _ => {
            cx.report(
                value.span(),
                "`keychain` names no service and account",
                hint,
            );
            None
        }
    }
}

/// Reads `apply`: `"bearer"` or a header name that can carry a key end to end.
pub fn read_apply(table: &mut Table, cx: &mut Checker, default: Apply) -> Option<Apply> {
    let Some(text) = table.string(cx, "apply") else {
        return Some(default);
    };
    let value = text.get_ref().trim();
    if value.eq_ignore_ascii_case("bearer") {
        return Some(Apply::Bearer);
    }
    match HeaderName::from_str(value) {
        Ok(name) if name == http::header::AUTHORIZATION => {
            cx.report(
                text.span(),
                "`apply = \"authorization\"` would send the bare key without a scheme",
                "write `apply = \"bearer\"` for `Authorization: Bearer <key>`".to_string(),
            );
            None
        }
        Ok(name) if is_never_forwarded(&name) && !is_client_credential(&name) => {
            cx.report(
                text.span(),
                format!("`{name}` is a connection header and cannot carry a key"),
                "write `apply = \"x-api-key\"`, `\"bearer\"` or another end-to-end header name"
                    .to_string(),
            );
            None
        }
        Ok(name) => Some(Apply::Header(name)),
        Err(_) => {
            cx.report(
                text.span(),
                format!("`{value}` is not a header name"),
                "write `\"x-api-key\"` (the default), `\"bearer\"`, or a header name such as `\"api-key\"`"
                    .to_string(),
            );
            None
        }
    }
}
