//! The reports behind `credproxy check` and `credproxy env`. They return text; `main.rs`
//! prints it and picks the exit code.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::config::{Config, CredentialSpec};
use crate::credentials::{Lifetime, Source};

/// One row of the `check` table.
#[derive(Debug)]
pub struct CheckRow {
    pub credential: String,
    pub kind: &'static str,
    pub source: String,
    pub expires_in: String,
    pub status: Result<(), String>,
}

/// Fetches every credential once, straight from its source, all at the same time (a slow
/// source does not hold up the others' rows).
pub async fn check(config: &Config) -> Vec<CheckRow> {
    let tasks: Vec<_> = config
        .credentials
        .iter()
        .map(|c| {
            let (name, kind, source) = (
                c.name.clone(),
                c.spec.kind_name(),
                Source::from_spec(&c.spec),
            );
            tokio::spawn(async move {
                let (expires_in, status) = match source.fetch().await {
                    Ok(fetched) => (expires_in(fetched.lifetime), Ok(())),
                    Err(error) => ("-".to_string(), Err(error.message)),
                };
                CheckRow {
                    credential: name,
                    kind,
                    source: source.describe(),
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
                    Ok(()) => "ok".to_string(),
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
            route.prefix, route.upstream, credential.name
        );
        match &credential.spec {
            CredentialSpec::Key(_) => {
                let _ = writeln!(out, "export ANTHROPIC_BASE_URL={url}");
                let _ = writeln!(
                    out,
                    "export ANTHROPIC_AUTH_TOKEN=credproxy  # any value: credproxy removes it and applies the real key"
                );
            }
        }
        out.push('\n');
    }
    out
}
