//! Who is calling: with `[callers]` configured, every request on a proxy listener carries a
//! caller token, and credproxy knows who spends its credentials before anything is routed.
//!
//! - The token is taken from the configured `header` if any, else `Authorization: Bearer`,
//!   else `x-api-key` — what Claude Code sends from `ANTHROPIC_AUTH_TOKEN`, `apiKeyHelper`
//!   or `ANTHROPIC_API_KEY` (docs/research/claude-code-headers.md). The proxy strips all of
//!   them before the request goes upstream.
//! - A static token is recognised by its SHA-256 (the config never holds the token); any
//!   other token must be a JWT from the configured issuer ([`jwt`], keys from [`jwks`]).
//! - Admission: `email_domains` (people only) and a route's `groups`.
//!
//! Nothing is stored per user: identity comes from the token on each request.

pub mod jwks;
pub mod jwt;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{AUTHORIZATION, HeaderMap};
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::client::UpstreamClient;
use crate::config::{CallersConfig, KeysFrom};
use jwks::{KeySource, KeyStore};
use jwt::JwtVerifier;

/// The SHA-256 of a caller token: how static tokens are written in the config and how
/// validated JWTs are remembered.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who a caller is, as far as credproxy needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A person, from a JWT.
    Person {
        subject: String,
        email: Option<String>,
        email_verified: Option<bool>,
    },
    /// A robot, by the name of its static token.
    Robot { name: String },
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Caller {
    pub identity: Identity,
    pub groups: Vec<String>,
    /// When the token stops being valid (`None`: a static token).
    pub expires_at: Option<SystemTime>,
    /// What the access log shows: `sub` and email, or `token:NAME`. Never the token.
    pub label: Arc<str>,
}

impl Caller {
    /// The caller as usage records and quotas name it: a person's email (else subject),
    /// `token:NAME` for a static token.
    pub fn usage_name(&self) -> String {
        match &self.identity {
            Identity::Person {
                email: Some(email), ..
            } => email.clone(),
            Identity::Person { subject, .. } => subject.clone(),
            Identity::Robot { name } => format!("token:{name}"),
        }
    }

    pub fn new(identity: Identity, groups: Vec<String>, expires_at: Option<SystemTime>) -> Self {
        let label: Arc<str> = match &identity {
            Identity::Person {
                subject,
                email: Some(email),
                ..
            } => format!("{subject} <{email}>").into(),
            Identity::Person { subject, .. } => subject.as_str().into(),
            Identity::Robot { name } => format!("token:{name}").into(),
        };
        Caller {
            identity,
            groups,
            expires_at,
            label,
        }
    }
}

/// Why a request carries no valid caller credential (401, or 503 when the keys to check
/// it cannot be had). The messages never hold the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    #[error(
        "no caller token: send it as `Authorization: Bearer TOKEN`{also} (with Claude Code: ANTHROPIC_AUTH_TOKEN or apiKeyHelper)"
    )]
    Missing { also: String },
    #[error(
        "the Authorization header holds {what}, not a caller token; send `Authorization: Bearer TOKEN`{hint}"
    )]
    NotBearer { what: String, hint: &'static str },
    #[error("the caller token is not one of the configured caller tokens")]
    UnknownToken,
    #[error("the caller token is not valid: {0}")]
    Malformed(String),
    #[error("the caller token is refused: {0}")]
    AlgorithmRefused(String),
    #[error("the caller token is signed with a key the identity provider does not list{}", .kid.as_ref().map(|k| format!(" (kid `{k}`)")).unwrap_or_default())]
    UnknownKey { kid: Option<String> },
    #[error("the caller token's signature does not verify")]
    BadSignature,
    #[error("the caller token has expired; get a new one from the identity provider")]
    Expired {
        /// Whom the validly signed token names (email, else subject): usage records
        /// attribute the refusal to them. Never shown in the answer.
        subject: Option<String>,
    },
    #[error("the caller token is not valid yet (`nbf` is in the future; check the clocks)")]
    NotYetValid,
    #[error("the caller token was issued in the future (`iat`; check the clocks)")]
    IssuedInFuture,
    #[error("the caller token was issued by another issuer than `{expected}`")]
    WrongIssuer { expected: String },
    #[error("the caller token is meant for another audience than {expected}")]
    WrongAudience { expected: String },
    #[error("the caller token has no `{0}` claim")]
    MissingClaim(String),
    #[error("caller tokens cannot be checked now: {0}")]
    KeysUnavailable(String),
}

impl CallerError {
    /// A bounded name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CallerError::Missing { .. } => "missing",
            CallerError::NotBearer { .. } => "not_bearer",
            CallerError::UnknownToken => "unknown_token",
            CallerError::Malformed(_) => "malformed",
            CallerError::AlgorithmRefused(_) => "algorithm",
            CallerError::UnknownKey { .. } => "unknown_key",
            CallerError::BadSignature => "signature",
            CallerError::Expired { .. } => "expired",
            CallerError::NotYetValid | CallerError::IssuedInFuture => "not_yet_valid",
            CallerError::WrongIssuer { .. } => "issuer",
            CallerError::WrongAudience { .. } => "audience",
            CallerError::MissingClaim(_) => "missing_claim",
            CallerError::KeysUnavailable(_) => "keys_unavailable",
        }
    }

    /// Worth retrying: Claude Code runs its `apiKeyHelper` again after a 401, which helps
    /// when the token merely aged; a key unknown during a rotation or keys that could not
    /// be fetched may be there on the next try. Every other refusal answers with
    /// `x-should-retry: false` so clients do not retry the same token for minutes.
    pub fn fresh_token_helps(&self) -> bool {
        matches!(
            self,
            CallerError::Expired { .. }
                | CallerError::KeysUnavailable(_)
                | CallerError::UnknownKey { .. }
        )
    }
}

/// Why an authenticated caller may not do this (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("caller {caller} may not use {place}: {rule}")]
pub struct Refusal {
    /// `domain` or `group`, for metrics.
    pub reason: &'static str,
    pub caller: String,
    pub place: String,
    pub rule: String,
    /// Whom usage records attribute the refusal to (boxed: errors travel by value).
    pub who: Box<Refused>,
}

/// A refused caller as usage records name it ([`Caller::usage_name`]), with its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub usage_name: String,
    pub groups: Vec<String>,
}

impl Refused {
    fn of(caller: &Caller) -> Box<Refused> {
        Box::new(Refused {
            usage_name: caller.usage_name(),
            groups: caller.groups.clone(),
        })
    }
}

/// The token of a `Bearer TOKEN` value (the scheme is case-insensitive, RFC 6750).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The `[callers]` table, ready to check requests.
#[derive(Debug)]
pub struct Callers {
    header: Option<HeaderName>,
    tokens: HashMap<[u8; 32], Arc<Caller>>,
    jwt: Option<JwtVerifier>,
}

impl Callers {
    pub fn new(config: &CallersConfig, jwks_file: Option<PathBuf>, client: UpstreamClient) -> Self {
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                let caller = Caller::new(
                    Identity::Robot {
                        name: t.name.clone(),
                    },
                    t.groups.clone(),
                    None,
                );
                (t.sha256, Arc::new(caller))
            })
            .collect();
        let jwt = config.jwt.as_ref().map(|jwt| {
            let source = match (&jwt.keys, jwks_file) {
                (KeysFrom::File(_), Some(path)) => KeySource::File(path),
                (KeysFrom::File(path), None) => KeySource::File(path.as_written().to_path_buf()),
                (KeysFrom::Url(url), _) => KeySource::Url(url.clone()),
                (KeysFrom::Discovery, _) => KeySource::Discovery {
                    issuer: jwt.issuer.clone(),
                },
            };
            let keys = KeyStore::new(source, client, jwt.jwks_max_age, jwt.jwks_refetch_interval);
            JwtVerifier::new(jwt.clone(), keys)
        });
        Callers {
            header: config.header.clone(),
            tokens,
            jwt,
        }
    }

    /// Fetches the identity provider's keys now: `None` without JWT callers, else the
    /// issuer and the number of usable keys or why there are none.
    pub async fn prefetch_keys(&self) -> Option<(String, Result<usize, String>)> {
        let jwt = self.jwt.as_ref()?;
        Some((jwt.config().issuer.clone(), jwt.keys().prefetch().await))
    }

    /// `None` when callers can be admitted: static tokens only, or the identity
    /// provider's key set is held; else the issuer and why JWTs cannot be checked yet.
    pub fn keys_missing(&self) -> Option<(String, String)> {
        let jwt = self.jwt.as_ref()?;
        let reason = jwt.keys().missing()?;
        Some((jwt.config().issuer.clone(), reason))
    }

    /// The caller a request's headers prove, or why they prove none.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Caller>, CallerError> {
        let token = self.token(headers)?;
        let hash = token_sha256(token);
        if let Some(caller) = self.tokens.get(&hash) {
            return Ok(Arc::clone(caller));
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(token, hash).await,
            None => Err(CallerError::UnknownToken),
        }
    }

    /// The full check of a JWT, bypassing the cache of validated tokens: what a new token
    /// costs (the benchmark measures it). Not used on requests.
    #[doc(hidden)]
    pub async fn authenticate_uncached(&self, headers: &HeaderMap) -> Result<Caller, CallerError> {
        let token = self.token(headers)?;
        match &self.jwt {
            Some(jwt) => jwt.verify_uncached(token).await,
            None => Err(CallerError::UnknownToken),
        }
    }

    /// The token: the configured header (bare or `Bearer TOKEN`), else
    /// `Authorization: Bearer`, else `x-api-key`.
    fn token<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, CallerError> {
        let text = |value: &'h HeaderValue| value.to_str().ok().map(str::trim);
        if let Some(name) = &self.header
            && let Some(value) = headers.get(name).and_then(text)
        {
            let token = bearer(value).unwrap_or(value);
            if !token.is_empty() {
                return Ok(token);
            }
        }
        let mut not_bearer = None;
        if let Some(value) = headers.get(AUTHORIZATION).and_then(text) {
            match bearer(value) {
                Some(token) if !token.is_empty() => return Ok(token),
                Some(_) => {
                    return Err(CallerError::Malformed(
                        "`Authorization: Bearer` carries no token".to_string(),
                    ));
                }
                None => not_bearer = value.split(' ').next(),
            }
        }
        if let Some(value) = headers.get("x-api-key").and_then(text)
            && !value.is_empty()
        {
            return Ok(value);
        }
        match not_bearer {
            Some(scheme) if scheme.starts_with("AWS4-") => Err(CallerError::NotBearer {
                what: "an AWS signature".to_string(),
                hint: " (with Claude Code on Bedrock: CLAUDE_CODE_SKIP_BEDROCK_AUTH=1 and ANTHROPIC_AUTH_TOKEN)",
            }),
            Some(scheme) => Err(CallerError::NotBearer {
                what: format!(
                    "the `{}` scheme",
                    scheme
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(20)
                        .collect::<String>()
                ),
                hint: "",
            }),
            None => Err(CallerError::Missing {
                also: match &self.header {
                    Some(name) => format!(", `x-api-key: TOKEN` or `{name}: TOKEN`"),
                    None => " or `x-api-key: TOKEN`".to_string(),
                },
            }),
        }
    }

    /// `email_domains`: a person is admitted only with a verified address in one of them.
    /// Robots have no address and are not subject to it.
    pub fn admit(&self, caller: &Caller) -> Result<(), Refusal> {
        let Some(jwt) = &self.jwt else {
            return Ok(());
        };
        let domains = &jwt.config().email_domains;
        let Identity::Person {
            email,
            email_verified,
            ..
        } = &caller.identity
        else {
            return Ok(());
        };
        if domains.is_empty() {
            return Ok(());
        }
        let refuse = |rule: String| Refusal {
            reason: "domain",
            caller: caller.label.to_string(),
            who: Refused::of(caller),
            place: "this gateway".to_string(),
            rule,
        };
        let claim = &jwt.config().email_claim;
        let Some(email) = email else {
            return Err(refuse(format!(
                "the token has no `{claim}` claim, and `email_domains` admits only addresses at {}",
                domains.join(", ")
            )));
        };
        let verified = match email_verified {
            Some(verified) => *verified,
            None => !jwt.config().require_email_verified,
        };
        if !verified {
            return Err(refuse(
                "the address is not verified (`email_verified` is not true); `email_domains` admits only verified addresses (set `require_email_verified = false` for a provider that does not send the claim)"
                    .to_string(),
            ));
        }
        let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return Err(refuse(format!(
                "`email_domains` admits only addresses at {}",
                domains.join(", ")
            )));
        }
        Ok(())
    }

    /// A route's `groups`: the caller must be in one of them.
    pub fn admit_route(
        &self,
        caller: &Caller,
        route: &str,
        groups: Option<&[String]>,
    ) -> Result<(), Refusal> {
        let Some(groups) = groups else {
            return Ok(());
        };
        if caller.groups.iter().any(|g| groups.contains(g)) {
            return Ok(());
        }
        Err(Refusal {
            reason: "group",
            caller: caller.label.to_string(),
            who: Refused::of(caller),
            place: format!("route `{route}`"),
            rule: format!(
                "the route admits only members of {}, and the caller is in none of them",
                groups.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticToken;

    fn callers(header: Option<&str>) -> Callers {
        let config = CallersConfig {
            jwt: None,
            tokens: vec![StaticToken {
                name: "ci".to_string(),
                sha256: token_sha256("robot-secret"),
                groups: vec!["ci".to_string()],
            }],
            header: header.map(|h| h.parse().unwrap()),
        };
        let client = crate::client::with_settings(&crate::client::Settings {
            connect_timeout: std::time::Duration::from_secs(1),
            ..Default::default()
        })
        .unwrap();
        Callers::new(&config, None, client)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[tokio::test]
    async fn the_token_comes_from_the_header_then_bearer_then_x_api_key() {
        let c = callers(Some("x-gateway-token"));
        for pairs in [
            &[("authorization", "Bearer robot-secret")][..],
            &[("x-api-key", "robot-secret")],
            &[
                ("x-gateway-token", "robot-secret"),
                ("authorization", "Bearer other"),
            ],
            &[
                ("authorization", "Basic abc"),
                ("x-api-key", "robot-secret"),
            ],
        ] {
            let caller = c.authenticate(&headers(pairs)).await.unwrap();
            assert_eq!(&*caller.label, "token:ci", "{pairs:?}");
        }
        let error = c
            .authenticate(&headers(&[("authorization", "Bearer other")]))
            .await
            .unwrap_err();
        assert_eq!(error, CallerError::UnknownToken);
        let error = c.authenticate(&headers(&[])).await.unwrap_err();
        assert!(error.to_string().contains("x-gateway-token"), "{error}");
        let error = c
            .authenticate(&headers(&[(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=x",
            )]))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("SKIP_BEDROCK_AUTH"), "{error}");
    }

    #[tokio::test]
    async fn groups_decide_which_routes_a_caller_uses() {
        let c = callers(None);
        let caller = c
            .authenticate(&headers(&[("x-api-key", "robot-secret")]))
            .await
            .unwrap();
        assert!(c.admit_route(&caller, "/a", None).is_ok());
        assert!(
            c.admit_route(&caller, "/a", Some(&["ci".to_string()]))
                .is_ok()
        );
        let refusal = c
            .admit_route(&caller, "/b", Some(&["eng".to_string()]))
            .unwrap_err()
            .to_string();
        assert!(
            refusal.contains("route `/b`") && refusal.contains("eng"),
            "{refusal}"
        );
        assert!(c.admit(&caller).is_ok(), "robots have no address to check");
    }
}
