//! The reports behind `credproxy check` and `credproxy env`. They return text; `main.rs`
//! prints it and picks the exit code.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::config::{Config, CredentialSpec, Route};
use crate::credentials::{GoogleChain, Lifetime, Slot};

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
pub async fn check(config: &Config) -> Vec<CheckRow> {
    let tasks: Vec<_> = config
        .credentials
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let slot = Slot::new(c);
            let kind = c.spec.kind_name();
            let unused = unused_reason(config, index);
            tokio::spawn(async move {
                let (expires_in, status) = match unused {
                    Some(reason) => ("-".to_string(), Ok(Some(reason))),
                    None => match slot.source.fetch().await {
                        Ok(fetched) => {
                            let via = fetched.via.map(|v| format!("via {v}"));
                            (expires_in(fetched.lifetime), Ok(via))
                        }
                        Err(error) => ("-".to_string(), Err(error.message)),
                    },
                };
                CheckRow {
                    credential: slot.name,
                    kind,
                    source: slot.source.describe(),
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

/// Why credential `index` is not fetched: no route uses it, or all its routes are disabled.
pub fn unused_reason(config: &Config, index: usize) -> Option<String> {
    let routes: Vec<&Route> = config
        .routes()
        .map(|(_, r)| r)
        .filter(|r| r.credential == index)
        .collect();
    if routes.is_empty() {
        return Some("unused: no route refers to it".to_string());
    }
    if routes.iter().all(|r| r.disabled.is_some()) {
        return routes[0]
            .disabled
            .clone()
            .map(|reason| format!("unused: its routes are disabled ({reason})"));
    }
    None
}

fn expires_in(lifetime: Lifetime) -> String {
    match lifetime {
        Lifetime::UntilRejected => "never".to_string(),
        Lifetime::Ttl(ttl) => format!("{} (ttl)", humantime::format_duration(ttl)),
        Lifetime::IssuerExpiry(at) => match at.duration_since(SystemTime::now()) {
            Ok(left) => humantime::format_duration(Duration::from_secs(left.as_secs())).to_string(),
            Err(_) => "expired".to_string(),
        },
    }
}

pub fn format_check(rows: &[CheckRow]) -> String {
    let header = ["CREDENTIAL", "KIND", "SOURCE", "EXPIRES IN", "STATUS"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
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
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[&str]| {
        let text: Vec<String> = cols
            .iter()
            .zip(widths)
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
    line(&header);
    for row in &cells {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// The base URL a client on this machine uses for a listener and prefix.
pub fn base_url(addr: SocketAddr, prefix: &str) -> String {
    let host = if addr.ip().is_unspecified() {
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
    format!("http://{host}:{}{path}", addr.port())
}

/// The environment each route's clients need, as `export` lines with a comment per route.
pub fn env_report(config: &Config) -> String {
    let mut out = String::new();
    for (listener, route) in config.routes() {
        let credential = &config.credentials[route.credential];
        let url = base_url(listener.addr, &route.prefix);
        let _ = writeln!(
            out,
            "# route {} -> {} (credential `{}`)",
            route.prefix,
            route
                .template
                .as_deref()
                .filter(|_| route.disabled.is_some())
                .map_or_else(|| route.upstream.to_string(), str::to_string),
            credential.name
        );
        if let Some(reason) = &route.disabled {
            let _ = writeln!(out, "# disabled: {reason}\n");
            continue;
        }
        match &credential.spec {
            CredentialSpec::Key(_) if Slot::new(credential).scheme.is_bedrock() => {
                bedrock_env(&mut out, &url, route)
            }
            CredentialSpec::Key(_) => {
                let _ = writeln!(out, "export ANTHROPIC_BASE_URL={url}");
                let _ = writeln!(
                    out,
                    "export ANTHROPIC_AUTH_TOKEN=credproxy  # any value: credproxy removes it and applies the real key"
                );
            }
            CredentialSpec::Aws(_)
                if route
                    .upstream
                    .authority
                    .host()
                    .starts_with("bedrock-runtime") =>
            {
                bedrock_env(&mut out, &url, route)
            }
            CredentialSpec::Google(google) if is_vertex(route) => {
                let region = config.regions.get(route.credential).cloned().flatten();
                vertex_env(
                    &mut out,
                    &url,
                    region.as_deref(),
                    GoogleChain::new(google.clone()).project().as_deref(),
                );
            }
            CredentialSpec::Google(_) => {
                let _ = writeln!(
                    out,
                    "# a Google bearer token is applied; clients send unauthenticated requests to {url}"
                );
            }
            CredentialSpec::Azure(_)
                if route.template.as_deref() == Some("{foundry_base}")
                    || route
                        .upstream
                        .authority
                        .host()
                        .ends_with(".services.ai.azure.com") =>
            {
                foundry_env(&mut out, &url)
            }
            CredentialSpec::Azure(_) => {
                let _ = writeln!(
                    out,
                    "# an Entra ID token (or key) is applied; clients send unauthenticated requests to {url}"
                );
            }
            CredentialSpec::Acs(_) => {
                let _ = writeln!(
                    out,
                    "# requests are signed with the ACS access key (HMAC-SHA256); clients send unsigned requests to {url}"
                );
            }
            CredentialSpec::Aws(aws) => {
                let _ = writeln!(
                    out,
                    "# signed with SigV4 for service `{}`; clients send unsigned requests to {url}",
                    aws.service
                );
            }
        }
        out.push('\n');
    }
    out
}

fn is_vertex(route: &Route) -> bool {
    let host = route.upstream.authority.host();
    host.ends_with("aiplatform.googleapis.com")
        || (host.starts_with("aiplatform.") && host.ends_with(".rep.googleapis.com"))
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

/// Claude Code's Foundry mode through credproxy: it skips its own Azure auth.
fn foundry_env(out: &mut String, url: &str) {
    let _ = writeln!(out, "export CLAUDE_CODE_USE_FOUNDRY=1");
    let _ = writeln!(out, "export ANTHROPIC_FOUNDRY_BASE_URL={url}");
    let _ = writeln!(out, "export CLAUDE_CODE_SKIP_FOUNDRY_AUTH=1");
}

/// Claude Code's Bedrock mode through credproxy: it skips its own AWS auth.
fn bedrock_env(out: &mut String, url: &str, route: &Route) {
    let _ = writeln!(out, "export CLAUDE_CODE_USE_BEDROCK=1");
    let _ = writeln!(out, "export ANTHROPIC_BEDROCK_BASE_URL={url}");
    let _ = writeln!(out, "export CLAUDE_CODE_SKIP_BEDROCK_AUTH=1");
    if let Some(region) = crate::schemes::region_from_host(route.upstream.authority.host()) {
        let _ = writeln!(out, "export AWS_REGION={region}");
    }
}
