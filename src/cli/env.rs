//! `credproxy env`: the environment each route's clients need, as `export` lines.

use std::fmt::Write as _;
use std::process::ExitCode;

use crate::config::{Resolved, ResolvedRoute};
use crate::kinds::ClientEnv;

/// Prints the report.
pub fn run(resolved: &Resolved) -> ExitCode {
    print!("{}", report(resolved));
    ExitCode::SUCCESS
}

/// The environment each route's clients need, as `export` lines with a comment per route.
pub fn report(resolved: &Resolved) -> String {
    let mut out = String::new();
    for (listener, route) in resolved.routes() {
        let credential = &resolved.credentials[route.credential];
        let url = resolved.base_url(listener.addr, &route.prefix);
        let gateway = resolved.config.callers.is_some();
        if route.targets.len() > 1 {
            let each: Vec<String> = route
                .targets
                .iter()
                .map(|t| {
                    let name = &resolved.credentials[t.credential].name;
                    format!("{} (credential `{name}`)", t.upstream_text())
                })
                .collect();
            let strategy = route.failover.strategy.name();
            let _ = writeln!(
                out,
                "# route {} -> {} targets ({strategy}): {}",
                route.prefix,
                each.len(),
                each.join(", ")
            );
        } else {
            let _ = writeln!(
                out,
                "# route {} -> {} (credential `{}`)",
                route.prefix,
                route.upstream_text(),
                credential.name
            );
        }
        let Some(mode) = resolved.client_env(route) else {
            let _ = writeln!(
                out,
                "# disabled: {}\n",
                route.disabled().unwrap_or_default()
            );
            continue;
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
                "export ANTHROPIC_VERTEX_PROJECT_ID=<your-project-id>  # the upstream's project; credproxy does not know it (a google credential's `project` says it)"
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
