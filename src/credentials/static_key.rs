//! Keys that sit somewhere already: an environment variable, a file, the config itself.

use std::path::PathBuf;
use std::time::Duration;

use super::{Fetched, Lifetime, Material, Secret, SourceError, Token};

#[derive(Debug)]
pub enum StaticKey {
    /// Read from credproxy's own environment. `or_helper_env` names the variable that
    /// could have supplied a helper instead, for the "what to set" message.
    Env {
        var: String,
        or_helper_env: Option<String>,
    },
    /// Read from a file; re-read after a rejection (and every `ttl`, if set), so rotating
    /// the file rotates the key without a restart.
    File {
        path: PathBuf,
        ttl: Option<Duration>,
    },
    /// Written in the config file (warned about at start).
    Literal(Secret),
}

impl StaticKey {
    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let (secret, lifetime) = match self {
            StaticKey::Env { var, or_helper_env } => match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => {
                    (Secret::new(value.trim()), Lifetime::UntilRejected)
                }
                unset_or_empty => {
                    let state = if unset_or_empty.is_ok() {
                        "is empty"
                    } else {
                        "is not set"
                    };
                    let alternative = or_helper_env
                        .as_ref()
                        .map(|h| format!(" (or {h} to a command that prints it)"))
                        .unwrap_or_default();
                    return Err(SourceError::not_configured(format!(
                        "environment variable {var} {state}; set it to the key{alternative} and restart credproxy"
                    )));
                }
            },
            StaticKey::File { path, ttl } => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    SourceError::not_configured(format!(
                        "cannot read key file {}: {e}",
                        path.display()
                    ))
                })?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(SourceError::unrecoverable(format!(
                        "key file {} is empty",
                        path.display()
                    )));
                }
                if value.contains(['\n', '\r']) {
                    return Err(SourceError::unrecoverable(format!(
                        "key file {} holds more than one line; it must hold the key alone",
                        path.display()
                    )));
                }
                let lifetime = ttl.map_or(Lifetime::UntilRejected, Lifetime::Ttl);
                (Secret::new(value), lifetime)
            }
            StaticKey::Literal(secret) => (secret.clone(), Lifetime::UntilRejected),
        };
        Ok(Fetched {
            material: Material::Token(Token::new(secret)?),
            lifetime,
            via: None,
        })
    }

    pub fn describe(&self) -> String {
        match self {
            StaticKey::Env { var, .. } => format!("env {var}"),
            StaticKey::File { path, .. } => format!("file {}", path.display()),
            StaticKey::Literal(_) => "literal in config".to_string(),
        }
    }
}
