//! `credproxy status`: asks the running credproxy (the config's `admin_listen`) for its
//! `/status` and prints it as tables: which credential fails and why, which routes it
//! affects, the targets of routes with several (healthy, or cooling until when, and why),
//! each upstream's connections; exit 1 if a credential is failing.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::table::table;
use crate::config::Resolved;

/// `credproxy status`: the running process's `/status` as tables.
pub async fn run(resolved: &Resolved) -> ExitCode {
    let addr = match admin_addr(resolved, "status") {
        Ok(addr) => addr,
        Err(error) => return super::failed(error),
    };
    match fetch_admin(addr, "/status").await {
        Ok(status) => {
            let ours = resolved.config.origin.display_name();
            if status["config"]["origin"].as_str() != Some(ours.as_str()) {
                eprintln!(
                    "credproxy: warning: the process at {addr} runs {}, not {ours}",
                    status["config"]["origin"]
                );
            }
            print!("{}", format_status(&status));
            let failing = status["credentials"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["state"] == "failing"));
            if failing {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => super::failed(error),
    }
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
    // The targets of routes with several targets: which is cooling, and why.
    let targets: Vec<Vec<String>> = status["routes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .flat_map(|r| {
            let targets = r["targets"].as_array().cloned().unwrap_or_default();
            let prefix = text(&r["prefix"]);
            targets.into_iter().map(move |t| {
                let state = match t["state"].as_str() {
                    Some("cooling") => format!("cooling until {}", text(&t["cooling_until"])),
                    _ => text(&t["state"]),
                };
                let last_error = match &t["last_error"] {
                    serde_json::Value::Null => "-".to_string(),
                    e => format!("{} ({})", text(&e["message"]), text(&e["at"])),
                };
                vec![
                    prefix.clone(),
                    text(&t["name"]),
                    text(&t["upstream"]),
                    text(&t["credential"]),
                    state,
                    text(&t["requests"]),
                    text(&t["failovers"]),
                    last_error,
                ]
            })
        })
        .collect();
    if !targets.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "PREFIX",
                "TARGET",
                "UPSTREAM",
                "CREDENTIAL",
                "STATE",
                "REQUESTS",
                "FAILOVERS",
                "LAST ERROR",
            ],
            &targets,
        ));
    }
    // Upstreams reached over HTTP/2 (or found to speak HTTP/1.1) since the start.
    let upstreams: Vec<Vec<String>> = status["upstreams"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|u| {
            vec![
                text(&u["upstream"]),
                text(&u["protocol"]),
                text(&u["connections"]),
                text(&u["streams_in_use"]),
                text(&u["stream_limit"]),
                text(&u["waiting"]),
            ]
        })
        .collect();
    if !upstreams.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "UPSTREAM",
                "PROTOCOL",
                "CONNECTIONS",
                "STREAMS IN USE",
                "STREAM LIMIT",
                "WAITING",
            ],
            &upstreams,
        ));
    }
    out
}

/// The running process's admin listener, from the config, for `credproxy COMMAND`.
pub(super) fn admin_addr(resolved: &Resolved, command: &str) -> Result<SocketAddr, String> {
    let Some(addr) = resolved.config.admin.addr() else {
        return Err(format!(
            "`admin_listen` is \"off\" in this config; set it to an address to use `credproxy {command}`"
        ));
    };
    if addr.port() == 0 {
        return Err(
            "`admin_listen` has port 0, so the running process's port is not known; set a fixed port"
                .to_string(),
        );
    }
    Ok(addr)
}

/// Asks the running process's admin listener for `path` (`/status`, `/usage?...`).
pub(super) async fn fetch_admin(addr: SocketAddr, path: &str) -> Result<Value, String> {
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| format!("no answer from the admin listener at {addr}"))?
    .map_err(|e| {
        format!("cannot reach the admin listener at {addr} (is credproxy running with this config?): {e}")
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("admin listener at {addr}: {e}"))?;
    tokio::spawn(connection);
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let request = Request::get(path)
        .header(header::HOST, host)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| format!("the admin listener at {addr} did not answer in time"))?
        .map_err(|e| format!("admin listener at {addr}: {e}"))?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "the admin listener answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{path} is not JSON: {e}"))
}
