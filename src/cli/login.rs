//! `credproxy login|token|logout [NAME]`: an `oidc` credential's login at its identity
//! provider (the protocol lives in `login`). Progress goes to stderr; the outcome (for
//! `token`, the token alone, so Claude Code can run it as its `apiKeyHelper`) to stdout.

use std::process::ExitCode;

use crate::config::Resolved;

/// Which of the three commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Log in: the browser with a loopback redirect, or (`device`) a device code.
    In { device: bool },
    /// Print a current token, refreshed if needed.
    Token,
    /// Revoke the login where the provider offers it, and delete it.
    Out,
}

pub async fn run(resolved: &Resolved, name: Option<&str>, action: Action) -> ExitCode {
    let outcome = async {
        let clients = crate::client::Clients::build(resolved)?;
        let session = crate::login::find(resolved, name, clients.background())?;
        match action {
            Action::In { device } => {
                crate::login::login(&session, device, &|line| eprintln!("{line}")).await
            }
            Action::Token => crate::login::token(&session).await,
            Action::Out => crate::login::logout(&session).await,
        }
    };
    match outcome.await {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => super::failed(error),
    }
}
