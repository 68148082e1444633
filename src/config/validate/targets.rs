//! A route's targets: the one-target form (`upstream` + `credential` on the route) or
//! `targets = [{ upstream, credential, translate?, models?, weight?, name?, ... }]`, and the
//! route keys `strategy`, `max_attempts`, `max_cooldown`. The per-upstream keys
//! (`client_cert`/`client_key`, `upstream_http2`, `stream_idle_timeout`) written on the
//! route are what a target inherits unless it writes its own.

use std::time::Duration;

use super::{
    DAY, RouteContext, cert_and_key, credential_index, required, secs, upstream, upstream_http2,
};
use crate::config::targets::{Failover, MAX_TARGETS, Strategy, Target};
use crate::config::{Http2, TlsConfig, translate};
use crate::fields::{Checker, Table, Text};

const TARGET_NEEDS: &str = "every target needs `upstream` and `credential`: `{ upstream = \"https://...\", credential = \"NAME\" }`";

/// The per-upstream keys as the route writes them, inherited by its targets.
struct Inherited {
    stream_idle_timeout: Option<Duration>,
    identity: Option<TlsConfig>,
    http2: Http2,
}

/// The route's targets (`None` when one had a problem, which is reported) and its
/// failover keys.
pub(super) fn read(
    table: &mut Table,
    cx: &mut Checker,
    at: &RouteContext,
) -> (Option<Vec<Target>>, Failover) {
    let inherited = Inherited {
        stream_idle_timeout: idle_timeout(table, cx),
        identity: cert_and_key(table, cx, at.base_dir, ("client_cert", "client_key")),
        http2: upstream_http2(table, cx),
    };
    let targets = if table.value("targets").is_none() {
        read_target(table, cx, at, &inherited, false).map(|t| vec![t])
    } else {
        several(table, cx, at, &inherited)
    };
    let count = targets.as_ref().map_or(1, Vec::len);
    (targets, failover(table, cx, count))
}

/// `targets = [...]`, with nothing of the one-target form beside it.
fn several(
    table: &mut Table,
    cx: &mut Checker,
    at: &RouteContext,
    inherited: &Inherited,
) -> Option<Vec<Target>> {
    let mut ok = true;
    for key in ["upstream", "credential", "translate", "models"] {
        if let Some(value) = table.value(key) {
            cx.report(
                value.span(),
                format!("`{key}` is written on a route that has `targets`"),
                format!("move `{key}` into each target of `targets` (`{{ upstream = \"...\", credential = \"...\" }}`), or remove `targets`"),
            );
            ok = false;
        }
    }
    let span = table.value("targets").map(|v| v.span()).unwrap_or(0..0);
    let tables = table.tables(cx, "targets");
    if tables.is_empty() || tables.len() > MAX_TARGETS {
        cx.report(
            span,
            format!("`targets` lists {} targets", tables.len()),
            format!("list between 1 and {MAX_TARGETS}: `targets = [{{ upstream = \"https://...\", credential = \"NAME\" }}, ...]`"),
        );
        return None;
    }
    let mut targets: Vec<Target> = Vec::with_capacity(tables.len());
    for mut entry in tables {
        let span = entry.span();
        let target = read_target(&mut entry, cx, at, inherited, true);
        entry.finish(cx);
        let Some(target) = target else {
            ok = false;
            continue;
        };
        // Unnamed targets are shown by their index: a name may not be another's index.
        let shown = |t: &Target, i: usize| t.name.clone().unwrap_or_else(|| i.to_string());
        let this = shown(&target, targets.len());
        if targets.iter().enumerate().any(|(i, t)| shown(t, i) == this) {
            cx.report(
                span,
                format!("two targets of this route are called `{this}`"),
                "give each target its own `name` (unnamed targets are called by their index from 0)".to_string(),
            );
            ok = false;
        }
        targets.push(target);
    }
    ok.then_some(targets)
}

/// One target: from a `targets` entry (`entry`), or the route itself in the one-target
/// form.
fn read_target(
    table: &mut Table,
    cx: &mut Checker,
    at: &RouteContext,
    inherited: &Inherited,
    entry: bool,
) -> Option<Target> {
    let needs = if entry {
        TARGET_NEEDS
    } else {
        super::ROUTE_NEEDS
    };
    let upstream_text = required(table, cx, "upstream", needs);
    let credential_text = required(table, cx, "credential", needs);
    let credential = credential_text
        .as_ref()
        .and_then(|name| credential_index(cx, name, at));
    let credential_kind = credential.map(|i| at.credentials[i].spec.kind());
    let translate = translate::read(table, cx, credential_kind);
    let (name, weight, own) = if entry {
        let name = table.string(cx, "name").and_then(|t| target_name(cx, &t));
        let weight = table
            .integer(cx, "weight", 1..=1000)
            .map_or(1, |w| *w.get_ref() as u32);
        let own = Inherited {
            stream_idle_timeout: idle_timeout(table, cx).or(inherited.stream_idle_timeout),
            identity: cert_and_key(table, cx, at.base_dir, ("client_cert", "client_key"))
                .or_else(|| inherited.identity.clone()),
            http2: if table.value("upstream_http2").is_some() {
                upstream_http2(table, cx)
            } else {
                inherited.http2
            },
        };
        (name, weight, own)
    } else {
        let own = Inherited {
            stream_idle_timeout: inherited.stream_idle_timeout,
            identity: inherited.identity.clone(),
            http2: inherited.http2,
        };
        (None, 1, own)
    };
    let upstream = upstream(
        cx,
        upstream_text.as_ref()?,
        credential.map(|i| &at.credentials[i]),
    );
    Some(Target {
        name,
        upstream: upstream?,
        credential: credential?,
        stream_idle_timeout: own.stream_idle_timeout,
        identity: own.identity,
        translate,
        http2: own.http2,
        weight,
    })
}

/// A target's `name`: it is sent as a header value and used as a metric label.
fn target_name(cx: &mut Checker, text: &Text) -> Option<String> {
    let name = text.get_ref().trim();
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !name.is_empty() && name.len() <= 64 && name.chars().all(fits) {
        return Some(name.to_string());
    }
    cx.report(
        text.span(),
        format!("`{name}` is not a target name"),
        "write up to 64 letters, digits, `-`, `_` or `.`, such as \"key-b\" or \"bedrock.us-west-2\"".to_string(),
    );
    None
}

fn idle_timeout(table: &mut Table, cx: &mut Checker) -> Option<Duration> {
    table
        .string(cx, "stream_idle_timeout")
        .and_then(|t| cx.duration(&t, secs(1)..=DAY))
}

/// `strategy`, `max_attempts`, `max_cooldown` for a route with `count` targets.
fn failover(table: &mut Table, cx: &mut Checker, count: usize) -> Failover {
    let mut failover = Failover::defaults(count);
    if let Some(text) = table.string(cx, "strategy") {
        match text.get_ref().trim() {
            "failover" => failover.strategy = Strategy::Failover,
            "spread" => failover.strategy = Strategy::Spread,
            other => cx.report(
                text.span(),
                format!("`{other}` is not a choice for `strategy`"),
                "write \"failover\" (in order: the first healthy target) or \"spread\" (the healthy target with the fewest requests in flight)".to_string(),
            ),
        }
    }
    if let Some(n) = table.integer(cx, "max_attempts", 1..=MAX_TARGETS as u64) {
        failover.max_attempts = *n.get_ref() as usize;
    }
    if let Some(d) = table
        .string(cx, "max_cooldown")
        .and_then(|t| cx.duration(&t, secs(1)..=DAY))
    {
        failover.max_cooldown = d;
    }
    failover
}
