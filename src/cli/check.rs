//! `credproxy check`: the config is valid, every credential an enabled route uses is
//! fetched once straight from its source (never a value printed), the egress proxy, the
//! listener's TLS files and the callers' key set load, the usage store answers (or its
//! state file reads); exit 1 if anything failed that a route needs (a route with several
//! targets needs one of its targets' credentials).

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::table::table;
use crate::config::{Resolved, Unready};
use crate::credentials::Lifetime;
use crate::kinds::TokenEgress;

/// Runs the checks and prints their report.
pub async fn run(resolved: Resolved) -> ExitCode {
    println!("config: {} (valid)", resolved.config.origin.display_name());
    // `oidc` credentials get their provider's client once the clients exist.
    if crate::login::any(&resolved)
        && let Ok(clients) = crate::client::Clients::build(&resolved)
    {
        crate::login::bind(&resolved, clients.background());
    }
    let rows = credentials(&resolved).await;
    print!("{}", format_check(&rows));
    let mut callers_ok = true;
    match &resolved.egress {
        Ok(Some(egress)) => {
            println!("egress: {}", egress.describe());
            for line in egress_notes(&resolved, egress) {
                println!("egress: {line}");
            }
        }
        Ok(None) => {}
        Err(error) => {
            callers_ok = false;
            println!("egress: FAILED: {error}");
        }
    }
    if let Some(files) = &resolved.tls {
        match crate::server::tls::Certificate::load(files) {
            Ok(_) => println!(
                "tls: {} and {} load",
                files.cert.display(),
                files.key.display()
            ),
            Err(error) => {
                callers_ok = false;
                println!("tls: FAILED: {error}");
            }
        }
    }
    if let Some(callers) = &resolved.config.callers {
        println!(
            "callers: {} static token(s){}",
            callers.tokens.len(),
            if callers.jwt.is_some() { ", JWTs" } else { "" }
        );
        if callers.jwt.is_some() {
            let checked = match crate::client::Clients::build(&resolved) {
                Ok(clients) => {
                    let callers = crate::callers::Callers::new(
                        callers,
                        resolved.jwks_file.clone(),
                        clients.background().clone(),
                    );
                    callers.prefetch_keys().await
                }
                Err(error) => Some((String::new(), Err(error))),
            };
            match checked {
                Some((issuer, Ok(keys))) => {
                    println!("callers: issuer {issuer}: {keys} signing key(s) fetched")
                }
                Some((issuer, Err(error))) => {
                    callers_ok = false;
                    println!("callers: issuer {issuer}: FAILED: {error}");
                }
                None => {}
            }
        }
    }
    match crate::usage::check(&resolved).await {
        Ok(line) => println!("usage: {line}"),
        Err(error) => {
            callers_ok = false;
            println!("usage: FAILED: {error}");
        }
    }
    for (_, route) in resolved.routes() {
        if let Some(reason) = route.disabled() {
            println!("route {} disabled: {reason}", route.prefix);
        }
    }
    // A failing credential of one target of several is a warning: the route still serves.
    let unready = resolved.unready(|index| rows[index].status.is_ok());
    for missing in &unready {
        if let Unready::Route { prefix, .. } = missing {
            println!("route {prefix}: FAILED: no target's credential could be fetched");
        }
    }
    if callers_ok && unready.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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
pub async fn credentials(resolved: &Resolved) -> Vec<CheckRow> {
    let tasks: Vec<_> = resolved
        .credentials
        .iter()
        .enumerate()
        .map(|(index, credential)| {
            let cached = std::sync::Arc::clone(&credential.cached);
            let kind = credential.spec.kind().name();
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

/// What the egress proxy does not cover: the cloud libraries fetch their own tokens with
/// their own HTTP clients (each kind says how, `Kind::token_egress`).
pub fn egress_notes(resolved: &Resolved, egress: &crate::config::egress::Egress) -> Vec<String> {
    let mut following = Vec::new();
    let mut direct = Vec::new();
    for credential in &resolved.credentials {
        match credential.spec.kind().token_egress() {
            TokenEgress::Ours => {}
            TokenEgress::Environment(who) if !following.contains(&who) => following.push(who),
            TokenEgress::Direct(note) if !direct.contains(&note) => direct.push(note),
            TokenEgress::Environment(_) | TokenEgress::Direct(_) => {}
        }
    }
    let mut notes = Vec::new();
    if !following.is_empty() {
        let how = if egress.origin == "environment" {
            "follow the same HTTPS_PROXY/NO_PROXY (keep 169.254.169.254 and 169.254.170.2 in NO_PROXY for instance and container credentials)"
        } else {
            "follow HTTPS_PROXY/NO_PROXY from the environment, not `egress_proxy`: set HTTPS_PROXY too if they must go through the proxy"
        };
        notes.push(format!("{} token requests {how}", following.join(" and ")));
    }
    notes.extend(direct.into_iter().map(str::to_string));
    notes
}
