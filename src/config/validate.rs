//! Raw → validated configuration. Runs before any port is bound; collects every problem
//! with its place instead of stopping at the first. Each `[credentials.NAME]` table is
//! read by its kind (see `kinds`); this file reads the rest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Uri;

use http::HeaderName;

use super::{
    AdminListen, Config, ConfigOrigin, CredentialConfig, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN,
    DEFAULT_MAX_BODY, GuardConfig, Limits, Listener, Route, TlsConfig, UpstreamSpec,
};
use super::{callers, egress};
use crate::fields::{Checker, ConfigError, ConfigPath, Table, Text, parse_document};
use crate::kinds::{self, Placeholder, ReadContext};
use crate::upstream::Upstream;

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const HOUR: Duration = secs(3600);
const DAY: Duration = secs(24 * 3600);
const LIMIT: std::ops::RangeInclusive<u64> = 1..=1_000_000;

pub(super) fn validate(text: &str, origin: ConfigOrigin) -> Result<Config, ConfigError> {
    let file = origin.display_name();
    let mut cx = Checker::new(text);
    let config = parse_document(text, &mut cx).map(|document| {
        let mut root = Table::new(document.get_ref(), 0..0);
        let config = read_config(&mut root, &mut cx, origin);
        root.finish(&mut cx);
        config
    });
    let problems = cx.into_problems();
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError { file, problems }),
    }
}

fn read_config(root: &mut Table, cx: &mut Checker, origin: ConfigOrigin) -> Config {
    let listen = root.string(cx, "listen");
    let base_dir = origin.base_dir();
    let tls = tls(root, cx, base_dir);
    let has_callers = callers::present(root);
    // Serving other machines is safe only with callers' tokens checked (TLS says nothing
    // about who calls); otherwise the file must say it means it.
    let allow_non_loopback = root
        .bool(cx, "allow_non_loopback")
        .is_some_and(|b| *b.get_ref())
        || has_callers;
    let default_listen = match &listen {
        Some(text) => listen_addr(cx, text, allow_non_loopback),
        None => Some(
            DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
        ),
    };
    let guard = guard(root, cx);
    let admin = match root.string(cx, "admin_listen") {
        None => AdminListen::Default(
            DEFAULT_ADMIN_LISTEN
                .parse()
                .expect("default admin address parses"),
        ),
        Some(text) if text.get_ref().trim() == "off" => AdminListen::Off,
        Some(text) => listen_addr(cx, &text, allow_non_loopback)
            .map_or(AdminListen::Off, AdminListen::Explicit),
    };
    let watch_config = root.bool(cx, "watch_config").is_some_and(|b| *b.get_ref());
    let egress_proxy =
        root.string(cx, "egress_proxy").and_then(|text| {
            match egress::check_proxy_url(text.get_ref()) {
                Ok(()) => Some(crate::credentials::Secret::new(text.get_ref().trim())),
                Err((message, hint)) => {
                    cx.report(text.span(), message, hint);
                    None
                }
            }
        });
    let no_proxy: Vec<String> = root
        .strings(cx, "no_proxy")
        .iter()
        .flat_map(|l| l.get_ref())
        .map(|t| t.get_ref().trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    let max_body = root
        .string(cx, "max_body")
        .and_then(|t| cx.size(&t, 1024..=1024 * 1024 * 1024))
        .unwrap_or(DEFAULT_MAX_BODY);
    let mut duration = |key, allowed, default| {
        root.string(cx, key)
            .and_then(|t| cx.duration(&t, allowed))
            .unwrap_or(default)
    };
    let connect_timeout = duration(
        "connect_timeout",
        Duration::from_millis(100)..=secs(300),
        secs(10),
    );
    let upstream_timeout = duration(
        "upstream_timeout",
        Duration::from_millis(100)..=DAY,
        secs(600),
    );
    let shutdown_grace = duration("shutdown_grace", Duration::ZERO..=HOUR, secs(30));
    let defaults = Limits::default();
    let header_read_timeout = duration(
        "header_read_timeout",
        secs(1)..=secs(600),
        defaults.header_read_timeout,
    );
    let idle_timeout = duration("idle_timeout", secs(1)..=DAY, defaults.idle_timeout);
    let body_read_timeout = duration(
        "body_read_timeout",
        secs(1)..=HOUR,
        defaults.body_read_timeout,
    );
    let queue_timeout = duration(
        "queue_timeout",
        Duration::ZERO..=secs(600),
        defaults.queue_timeout,
    );
    let pool_idle_timeout = duration(
        "pool_idle_timeout",
        secs(1)..=HOUR,
        defaults.pool_idle_timeout,
    );
    let mut count = |key, allowed, default: usize| {
        root.integer(cx, key, allowed)
            .map_or(default, |n| *n.get_ref() as usize)
    };
    let limits = Limits {
        header_read_timeout,
        idle_timeout,
        body_read_timeout,
        max_connections: count("max_connections", LIMIT, defaults.max_connections),
        max_in_flight: count("max_in_flight", LIMIT, defaults.max_in_flight),
        queue_timeout,
        pool_max_idle_per_host: count(
            "pool_max_idle_per_host",
            0..=100_000,
            defaults.pool_max_idle_per_host,
        ),
        pool_idle_timeout,
        pool_max_connections_per_host: count(
            "pool_max_connections_per_host",
            1..=100_000,
            defaults.pool_max_connections_per_host,
        ),
    };
    let workers = count("workers", 0..=1024, 0);
    let strip_headers = header_names(root, cx, "strip_headers");
    let callers = callers::read(root, cx, base_dir);
    let ca_file = root
        .string(cx, "ca_file")
        .map(|p| ConfigPath::new(p.get_ref(), base_dir));

    let usage = super::usage::read_usage(root, cx, base_dir);
    let prices = super::usage::read_prices(root, cx);
    let quotas = super::usage::read_quotas(root, cx);
    let (credentials, index) = credentials(root, cx, &origin);
    let listeners = routes(
        root,
        cx,
        &RouteContext {
            default_listen,
            allow_non_loopback,
            index: &index,
            credentials: &credentials,
            has_callers,
            base_dir,
        },
    );
    Config {
        origin,
        listeners,
        credentials,
        max_body,
        connect_timeout,
        upstream_timeout,
        shutdown_grace,
        limits,
        guard,
        ca_file,
        strip_headers,
        callers,
        tls,
        admin,
        watch_config,
        egress_proxy,
        no_proxy,
        workers,
        usage,
        prices,
        quotas,
    }
}

/// `tls_cert` and `tls_key`: both or neither; the files are read when the listener starts.
fn tls(
    root: &mut Table,
    cx: &mut Checker,
    base_dir: Option<&std::path::Path>,
) -> Option<TlsConfig> {
    cert_and_key(root, cx, base_dir, ("tls_cert", "tls_key"))
}

/// A certificate and its key named by two keys of a table: both or neither.
fn cert_and_key(
    table: &mut Table,
    cx: &mut Checker,
    base_dir: Option<&std::path::Path>,
    (cert_key, key_key): (&'static str, &'static str),
) -> Option<TlsConfig> {
    let cert = table.string(cx, cert_key);
    let key = table.string(cx, key_key);
    match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            cert: ConfigPath::new(cert.get_ref(), base_dir),
            key: ConfigPath::new(key.get_ref(), base_dir),
        }),
        (Some(alone), None) | (None, Some(alone)) => {
            cx.report(
                alone.span(),
                format!("`{cert_key}` and `{key_key}` go together"),
                "set both: the certificate chain (PEM) and its private key (PEM)".to_string(),
            );
            None
        }
        (None, None) => None,
    }
}

/// A list of request header names to remove; connection headers are removed anyway and
/// the headers credproxy sets itself cannot be named.
fn header_names(table: &mut Table, cx: &mut Checker, key: &'static str) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for text in table.strings(cx, key).iter().flat_map(|l| l.get_ref()) {
        match HeaderName::from_str(text.get_ref().trim()) {
            Ok(name) if name == http::header::HOST || name == http::header::CONTENT_TYPE => {
                cx.report(
                    text.span(),
                    format!("`{name}` cannot be stripped: upstreams need it"),
                    "name only headers that carry a client's credential or that the upstream must not see".to_string(),
                );
            }
            Ok(name) => names.push(name),
            Err(_) => cx.report(
                text.span(),
                format!("`{}` is not a header name", text.get_ref()),
                "write header names such as \"ocp-apim-subscription-key\" or \"x-auth-token\""
                    .to_string(),
            ),
        }
    }
    names
}

fn listen_addr(cx: &mut Checker, text: &Text, allow_non_loopback: bool) -> Option<SocketAddr> {
    match SocketAddr::from_str(text.get_ref()) {
        Err(_) => {
            cx.report(
                text.span(),
                format!("`{}` is not an address to listen on", text.get_ref()),
                "write an IP address and port, such as \"127.0.0.1:8787\" or \"[::1]:8787\""
                    .to_string(),
            );
            None
        }
        Ok(addr) if !addr.ip().is_loopback() && !allow_non_loopback => {
            cx.report(
                text.span(),
                format!("`{addr}` is not a loopback address: anyone who can reach it could use your credentials"),
                "listen on 127.0.0.1, or set `allow_non_loopback = true` at the top of the file if you really mean to serve other machines".to_string(),
            );
            None
        }
        Ok(addr) => Some(addr),
    }
}

fn guard(root: &mut Table, cx: &mut Checker) -> GuardConfig {
    let mut guard = GuardConfig::default();
    let hosts = root.strings(cx, "allowed_hosts");
    for host in hosts.iter().flat_map(|h| h.get_ref()) {
        let name = host.get_ref().trim().to_ascii_lowercase();
        if name.is_empty() || name.contains(['/', ' ', ':', '[', ']', '@']) {
            cx.report(
                host.span(),
                format!("`{}` is not a host name", host.get_ref()),
                "write a bare host name without a port, such as \"credproxy.internal\"".to_string(),
            );
        } else {
            guard.allowed_hosts.push(name);
        }
    }
    let origins = root.strings(cx, "allowed_origins");
    for origin in origins.iter().flat_map(|o| o.get_ref()) {
        let value = origin.get_ref().trim().trim_end_matches('/');
        match Uri::from_str(value) {
            Ok(uri) if uri.scheme().is_some() && uri.authority().is_some() && uri.path() == "/" => {
                guard.allowed_origins.push(value.to_ascii_lowercase());
            }
            _ => cx.report(
                origin.span(),
                format!("`{}` is not a browser origin", origin.get_ref()),
                "write scheme, host and port only, such as \"http://localhost:3000\"".to_string(),
            ),
        }
    }
    guard
}

/// The credentials in name order, and each name's index (`None` for a credential that had
/// problems, so routes that use it are not reported a second time).
fn credentials(
    root: &mut Table,
    cx: &mut Checker,
    origin: &ConfigOrigin,
) -> (Vec<CredentialConfig>, HashMap<String, Option<usize>>) {
    let mut list = Vec::new();
    let mut index = HashMap::new();
    let embedded = matches!(origin, ConfigOrigin::Embedded);
    for (name, mut table) in root.named_tables(cx, "credentials") {
        let name = name.into_inner();
        let at = ReadContext {
            name: &name,
            base_dir: origin.base_dir(),
        };
        match credential(&mut table, cx, &at, embedded) {
            Some(spec) => {
                index.insert(name.clone(), Some(list.len()));
                list.push(CredentialConfig {
                    name,
                    spec: Arc::from(spec),
                });
            }
            None => {
                index.insert(name, None);
            }
        }
    }
    (list, index)
}

/// `embedded`: the embedded default, whose credentials of a kind this build lacks are
/// left out (with their routes) rather than reported.
fn credential(
    table: &mut Table,
    cx: &mut Checker,
    at: &ReadContext,
    embedded: bool,
) -> Option<Box<dyn kinds::Spec>> {
    let name = at.name;
    let Some(kind_text) = table.string(cx, "kind") else {
        if table.value("kind").is_none() {
            cx.report(
                table.span(),
                format!("credential `{name}` has no `kind`"),
                format!("add `kind = {}` to [credentials.{name}]", kinds::names()),
            );
        }
        return None;
    };
    if let Some((kind, feature)) = kinds::ABSENT
        .iter()
        .find(|(kind, _)| *kind == kind_text.get_ref())
    {
        // The embedded default names every cloud; a build without one serves the rest.
        if !embedded {
            cx.report(
                kind_text.span(),
                format!(
                    "credential `{name}` has kind `{kind}`, which this build of credproxy was compiled without"
                ),
                format!(
                    "use a build with the `{feature}` feature (the default build has it: `cargo build --release --locked`), or remove [credentials.{name}] and its routes"
                ),
            );
        }
        return None;
    }
    let Some(kind) = kinds::find(kind_text.get_ref()) else {
        cx.report(
            kind_text.span(),
            format!(
                "credential `{name}` has unknown kind `{}`",
                kind_text.get_ref()
            ),
            format!("write `kind = {}`", kinds::names()),
        );
        return None;
    };
    let before = cx.count();
    let spec = kind.read(table, cx, at);
    let takes: Vec<String> = table
        .asked()
        .iter()
        .filter(|k| **k != "kind")
        .map(|k| format!("`{k}`"))
        .collect();
    for (key, key_span, value_span) in table.unread().collect::<Vec<_>>() {
        if kinds::is_known_field(key) {
            cx.report(
                value_span,
                format!("`{key}` does not apply to kind `{}`", kind.name()),
                format!(
                    "remove it; kind `{}` takes {}",
                    kind.name(),
                    takes.join(", ")
                ),
            );
        } else {
            table.report_unknown(cx, key, key_span);
        }
    }
    spec.filter(|_| cx.count() == before)
}

/// What reading a route needs from the rest of the file.
struct RouteContext<'a> {
    default_listen: Option<SocketAddr>,
    allow_non_loopback: bool,
    index: &'a HashMap<String, Option<usize>>,
    credentials: &'a [CredentialConfig],
    has_callers: bool,
    base_dir: Option<&'a std::path::Path>,
}

fn routes(root: &mut Table, cx: &mut Checker, at: &RouteContext) -> Vec<Listener> {
    let mut listeners: Vec<Listener> = Vec::new();
    if let Some(addr) = at.default_listen {
        listeners.push(Listener {
            addr,
            routes: Vec::new(),
        });
    }
    let mut seen: HashMap<(SocketAddr, String), ()> = HashMap::new();
    let tables = root.tables(cx, "routes");
    if tables.is_empty() {
        cx.report(
            0..0,
            "the config has no routes, so credproxy would answer every request with 404",
            Some("add a `[[routes]]` table with `prefix`, `upstream` and `credential`".into()),
        );
    }
    for mut table in tables {
        let route = read_route(&mut table, cx, at);
        table.finish(cx);
        let Some((addr, route, prefix_text)) = route else {
            continue;
        };
        if seen.insert((addr, route.prefix.clone()), ()).is_some() {
            cx.report(
                prefix_text.span(),
                format!("prefix `{}` is used twice on {addr}", route.prefix),
                "give each route on one listener its own prefix".to_string(),
            );
            continue;
        }
        let listener = match listeners.iter().position(|l| l.addr == addr) {
            Some(i) => &mut listeners[i],
            None => {
                listeners.push(Listener {
                    addr,
                    routes: Vec::new(),
                });
                listeners.last_mut().expect("just pushed")
            }
        };
        listener.routes.push(route);
    }
    // A default listener with no routes of its own is not bound.
    listeners.retain(|l| !l.routes.is_empty());
    listeners
}

/// What every `[[routes]]` table needs (else `targets` instead of the last two).
const ROUTE_NEEDS: &str =
    "every [[routes]] table needs `prefix`, and `upstream` and `credential` (or `targets`)";

fn required(table: &mut Table, cx: &mut Checker, key: &'static str, needs: &str) -> Option<Text> {
    let value = table.string(cx, key);
    if value.is_none() && table.value(key).is_none() {
        cx.report(
            table.span(),
            format!("missing field `{key}`"),
            needs.to_string(),
        );
    }
    value
}

fn read_route(
    table: &mut Table,
    cx: &mut Checker,
    at: &RouteContext,
) -> Option<(SocketAddr, Route, Text)> {
    let prefix_text = required(table, cx, "prefix", ROUTE_NEEDS);
    let listen = table.string(cx, "listen");
    let max_in_flight = table
        .integer(cx, "max_in_flight", LIMIT)
        .map(|n| *n.get_ref() as usize);
    let strip_headers = header_names(table, cx, "strip_headers");
    let groups_at = table.value("groups").map(|v| v.span());
    let groups = callers::groups(table, cx);
    if let (Some(span), false) = (groups_at, at.has_callers) {
        cx.report(
            span,
            "`groups` on a route needs a [callers] table: without callers nobody has groups",
            "add a [callers] table (an identity provider or [[callers.tokens]]), or remove `groups`".to_string(),
        );
    }
    let (targets, failover) = targets::read(table, cx, at);
    let addr = match &listen {
        Some(text) => listen_addr(cx, text, at.allow_non_loopback),
        None => at.default_listen,
    };
    let prefix = prefix_text.as_ref().and_then(|t| prefix(cx, t));
    let targets = targets?;
    let first = targets[0].clone();
    Some((
        addr?,
        Route {
            prefix: prefix?,
            upstream: first.upstream,
            credential: first.credential,
            max_in_flight,
            stream_idle_timeout: first.stream_idle_timeout,
            strip_headers,
            groups,
            identity: first.identity,
            translate: first.translate,
            http2: first.http2,
            targets,
            failover,
        },
        prefix_text?,
    ))
}

/// The index of the credential a route or target names (`None`, reported, when it is not
/// defined; `None`, silently, when the credential itself was reported).
fn credential_index(cx: &mut Checker, name: &Text, at: &RouteContext) -> Option<usize> {
    match at.index.get(name.get_ref()) {
        Some(known) => *known,
        None => {
            let names: Vec<_> = at
                .credentials
                .iter()
                .map(|c| format!("\"{}\"", c.name))
                .collect();
            let hint = if names.is_empty() {
                format!("add a [credentials.{}] table", name.get_ref())
            } else {
                format!(
                    "write one of {}, or add a [credentials.{}] table",
                    names.join(", "),
                    name.get_ref()
                )
            };
            cx.report(
                name.span(),
                format!(
                    "route uses credential `{}`, which is not defined",
                    name.get_ref()
                ),
                hint,
            );
            None
        }
    }
}

/// `upstream_http2 = "auto" | "never" | "always"` (default auto).
fn upstream_http2(table: &mut Table, cx: &mut Checker) -> super::Http2 {
    let Some(text) = table.string(cx, "upstream_http2") else {
        return super::Http2::default();
    };
    match text.get_ref().as_str() {
        "auto" => super::Http2::Auto,
        "never" => super::Http2::Never,
        "always" => super::Http2::Always,
        other => {
            cx.report(
                text.span(),
                format!("`{other}` is not a choice for `upstream_http2`"),
                "write \"auto\" (HTTP/2 where the upstream offers it), \"never\" (HTTP/1.1 only) or \"always\" (HTTP/2 only; h2c on http://)".to_string(),
            );
            super::Http2::default()
        }
    }
}

fn prefix(cx: &mut Checker, text: &Text) -> Option<String> {
    let value = text.get_ref();
    let ok = value.starts_with('/')
        && !value.contains(['?', '#', ' '])
        && http::uri::PathAndQuery::from_str(value).is_ok()
        && crate::upstream::unsafe_path(value).is_none();
    if !ok {
        cx.report(
            text.span(),
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

/// Checks an upstream URL; one with placeholders is checked with stand-in values and
/// against what the route's credential can fill in.
fn upstream(
    cx: &mut Checker,
    text: &Text,
    credential: Option<&CredentialConfig>,
) -> Option<UpstreamSpec> {
    let written = text.get_ref();
    let used: Vec<Placeholder> = Placeholder::ALL
        .into_iter()
        .filter(|p| written.contains(p.text()))
        .collect();
    let mut ok = true;
    if let Some(credential) = credential {
        let fills = credential.spec.kind().placeholders();
        for placeholder in &used {
            if !fills.contains(placeholder) {
                let kinds: Vec<String> = placeholder
                    .filling_kinds()
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect();
                if kinds.is_empty() {
                    // A build without the cloud features: no kind here fills it.
                    cx.report(
                        text.span(),
                        format!(
                            "`{}` is filled in by a cloud kind this build of credproxy was compiled without",
                            placeholder.text()
                        ),
                        format!(
                            "write the {} into the URL, or use a build with the cloud features (the default build)",
                            placeholder.noun()
                        ),
                    );
                    ok = false;
                    continue;
                }
                cx.report(
                    text.span(),
                    format!(
                        "`{}` can be filled in only from {} credential",
                        placeholder.text(),
                        placeholder.filled_by()
                    ),
                    format!(
                        "write the {} into the URL, or use a credential of kind {} (this route uses `{}`)",
                        placeholder.noun(),
                        kinds.join(" or "),
                        credential.name
                    ),
                );
                ok = false;
            }
        }
    }
    for placeholder in &used {
        if placeholder.is_whole_url() && written.trim() != placeholder.text() {
            cx.report(
                text.span(),
                format!("`{}` stands for a whole URL", placeholder.text()),
                format!("write `upstream = \"{}\"` alone", placeholder.text()),
            );
            ok = false;
        }
    }
    let stand_in = used.iter().fold(written.clone(), |url, p| {
        url.replace(p.text(), p.stand_in())
    });
    match Upstream::parse(&stand_in) {
        Ok(upstream) if ok => Some(if used.is_empty() {
            UpstreamSpec::Fixed(upstream)
        } else {
            UpstreamSpec::Template(written.clone())
        }),
        Ok(_) => None,
        Err((message, hint)) => {
            cx.report(text.span(), message.replace(&stand_in, written), hint);
            None
        }
    }
}

mod targets;

#[cfg(test)]
mod tests;

/// What a build without a cloud feature does with that cloud's kinds.
#[cfg(all(test, not(feature = "aws")))]
mod absent_tests;
