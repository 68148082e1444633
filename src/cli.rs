//! The reports behind `credproxy check` and `credproxy env`. They return text; `main.rs`
//! prints it and picks the exit code.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::config::{Config, Resolved, ResolvedRoute};
use crate::credentials::KeychainItem;
use crate::credentials::Lifetime;
use crate::kinds::ClientEnv;
use crate::kinds::key_source::KeyFrom;

/// Whether any credential reads its key from the keychain.
pub fn uses_keychain(config: &Config) -> bool {
    config.credentials.iter().any(|c| {
        matches!(
            c.spec.key_source().and_then(|s| s.from.as_ref()),
            Some(KeyFrom::Keychain(_))
        )
    })
}

/// The keychain item credential `name` reads its key from (`credproxy secret`).
pub fn keychain_item(config: &Config, name: &str) -> Result<KeychainItem, String> {
    let Some(credential) = config.credentials.iter().find(|c| c.name == name) else {
        let names: Vec<String> = config
            .credentials
            .iter()
            .map(|c| format!("`{}`", c.name))
            .collect();
        return Err(format!(
            "{} has no credential `{name}`; its credentials are {}",
            config.origin.display_name(),
            names.join(", ")
        ));
    };
    match credential
        .spec
        .key_source()
        .and_then(|source| source.from.as_ref())
    {
        Some(KeyFrom::Keychain(item)) => Ok(item.clone()),
        _ => Err(format!(
            "credential `{name}` does not read its key from the keychain; write `keychain = \"credproxy/{name}\"` in [credentials.{name}] (instead of `env`, `file`, `value` or `helper`)"
        )),
    }
}

/// One row of the `check` table.
#[derive(Debug)]
pub struct CheckRow {
    pub credential: String,
    pub kind: &'static str,
    pub source: String,
    pub expires_in: String,
    /// Ok with a remark (which link of a chain answered, why it was skipped), or the error.
    pub status: Result<Option<String>, String>,
}

/// Fetches every credential that an enabled route uses, straight from its source, all at
/// the same time (a slow source does not hold up the others' rows).
pub async fn check(resolved: &Resolved) -> Vec<CheckRow> {
    let tasks: Vec<_> = resolved
        .credentials
        .iter()
        .enumerate()
        .map(|(index, credential)| {
            let cached = std::sync::Arc::clone(&credential.cached);
            let kind = credential.spec.kind();
            let unused = resolved.unused_reason(index);
            tokio::spawn(async move {
                let (expires_in, status) = match unused {
                    Some(reason) => ("-".to_string(), Ok(Some(reason))),
                    None => match cached.source().fetch().await {
                        Ok(fetched) => {
                            let via = fetched.via.map(|v| format!("via {v}"));
                            (expires_in(fetched.lifetime), Ok(via))
                        }
                        Err(error) => {
                            if let Some(diagnostic) = error.diagnostic() {
                                tracing::warn!(credential = %cached.name(), %error, diagnostic, "credential source failed");
                            }
                            ("-".to_string(), Err(error.to_string()))
                        }
                    },
                };
                CheckRow {
                    credential: cached.name().to_string(),
                    kind,
                    source: cached.source().describe(),
                    expires_in,
                    status,
                }
            })
        })
        .collect();
    let mut rows = Vec::with_capacity(tasks.len());
    for task in tasks {
        rows.push(task.await.expect("a credential check panicked"));
    }
    rows
}

fn expires_in(lifetime: Lifetime) -> String {
    match lifetime {
        Lifetime::UntilRejected => "never".to_string(),
        Lifetime::Ttl(ttl) => format!("{} (ttl)", humantime::format_duration(ttl)),
        Lifetime::IssuerExpiry(at) | Lifetime::Until { expires_at: at, .. } => match at
            .duration_since(SystemTime::now())
        {
            Ok(left) => humantime::format_duration(Duration::from_secs(left.as_secs())).to_string(),
            Err(_) => "expired".to_string(),
        },
    }
}

pub fn format_check(rows: &[CheckRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.credential.clone(),
                r.kind.to_string(),
                r.source.clone(),
                r.expires_in.clone(),
                match &r.status {
                    Ok(None) => "ok".to_string(),
                    Ok(Some(remark)) if remark.starts_with("unused") => remark.clone(),
                    Ok(Some(remark)) => format!("ok ({remark})"),
                    Err(e) => format!("FAILED: {e}"),
                },
            ]
        })
        .collect();
    table(
        &["CREDENTIAL", "KIND", "SOURCE", "EXPIRES IN", "STATUS"],
        &cells,
    )
}

/// `credproxy status`: the admin listener's `/status` JSON as two tables, so a developer
/// sees at a glance which credential fails and why, and which routes it affects.
pub fn format_status(status: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let empty = Vec::new();
    let credentials: Vec<Vec<String>> = status["credentials"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|c| {
            let expires = c["expires_in_seconds"]
                .as_i64()
                .map_or("-".to_string(), |s| {
                    if s < 0 {
                        "expired".to_string()
                    } else {
                        humantime::format_duration(Duration::from_secs(s as u64)).to_string()
                    }
                });
            let last_error = match &c["last_error"] {
                serde_json::Value::Null => "-".to_string(),
                e => format!("{} ({})", text(&e["message"]), text(&e["at"])),
            };
            vec![
                text(&c["name"]),
                text(&c["kind"]),
                text(&c["state"]),
                text(&c["source"]),
                text(&c["fetched_at"]),
                expires,
                format!("{}/{}", text(&c["fetches"]), text(&c["fetch_errors"])),
                last_error,
            ]
        })
        .collect();
    let routes: Vec<Vec<String>> = status["routes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| {
            let state = match &r["disabled"] {
                serde_json::Value::Null => "enabled".to_string(),
                reason => format!("disabled: {}", text(reason)),
            };
            vec![
                text(&r["listener"]),
                text(&r["prefix"]),
                text(&r["upstream"]),
                text(&r["credential"]),
                state,
            ]
        })
        .collect();
    let mut out = format!(
        "config: {} (loaded {})\n\n",
        text(&status["config"]["origin"]),
        text(&status["config"]["loaded_at"])
    );
    out.push_str(&table(
        &[
            "CREDENTIAL",
            "KIND",
            "STATE",
            "SOURCE",
            "FETCHED AT",
            "EXPIRES IN",
            "FETCHES/ERRORS",
            "LAST ERROR",
        ],
        &credentials,
    ));
    out.push('\n');
    out.push_str(&table(
        &["LISTENER", "PREFIX", "UPSTREAM", "CREDENTIAL", "STATE"],
        &routes,
    ));
    out
}

/// What the egress proxy does not cover: the cloud libraries fetch their own tokens with
/// their own HTTP clients.
pub fn egress_notes(resolved: &Resolved, egress: &crate::config::egress::Egress) -> Vec<String> {
    let kinds: std::collections::BTreeSet<&str> =
        resolved.credentials.iter().map(|c| c.spec.kind()).collect();
    let mut notes = Vec::new();
    if kinds.contains("aws") || kinds.contains("azure") {
        let which = match (kinds.contains("aws"), kinds.contains("azure")) {
            (true, true) => "AWS and Azure",
            (true, false) => "AWS",
            _ => "Azure",
        };
        let how = if egress.origin == "environment" {
            "follow the same HTTPS_PROXY/NO_PROXY (keep 169.254.169.254 and 169.254.170.2 in NO_PROXY for instance and container credentials)"
        } else {
            "follow HTTPS_PROXY/NO_PROXY from the environment, not `egress_proxy`: set HTTPS_PROXY too if they must go through the proxy"
        };
        notes.push(format!("{which} token requests {how}"));
    }
    if kinds.contains("google") {
        notes.push(
            "Google token requests (gcp_auth) do not support a proxy and go direct: allow oauth2.googleapis.com (or the metadata server) through the firewall"
                .to_string(),
        );
    }
    notes
}

/// Left-aligned columns; the last one is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[&str]| {
        let text: Vec<String> = cols
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i + 1 == cols.len() {
                    c.to_string()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header);
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// The base URL a client uses for a listener and prefix: over TLS, by the first name in
/// `allowed_hosts` (the name on the certificate); else from this machine.
pub fn base_url(resolved: &Resolved, addr: SocketAddr, prefix: &str) -> String {
    let tls = resolved.tls.is_some();
    let scheme = if tls { "https" } else { "http" };
    let named = resolved
        .config
        .guard
        .allowed_hosts
        .first()
        .filter(|_| tls)
        .cloned();
    let host = if let Some(name) = named {
        name
    } else if addr.ip().is_unspecified() {
        if addr.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else {
        match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    };
    let path = if prefix == "/" { "" } else { prefix };
    format!("{scheme}://{host}:{}{path}", addr.port())
}

/// The environment each route's clients need, as `export` lines with a comment per route.
pub fn env_report(resolved: &Resolved) -> String {
    let mut out = String::new();
    for (listener, route) in resolved.routes() {
        let credential = &resolved.credentials[route.credential];
        let url = base_url(resolved, listener.addr, &route.prefix);
        let gateway = resolved.config.callers.is_some();
        let _ = writeln!(
            out,
            "# route {} -> {} (credential `{}`)",
            route.prefix,
            route.upstream_text(),
            credential.name
        );
        let Some(view) = resolved.route_view(route) else {
            let _ = writeln!(
                out,
                "# disabled: {}\n",
                route.disabled().unwrap_or_default()
            );
            continue;
        };
        // A translating route speaks the Anthropic API, whatever its credential.
        let mode = if route.translate.is_some() {
            ClientEnv::Anthropic
        } else {
            credential.spec.client_env(&view)
        };
        match &mode {
            ClientEnv::Anthropic => {
                let _ = writeln!(out, "export ANTHROPIC_BASE_URL={url}");
                if !gateway {
                    let _ = writeln!(
                        out,
                        "export ANTHROPIC_AUTH_TOKEN=credproxy  # any value: credproxy removes it and applies the real key"
                    );
                }
            }
            ClientEnv::Bedrock { region } => bedrock_env(&mut out, &url, region.as_deref()),
            ClientEnv::Vertex { region, project } => {
                vertex_env(&mut out, &url, region.as_deref(), project.as_deref())
            }
            ClientEnv::Foundry => foundry_env(&mut out, &url, gateway),
            ClientEnv::Note(note) => {
                let _ = writeln!(out, "# {note} to {url}");
            }
        }
        if gateway {
            caller_token(&mut out, resolved, &mode, route);
        }
        out.push('\n');
    }
    out
}

/// Claude Code's Vertex mode through credproxy: it skips its own Google auth. The SDK
/// appends `/projects/...` to a base URL that ends in `/v1`.
fn vertex_env(out: &mut String, url: &str, region: Option<&str>, project: Option<&str>) {
    let _ = writeln!(out, "export CLAUDE_CODE_USE_VERTEX=1");
    let _ = writeln!(out, "export ANTHROPIC_VERTEX_BASE_URL={url}/v1");
    let _ = writeln!(out, "export CLAUDE_CODE_SKIP_VERTEX_AUTH=1");
    if let Some(region) = region {
        let _ = writeln!(out, "export CLOUD_ML_REGION={region}");
    }
    match project {
        Some(project) => {
            let _ = writeln!(out, "export ANTHROPIC_VERTEX_PROJECT_ID={project}");
        }
        None => {
            let _ = writeln!(
                out,
                "export ANTHROPIC_VERTEX_PROJECT_ID=<your-project-id>  # credproxy does not know it: set `project` in the credential"
            );
        }
    }
}

/// Claude Code's Foundry mode through credproxy: it skips its own Azure auth. Behind a
/// gateway the caller token goes in `ANTHROPIC_FOUNDRY_API_KEY` (sent as `x-api-key`).
fn foundry_env(out: &mut String, url: &str, gateway: bool) {
    let _ = writeln!(out, "export CLAUDE_CODE_USE_FOUNDRY=1");
    let _ = writeln!(out, "export ANTHROPIC_FOUNDRY_BASE_URL={url}");
    if !gateway {
        let _ = writeln!(out, "export CLAUDE_CODE_SKIP_FOUNDRY_AUTH=1");
    }
}

/// How a caller hands a shared credproxy its own token, per Claude Code mode (measured in
/// docs/research/claude-code-headers.md).
fn caller_token(out: &mut String, resolved: &Resolved, mode: &ClientEnv, route: &ResolvedRoute) {
    let variable = match mode {
        ClientEnv::Foundry => "ANTHROPIC_FOUNDRY_API_KEY",
        _ => "ANTHROPIC_AUTH_TOKEN",
    };
    let _ = writeln!(
        out,
        "export {variable}=<your caller token>  # or an apiKeyHelper that prints it; credproxy checks it and removes it"
    );
    if let Some(header) = resolved
        .config
        .callers
        .as_ref()
        .and_then(|c| c.header.as_ref())
    {
        let _ = writeln!(
            out,
            "# or: export ANTHROPIC_CUSTOM_HEADERS=\"{header}: <your caller token>\""
        );
    }
    if let Some(groups) = &route.groups {
        let _ = writeln!(out, "# this route admits members of: {}", groups.join(", "));
    }
}

/// Claude Code's Bedrock mode through credproxy: it skips its own AWS auth.
fn bedrock_env(out: &mut String, url: &str, region: Option<&str>) {
    let _ = writeln!(out, "export CLAUDE_CODE_USE_BEDROCK=1");
    let _ = writeln!(out, "export ANTHROPIC_BEDROCK_BASE_URL={url}");
    let _ = writeln!(out, "export CLAUDE_CODE_SKIP_BEDROCK_AUTH=1");
    if let Some(region) = region {
        let _ = writeln!(out, "export AWS_REGION={region}");
    }
}
