//! The employee's side of a credproxy gateway: `oidc` credentials and the commands that
//! sign a person in (`credproxy login`), print a current token (`credproxy token`, fit for
//! Claude Code's `apiKeyHelper`) and sign out (`credproxy logout`).
//!
//! - [`provider`]: the OpenID provider (discovery, token, device, revocation endpoints; ID
//!   tokens checked by the gateway's own JWT validation).
//! - [`flows`]: the browser (loopback redirect + PKCE) and device sign-ins.
//! - [`store`]: where a login is kept, and the lock that lets processes share it.
//! - [`session`]: the token to send now, refreshed under that lock; the credential cache's
//!   source for an `oidc` credential.
//!
//! Sits above `client` and `callers` (it needs both); the `oidc` kind below binds a
//! [`crate::credentials::Source::Bound`] that [`bind`] fills once the process has clients.

pub mod flows;
pub mod provider;
pub mod session;
pub mod store;

use std::sync::Arc;
use std::time::SystemTime;

use crate::client::UpstreamClient;
use crate::config::{Resolved, ResolvedCredential};
use crate::credentials::{FailureKind, Source};
use crate::kinds::oidc::OidcSpec;

use provider::Provider;
use session::Session;
use store::Store;

/// Gives every `oidc` credential its session (called where the process builds its clients;
/// credentials kept over a reload keep theirs).
pub fn bind(resolved: &Resolved, client: &UpstreamClient) {
    for credential in &resolved.credentials {
        if let (Some(spec), Source::Bound(bound)) =
            (spec_of(credential), credential.cached.source())
        {
            bound.bind(Arc::new(session(&credential.name, spec, client)));
        }
    }
}

/// Whether the config has an `oidc` credential (the process then needs its clients for
/// `check`).
pub fn any(resolved: &Resolved) -> bool {
    resolved.credentials.iter().any(|c| spec_of(c).is_some())
}

fn spec_of(credential: &ResolvedCredential) -> Option<&OidcSpec> {
    (credential.spec.as_ref() as &dyn std::any::Any).downcast_ref::<OidcSpec>()
}

fn session(name: &str, spec: &OidcSpec, client: &UpstreamClient) -> Session {
    let provider = Arc::new(Provider::new(spec.clone(), client.clone()));
    Session::new(name, provider, Store::new(name, Store::state_dir()))
}

/// The session of credential `name`, or of the config's only `oidc` credential.
pub fn find(
    resolved: &Resolved,
    name: Option<&str>,
    client: &UpstreamClient,
) -> Result<Session, String> {
    let logins: Vec<(&str, &OidcSpec)> = resolved
        .credentials
        .iter()
        .filter_map(|c| spec_of(c).map(|spec| (c.name.as_str(), spec)))
        .collect();
    let names = || {
        logins
            .iter()
            .map(|(n, _)| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (name, spec) = match name {
        Some(name) => match logins.iter().find(|(n, _)| *n == name) {
            Some(found) => *found,
            None if resolved.credentials.iter().any(|c| c.name == name) => {
                return Err(format!(
                    "credential `{name}` is not of kind \"oidc\"; logins are for: {}",
                    names()
                ));
            }
            None => {
                return Err(format!(
                    "there is no credential `{name}` in {}; logins are for: {}",
                    resolved.config.origin.display_name(),
                    names()
                ));
            }
        },
        None => match logins.as_slice() {
            [one] => *one,
            [] => {
                return Err(format!(
                    "{} has no credential of kind \"oidc\" to log in to",
                    resolved.config.origin.display_name()
                ));
            }
            _ => {
                return Err(format!(
                    "several credentials log in ({}); name one",
                    names()
                ));
            }
        },
    };
    Ok(session(name, spec, client))
}

/// `credproxy login [NAME]`: signs in, checks the ID token, stores the tokens; what to
/// tell the person.
pub async fn login(session: &Session, device: bool, say: &dyn Fn(&str)) -> Result<String, String> {
    let spec = session.provider().spec();
    let flow = flows::choose(spec.flow, device);
    let (answer, nonce) = flows::sign_in(session, flow, say).await?;
    let has_refresh = answer.refresh_token.is_some();
    let (saved, caller) = session.accept(answer, nonce.as_deref(), None).await?;
    let locked = session.store().lock().await?;
    session.store().save(&locked, &saved).await?;
    drop(locked);
    let mut lines = Vec::new();
    match &caller {
        Some(caller) => {
            lines.push(format!(
                "logged in to {} as {}",
                spec.issuer,
                flows::who(caller)
            ));
            if let Some(at) = caller.expires_at {
                lines.push(format!("the ID token expires {}", when(at)));
            }
        }
        None => lines.push(format!("logged in to {}", spec.issuer)),
    }
    lines.push(format!(
        "tokens kept in {}",
        session.store().describe().await
    ));
    if !has_refresh {
        lines.push(
            "warning: the identity provider gave no refresh token, so this login lasts only as long as its token; add \"offline_access\" to `scopes` (and allow refresh tokens for the app)".to_string(),
        );
    }
    Ok(lines.join("\n"))
}

/// `credproxy token [NAME]`: a currently valid token, refreshed if needed.
pub async fn token(session: &Session) -> Result<String, String> {
    match session.current(false).await {
        Ok((secret, _)) => Ok(secret.expose().to_string()),
        Err(error) if error.kind == FailureKind::LoginRequired => Err(error.to_string()),
        Err(error) => Err(format!("{error} (if it persists, {})", session.hint())),
    }
}

/// `credproxy logout [NAME]`: revokes the refresh token where the provider offers it, and
/// deletes the stored login.
pub async fn logout(session: &Session) -> Result<String, String> {
    let locked = session.store().lock().await?;
    let saved = session.stored(&locked).await?;
    let mut lines = Vec::new();
    let revocable = saved.as_ref().and_then(|s| {
        s.refresh_token
            .as_deref()
            .map(|t| (t, "refresh_token"))
            .or_else(|| s.access_token.as_deref().map(|t| (t, "access_token")))
    });
    if let Some((token, hint)) = revocable {
        match session.provider().revoke(token, hint).await {
            Ok(true) => lines.push(format!(
                "revoked the login at {}",
                session.provider().spec().issuer
            )),
            Ok(false) => lines.push(format!(
                "{} offers no revocation; the tokens stay valid there until they expire",
                session.provider().spec().issuer
            )),
            Err(error) => lines.push(format!(
                "warning: could not revoke the login ({error}); deleting it here anyway"
            )),
        }
    }
    if session.store().delete(&locked).await? {
        lines.push(format!(
            "logged out of `{}`: removed the tokens from {}",
            session.name(),
            session.store().describe().await
        ));
    } else {
        lines.push(format!("`{}` was not logged in", session.name()));
    }
    Ok(lines.join("\n"))
}

fn when(at: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(at);
    match at.duration_since(SystemTime::now()) {
        Ok(left) => format!(
            "at {stamp} (in {})",
            humantime::format_duration(std::time::Duration::from_secs(left.as_secs()))
        ),
        Err(_) => format!("at {stamp} (already expired)"),
    }
}
