//! Credentials: the values (a [`Credential`] with its [`Material`], the [`Secret`] type),
//! where they come from ([`Source`], one file per source), and the [`cache`] that every
//! request asks for a current value.
//!
//! This is the bottom of the runtime: it knows nothing of the config file, of routes or of
//! how a value goes onto a request (that is `schemes`). A source is asked for a
//! value only by the cache: on first use, when the value is due for renewal (in the
//! background), and after an upstream said the value went bad.

pub mod acs;
#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
pub mod cache;
#[cfg(feature = "google")]
pub mod google;
pub mod helper;
pub mod jwt_expiry;
pub mod keychain;
mod secret;
pub mod static_key;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::HeaderValue;

pub use acs::AcsKey;
#[cfg(feature = "aws")]
pub use aws::{AwsChain, AwsMaterial};
#[cfg(feature = "azure")]
pub use azure::AzureChain;
pub use cache::Cached;
#[cfg(feature = "google")]
pub use google::GoogleChain;
pub use helper::Helper;
pub use keychain::{Keychain, KeychainItem};
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
    #[cfg(feature = "aws")]
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

impl Material {
    /// The secret texts this value holds, to scrub them from diagnostics that a failing
    /// source printed later (a helper that echoes its key to stderr).
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            Material::Token(token) => vec![token.secret().expose()],
            #[cfg(feature = "aws")]
            Material::Aws(aws) => {
                let mut secrets = vec![aws.credentials.secret_access_key()];
                secrets.extend(aws.credentials.session_token());
                secrets
            }
            Material::AcsKey(_) => Vec::new(),
        }
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
    /// Our own time-to-live (a helper's output, a re-read file): renewed once it is over,
    /// never before, so a helper runs at most once per `ttl` (plus once per rejection).
    Ttl(Duration),
    /// The issuer's expiry: the cache renews ahead of it and stops using the value a
    /// little before it, to absorb clock skew.
    IssuerExpiry(SystemTime),
    /// A JWT's own `exp`, and when to stop sending it (`exp` less a margin; see
    /// [`jwt_expiry`]): renewed ahead of `stop_at` like an issuer expiry.
    Until {
        expires_at: SystemTime,
        stop_at: SystemTime,
    },
}

/// Why a source could not produce a credential. The kind drives behaviour; the message and
/// its causes are for people (clients see them in the 502) and never contain a secret; the
/// diagnostic (what a helper printed) goes to credproxy's log only.
#[derive(Debug, Clone)]
pub struct SourceError {
    pub kind: FailureKind,
    message: String,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
    diagnostic: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Nothing is set up for this credential (a variable unset, a file missing).
    NotConfigured,
    /// It may work on the next try (a helper timed out, an endpoint was down).
    Transient,
    /// It will not work until someone changes something (bad output, rejected config).
    Unrecoverable,
    /// It will not work until the person signs in again (`credproxy login NAME`): a
    /// login's refresh token is dead. Clients get 401 with that hint, not 502.
    LoginRequired,
}

impl SourceError {
    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        SourceError {
            kind,
            message: message.into(),
            cause: None,
            diagnostic: None,
        }
    }

    pub fn not_configured(message: impl Into<String>) -> Self {
        Self::new(FailureKind::NotConfigured, message)
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Transient, message)
    }

    pub fn unrecoverable(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Unrecoverable, message)
    }

    pub fn login_required(message: impl Into<String>) -> Self {
        Self::new(FailureKind::LoginRequired, message)
    }

    /// The library error behind this one; its text is shown after the message.
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// Text for credproxy's own log only (never a response): what a helper printed.
    pub fn with_diagnostic(mut self, diagnostic: impl Into<String>) -> Self {
        self.diagnostic = Some(diagnostic.into());
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn diagnostic(&self) -> Option<&str> {
        self.diagnostic.as_deref()
    }

    /// Removes every occurrence of `secrets` from the diagnostic.
    pub fn scrub(&mut self, secrets: &[&str]) {
        if let Some(text) = &mut self.diagnostic {
            for secret in secrets.iter().filter(|s| s.len() >= 4) {
                if text.contains(secret) {
                    *text = text.replace(secret, Secret::REDACTED);
                }
            }
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(cause) = &self.cause {
            write!(f, ": {}", crate::failure::chain(cause.as_ref()))?;
        }
        Ok(())
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// A configured way of producing a credential; one variant per source file.
#[derive(Debug)]
pub enum Source {
    Static(StaticKey),
    Helper(Helper),
    Keychain(Keychain),
    /// Boxed: the loaded chain is large and there is one per credential, not per request.
    #[cfg(feature = "aws")]
    Aws(Box<AwsChain>),
    #[cfg(feature = "google")]
    Google(GoogleChain),
    #[cfg(feature = "azure")]
    Azure(AzureChain),
    /// A key source whose output is an ACS connection string or access key.
    Acs(Box<Source>),
    /// A source that works above this layer (an OpenID login needs the upstream client),
    /// bound once the process has its clients.
    Bound(Bound),
    /// Configured, but what it needs is not set; answers with what to set.
    Unavailable(String),
}

impl Source {
    /// A fresh value; a JWT among them is bounded by its own `exp` (see [`jwt_expiry`]).
    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let fetched = self.fetch_unbounded().await?;
        jwt_expiry::bound(fetched, &self.describe())
    }

    async fn fetch_unbounded(&self) -> Result<Fetched, SourceError> {
        match self {
            Source::Static(source) => source.fetch().await,
            Source::Helper(source) => source.fetch().await,
            Source::Keychain(source) => source.fetch().await,
            #[cfg(feature = "aws")]
            Source::Aws(source) => source.fetch().await,
            #[cfg(feature = "google")]
            Source::Google(source) => source.fetch().await,
            #[cfg(feature = "azure")]
            Source::Azure(source) => source.fetch().await,
            Source::Acs(inner) => Box::pin(inner.fetch()).await.and_then(acs::from_key),
            Source::Bound(bound) => bound.fetch().await,
            Source::Unavailable(why) => Err(SourceError::not_configured(why.clone())),
        }
    }

    /// Where the value comes from, for `credproxy check`, logs and error messages. Never
    /// more than a helper's program name: its arguments may hold a secret.
    pub fn describe(&self) -> String {
        match self {
            Source::Static(source) => source.describe(),
            Source::Helper(source) => source.describe(),
            Source::Keychain(source) => source.describe(),
            #[cfg(feature = "aws")]
            Source::Aws(source) => source.describe(),
            #[cfg(feature = "google")]
            Source::Google(source) => source.describe(),
            #[cfg(feature = "azure")]
            Source::Azure(source) => source.describe(),
            Source::Acs(inner) => inner.describe(),
            Source::Bound(bound) => bound.describe.clone(),
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

    /// Values that never change until rejected (env, literal) are ready without a fetch
    /// worth waiting for.
    pub fn is_static(&self) -> bool {
        match self {
            Source::Static(StaticKey::Env { .. } | StaticKey::Literal(_)) => true,
            Source::Acs(inner) => inner.is_static(),
            _ => false,
        }
    }
}

pub type SharedCredential = Arc<Credential>;

/// A boxed future, for [`Provide`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A source implemented above this layer because it needs what only the layers above
/// have (the upstream HTTP client, the JWT validation of `callers`).
pub trait Provide: Send + Sync + std::fmt::Debug {
    /// A fresh value, as [`Source::fetch`].
    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>>;
}

/// A [`Source::Bound`]: what it is, for messages, and its provider once bound.
#[derive(Debug)]
pub struct Bound {
    describe: String,
    provider: OnceLock<Arc<dyn Provide>>,
}

impl Bound {
    pub fn new(describe: String) -> Self {
        Bound {
            describe,
            provider: OnceLock::new(),
        }
    }

    /// Binds the provider; a second binding (a reload keeping the credential) is ignored.
    pub fn bind(&self, provider: Arc<dyn Provide>) {
        let _ = self.provider.set(provider);
    }

    async fn fetch(&self) -> Result<Fetched, SourceError> {
        match self.provider.get() {
            Some(provider) => provider.fetch().await,
            None => Err(SourceError::transient(format!(
                "{} is not ready yet (the upstream client is still being built)",
                self.describe
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_shown_and_a_diagnostic_is_not() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = SourceError::transient("metadata server")
            .caused_by(io)
            .with_diagnostic("helper said sk-secret-1234 on stderr");
        assert_eq!(error.to_string(), "metadata server: refused");
        let mut scrubbed = error.clone();
        scrubbed.scrub(&["sk-secret-1234"]);
        assert_eq!(
            scrubbed.diagnostic(),
            Some("helper said ** redacted ** on stderr")
        );
        assert!(std::error::Error::source(&error).is_some());
    }
}
