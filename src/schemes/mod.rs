//! Schemes: how a credential goes onto a request, and which upstream answers mean that it
//! went bad. One file per scheme, each implementing [`Applies`]; [`Scheme`] holds one and
//! hands every call to it (adding a scheme is a variant and one arm in `Scheme::inner`).
//!
//! Both halves run in the retry loop of `proxy`: [`Scheme::apply`] right before
//! each attempt is sent (so signatures are fresh on a replay), [`Scheme::classify`] after
//! the upstream answered the first attempt and before any byte went to the client.

mod acs_hmac;
mod header;
#[cfg(feature = "aws")]
mod sigv4;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;

use crate::credentials::Credential;
pub use acs_hmac::AcsHmacScheme;
pub use header::{Apply, HeaderScheme, Rejection};
#[cfg(feature = "aws")]
pub use sigv4::SigV4Scheme;

#[derive(Debug, Clone)]
pub enum Scheme {
    /// A key or token in one header (`x-api-key`, `Authorization: Bearer`, `api-key`, ...).
    Header(HeaderScheme),
    /// AWS Signature Version 4 over method, path, query, a minimal header set and the body.
    #[cfg(feature = "aws")]
    SigV4(SigV4Scheme),
    /// Azure Communication Services HMAC-SHA256 over method, path, date, host and body hash.
    AcsHmac(AcsHmacScheme),
}

/// What to do with the upstream's answer to the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a credential problem: pass it to the client as it is.
    Deliver,
    /// The credential was rejected: invalidate it, fetch a new one, replay.
    Refresh,
    /// The signature (not the credential) was rejected, e.g. for clock skew: sign again
    /// with the same credential and replay.
    Resign,
    /// Cannot tell from status and headers alone: read up to `max_bytes` of the (error)
    /// body and ask [`Scheme::classify_body`].
    Inspect { max_bytes: usize },
}

/// The authority a signature covers: what the client library sends as `Host` (HTTP/1)
/// or `:authority` (HTTP/2) for this URI.
fn signed_host(request: &Request<Full<Bytes>>) -> Result<String, ApplyError> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| ApplyError("the upstream URI has no host".into()))
}

/// Applying a credential failed (a signer refused the input).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ApplyError(pub String);

impl Scheme {
    /// A Bedrock API key (bearer with Bedrock's classifier), for `credproxy env`.
    pub fn is_bedrock(&self) -> bool {
        matches!(self, Scheme::Header(h) if h.is_bedrock())
    }

    /// The scheme itself.
    fn inner(&self) -> &dyn Applies {
        match self {
            Scheme::Header(scheme) => scheme,
            #[cfg(feature = "aws")]
            Scheme::SigV4(scheme) => scheme,
            Scheme::AcsHmac(scheme) => scheme,
        }
    }

    /// Puts the credential on an upstream request whose client credentials are already
    /// stripped. `body` is the exact body that will be sent.
    pub fn apply(
        &self,
        request: &mut Request<Full<Bytes>>,
        body: &Bytes,
        credential: &Credential,
    ) -> Result<(), ApplyError> {
        self.inner().apply(request, body, credential)
    }

    /// Judges the response to a first attempt from its status and headers.
    pub fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        self.inner().classify(status, headers)
    }

    /// Judges a response whose first verdict was [`Verdict::Inspect`], from its whole (small) body.
    pub fn classify_body(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Verdict {
        self.inner().classify_body(status, headers, body)
    }
}

/// What every scheme does: put a credential on a request, and judge the answers.
pub trait Applies {
    fn apply(
        &self,
        request: &mut Request<Full<Bytes>>,
        body: &Bytes,
        credential: &Credential,
    ) -> Result<(), ApplyError>;

    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict;

    fn classify_body(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Verdict;
}
