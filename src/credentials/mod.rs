//! Credentials: where they come from (one file per source kind), the [`Secret`] type, and
//! the [`cache::CredentialCache`] that every request goes through.
//!
//! A source is asked for a value only by the cache: on first use, shortly before expiry
//! (in the background), and after an upstream said the value went bad.

mod acs;
mod aws;
mod azure;
pub mod cache;
mod google;
mod helper;
mod secret;
mod static_key;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::config::{Apply, CredentialConfig, CredentialSpec, KeyFrom, KeySpec, Rejection};
use crate::schemes::{AcsHmacScheme, HeaderScheme, Scheme, SigV4Scheme};
pub use acs::AcsKey;
pub use aws::{AwsChain, AwsMaterial, configured_region};
pub use azure::AzureChain;
pub use cache::CredentialCache;
pub use google::GoogleChain;
pub use helper::Helper;
pub use secret::Secret;
pub use static_key::StaticKey;

/// A credential value as the schemes use it, with what the cache knows about it.
#[derive(Debug)]
pub struct Credential {
    pub material: Material,
    /// When the issuer (or our own TTL) says the value stops being good.
    pub expires_at: Option<SystemTime>,
    /// Unique per fetch, so an auth failure invalidates only the value that failed.
    pub generation: u64,
}

/// The secret parts of a credential, one variant per shape of credential.
#[derive(Debug, Clone)]
pub enum Material {
    Token(Token),
    Aws(AwsMaterial),
    AcsKey(AcsKey),
}

/// A key or bearer token, with its header forms prepared once per fetch rather than
/// once per request.
#[derive(Debug, Clone)]
pub struct Token {
    secret: Secret,
    bare: HeaderValue,
    bearer: HeaderValue,
}

impl Token {
    /// Fails when the text cannot travel in an HTTP header (control characters, non-ASCII).
    pub fn new(secret: Secret) -> Result<Token, SourceError> {
        let header = |text: &str| {
            let mut value = HeaderValue::from_str(text).map_err(|_| {
                SourceError::unrecoverable(
                    "the key contains characters that cannot be sent in an HTTP header",
                )
            })?;
            value.set_sensitive(true);
            Ok::<_, SourceError>(value)
        };
        let bare = header(secret.expose())?;
        let bearer = header(&format!("Bearer {}", secret.expose()))?;
        Ok(Token {
            secret,
            bare,
            bearer,
        })
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The key alone, for `x-api-key`-style headers.
    pub fn bare_header(&self) -> &HeaderValue {
        &self.bare
    }

    /// `Bearer <key>`, for `Authorization`.
    pub fn bearer_header(&self) -> &HeaderValue {
        &self.bearer
    }
}

/// What a source hands the cache.
#[derive(Debug)]
pub struct Fetched {
    pub material: Material,
    pub lifetime: Lifetime,
    /// Which link of a chain supplied it (`container endpoint`, `profile`), when known.
    pub via: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Good until an upstream rejects it (a key from env, file or config).
    UntilRejected,
    /// Our own time-to-live (a helper's output): used as is.
    Ttl(Duration),
    /// The issuer's expiry: the cache stops using it a little before, to absorb clock skew.
    IssuerExpiry(SystemTime),
}

/// Why a source could not produce a credential. The kind drives behaviour; the message
/// is for people and never contains the secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Nothing is set up for this credential (a variable unset, a file missing).
    NotConfigured,
    /// It may work on the next try (a helper timed out, an endpoint was down).
    Transient,
    /// It will not work until someone changes something (bad output, rejected config).
    Unrecoverable,
}

impl SourceError {
    pub fn not_configured(message: impl Into<String>) -> Self {
        SourceError {
            kind: FailureKind::NotConfigured,
            message: message.into(),
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        SourceError {
            kind: FailureKind::Transient,
            message: message.into(),
        }
    }

    pub fn unrecoverable(message: impl Into<String>) -> Self {
        SourceError {
            kind: FailureKind::Unrecoverable,
            message: message.into(),
        }
    }
}

/// A configured way of producing a credential; one variant per source file.
#[derive(Debug)]
pub enum Source {
    Static(StaticKey),
    Helper(Helper),
    /// Boxed: the loaded chain is large and there is one per credential, not per request.
    Aws(Box<AwsChain>),
    Google(GoogleChain),
    Azure(AzureChain),
    /// A key source whose output is an ACS connection string or access key.
    Acs(Box<Source>),
    /// Configured, but what it needs is not set; answers with what to set.
    Unavailable(String),
}

impl Source {
    /// Builds the source a credential spec describes. Reads the environment once, to
    /// resolve `helper_env`; performs no I/O.
    pub fn from_spec(spec: &CredentialSpec) -> Source {
        Slot::resolve(spec).0
    }

    fn from_key_spec(spec: &KeySpec) -> Source {
        if let Some(var) = &spec.helper_env
            && let Some(command) = std::env::var(var).ok().filter(|c| !c.trim().is_empty())
        {
            return Source::Helper(Helper::new(command, spec.helper_ttl, spec.helper_timeout));
        }
        match &spec.from {
            Some(KeyFrom::Env(var)) => Source::Static(StaticKey::Env {
                var: var.clone(),
                or_helper_env: spec.helper_env.clone(),
            }),
            Some(KeyFrom::File { path, ttl }) => Source::Static(StaticKey::File {
                path: path.clone(),
                ttl: *ttl,
            }),
            Some(KeyFrom::Literal(secret)) => Source::Static(StaticKey::Literal(secret.clone())),
            Some(KeyFrom::Helper(command)) => Source::Helper(Helper::new(
                command.clone(),
                spec.helper_ttl,
                spec.helper_timeout,
            )),
            None => Source::Unavailable(format!(
                "{} is not set; set it to a command that prints the key",
                spec.helper_env.as_deref().unwrap_or("the helper variable")
            )),
        }
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        match self {
            Source::Static(source) => source.fetch().await,
            Source::Helper(source) => source.fetch().await,
            Source::Aws(source) => source.fetch().await,
            Source::Google(source) => source.fetch().await,
            Source::Azure(source) => source.fetch().await,
            Source::Acs(inner) => Box::pin(inner.fetch()).await.and_then(acs::from_key),
            Source::Unavailable(why) => Err(SourceError::not_configured(why.clone())),
        }
    }

    /// Where the value comes from, for `credproxy check`, logs and error messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Static(source) => source.describe(),
            Source::Helper(source) => source.describe(),
            Source::Aws(source) => source.describe(),
            Source::Google(source) => source.describe(),
            Source::Azure(source) => source.describe(),
            Source::Acs(inner) => inner.describe(),
            Source::Unavailable(_) => "not configured".to_string(),
        }
    }

    /// A literal key in the config file deserves a warning at start.
    pub fn is_literal(&self) -> bool {
        match self {
            Source::Static(StaticKey::Literal(_)) => true,
            Source::Acs(inner) => inner.is_literal(),
            _ => false,
        }
    }
}

/// A named credential: where its value comes from and how it goes onto a request.
#[derive(Debug)]
pub struct Slot {
    pub name: String,
    pub source: Source,
    pub scheme: Scheme,
}

impl Slot {
    pub fn new(config: &CredentialConfig) -> Slot {
        let (source, scheme) = Self::resolve(&config.spec);
        Slot {
            name: config.name.clone(),
            source,
            scheme,
        }
    }

    /// Source and scheme are decided together: an `aws` credential whose `bearer_env` is
    /// set becomes a Bedrock API key, with the bearer scheme and Bedrock's classifier.
    /// Reads the environment once; performs no I/O.
    fn resolve(spec: &CredentialSpec) -> (Source, Scheme) {
        match spec {
            CredentialSpec::Key(key) => (
                Source::from_key_spec(key),
                Scheme::Header(HeaderScheme::new(key.apply.clone(), key.rejection)),
            ),
            CredentialSpec::Aws(aws) => {
                if let Some(var) = &aws.bearer_env
                    && std::env::var(var).is_ok_and(|v| !v.trim().is_empty())
                {
                    return (
                        Source::Static(StaticKey::Env {
                            var: var.clone(),
                            or_helper_env: None,
                        }),
                        Scheme::Header(HeaderScheme::new(Apply::Bearer, Rejection::BedrockApiKey)),
                    );
                }
                (
                    Source::Aws(Box::new(AwsChain::new(aws.clone()))),
                    Scheme::SigV4(SigV4Scheme::new(aws.service.clone(), aws.region.clone())),
                )
            }
            CredentialSpec::Google(google) => {
                let chain = GoogleChain::new(google.clone());
                let mut scheme = HeaderScheme::new(Apply::Bearer, Rejection::Unauthorized);
                if let Some(project) = chain.quota_project()
                    && let Ok(value) = http::HeaderValue::from_str(&project)
                {
                    scheme = scheme
                        .with_header(http::HeaderName::from_static("x-goog-user-project"), value);
                }
                (Source::Google(chain), Scheme::Header(scheme))
            }
            CredentialSpec::Azure(azure) => {
                if let Some(var) = &azure.key_env
                    && std::env::var(var).is_ok_and(|v| !v.trim().is_empty())
                {
                    return (
                        Source::Static(StaticKey::Env {
                            var: var.clone(),
                            or_helper_env: None,
                        }),
                        Scheme::Header(HeaderScheme::new(
                            azure.key_apply.clone(),
                            Rejection::Unauthorized,
                        )),
                    );
                }
                (
                    Source::Azure(AzureChain::new(azure.clone())),
                    Scheme::Header(HeaderScheme::new(Apply::Bearer, Rejection::Unauthorized)),
                )
            }
            CredentialSpec::Acs(key) => (
                Source::Acs(Box::new(Source::from_key_spec(key))),
                Scheme::AcsHmac(AcsHmacScheme),
            ),
        }
    }
}

/// Builds one slot per configured credential, in config order.
pub fn slots(specs: &[CredentialConfig]) -> Vec<Slot> {
    specs.iter().map(Slot::new).collect()
}

/// Shortens text that goes into messages (helper commands can be long).
pub(crate) fn abbreviate(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max_chars).collect();
        format!("{cut}…")
    }
}

pub type SharedCredential = Arc<Credential>;
