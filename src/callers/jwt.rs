//! Checking a JWT from the company's identity provider: the algorithm (asymmetric only),
//! the signature (a key from the provider's set), `iss`, `aud`, `exp`/`nbf`/`iat` with the
//! configured clock skew. A token that passed is remembered by its SHA-256 until its `exp`,
//! so a steady caller costs a hash and a lookup, not a signature check.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{KeyError, KeyStore};
use super::{Caller, CallerError, Identity};
use crate::config::JwtConfig;

/// Validated tokens remembered at most; beyond it the least used are dropped.
const CACHE_ENTRIES: u64 = 100_000;

/// The algorithms accepted: public-key signatures only.
const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Debug)]
pub struct JwtVerifier {
    config: JwtConfig,
    keys: Arc<KeyStore>,
    cache: moka::future::Cache<[u8; 32], Arc<Caller>>,
}

/// Each remembered token lives until its own `exp`.
struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<Caller>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        caller: &Arc<Caller>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let expires = caller.expires_at?;
        Some(
            expires
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }
}

impl JwtVerifier {
    pub fn new(config: JwtConfig, keys: KeyStore) -> Self {
        JwtVerifier {
            config,
            keys: Arc::new(keys),
            cache: moka::future::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .expire_after(UntilExpiry)
                .build(),
        }
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// A token already validated (and not expired) costs one lookup.
    pub async fn verify(&self, token: &str, hash: [u8; 32]) -> Result<Arc<Caller>, CallerError> {
        if let Some(caller) = self.cache.get(&hash).await
            && caller.expires_at.is_some_and(|t| SystemTime::now() < t)
        {
            return Ok(caller);
        }
        let caller = Arc::new(self.verify_uncached(token).await?);
        self.cache.insert(hash, Arc::clone(&caller)).await;
        Ok(caller)
    }

    /// The full check, every time (what a new token costs).
    pub async fn verify_uncached(&self, token: &str) -> Result<Caller, CallerError> {
        let claims = self.verified_claims(token).await?;
        self.caller(&claims)
    }

    /// The token's claims once its algorithm, signature, `iss`, `aud`, `exp`, `nbf` and
    /// `iat` passed: for checks of the caller's own (an ID token's `nonce` at login).
    pub async fn verified_claims(&self, token: &str) -> Result<Map<String, Value>, CallerError> {
        let (algorithm, kid) = header(token)?;
        let key = self
            .keys
            .find(kid.as_deref())
            .await
            .map_err(|error| match error {
                KeyError::Unknown => CallerError::UnknownKey {
                    kid: kid.as_deref().map(printable),
                },
                KeyError::Unavailable(reason) => CallerError::KeysUnavailable(reason),
            })?;
        if key.family != algorithm.family() || key.algorithm.is_some_and(|a| a != algorithm) {
            return Err(CallerError::AlgorithmRefused(format!(
                "the token says {algorithm:?} but its key is for another algorithm"
            )));
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.config.clock_skew.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
                Ok(data) => data,
                Err(e) if *e.kind() == ErrorKind::ExpiredSignature => {
                    // Signed by the issuer, only old: whose it was is known, for the record.
                    validation.validate_exp = false;
                    let subject = jsonwebtoken::decode::<Map<String, Value>>(
                        token,
                        &key.decoding,
                        &validation,
                    )
                    .ok()
                    .and_then(|data| self.caller(&data.claims).ok())
                    .map(|caller| caller.usage_name());
                    return Err(CallerError::Expired { subject });
                }
                Err(e) => return Err(self.rejection(e.kind())),
            };
        let claims = data.claims;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if let Some(iat) = claims.get("iat").and_then(Value::as_u64)
            && iat > now + self.config.clock_skew.as_secs()
        {
            return Err(CallerError::IssuedInFuture);
        }
        Ok(claims)
    }

    /// Who the verified claims name: subject, email, groups and expiry.
    pub fn caller(&self, claims: &Map<String, Value>) -> Result<Caller, CallerError> {
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|exp| UNIX_EPOCH + Duration::from_secs(exp));
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(printable)
            .ok_or_else(|| CallerError::MissingClaim("sub".to_string()))?;
        let email = claim(claims, &self.config.email_claim)
            .and_then(Value::as_str)
            .map(str::to_string);
        // Only the boolean `true` verifies an address (OpenID Connect Core §5.1): a string
        // "true" is some other provider's convention or a forger's, and counts as false.
        let email_verified = claims
            .get("email_verified")
            .map(|v| matches!(v, Value::Bool(true)));
        let groups = match claim(claims, &self.config.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(Caller::new(
            Identity::Person {
                subject,
                email,
                email_verified,
            },
            groups,
            expires_at,
        ))
    }

    fn rejection(&self, kind: &ErrorKind) -> CallerError {
        match kind {
            ErrorKind::ExpiredSignature => CallerError::Expired { subject: None },
            ErrorKind::ImmatureSignature => CallerError::NotYetValid,
            ErrorKind::InvalidIssuer => CallerError::WrongIssuer {
                expected: self.config.issuer.clone(),
            },
            ErrorKind::InvalidAudience => CallerError::WrongAudience {
                expected: self.config.audiences.join(", "),
            },
            ErrorKind::InvalidSignature => CallerError::BadSignature,
            ErrorKind::MissingRequiredClaim(claim) => CallerError::MissingClaim(claim.clone()),
            ErrorKind::InvalidAlgorithm => CallerError::AlgorithmRefused(
                "the token's algorithm does not match its key".to_string(),
            ),
            ErrorKind::InvalidKeyFormat => CallerError::AlgorithmRefused(
                "the identity provider's key cannot check this token".to_string(),
            ),
            other => CallerError::Malformed(format!("{other:?}")),
        }
    }
}

/// A claim by exact name, else by a dotted path into nested objects (Keycloak's
/// `realm_access.roles`); exact first because namespaced claims are URLs with dots.
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// The token's algorithm (one of [`ACCEPTED`]) and key id, read before any key is looked
/// at, so that `none` and shared-secret algorithms are refused by name.
fn header(token: &str) -> Result<(Algorithm, Option<String>), CallerError> {
    let mut segments = token.split('.');
    let (Some(head), Some(_), Some(_), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(CallerError::Malformed(
            "it is not a JWT (three base64url parts separated by dots)".to_string(),
        ));
    };
    let head: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| CallerError::Malformed("its header is not base64url JSON".to_string()))?;
    let alg = head.get("alg").and_then(Value::as_str).unwrap_or("");
    let algorithm = match alg.parse::<Algorithm>() {
        Ok(algorithm) if ACCEPTED.contains(&algorithm) => algorithm,
        Ok(algorithm) if algorithm.family() == jsonwebtoken::AlgorithmFamily::Hmac => {
            return Err(CallerError::AlgorithmRefused(format!(
                "{alg} is a shared-secret algorithm; only the identity provider's public-key signatures are accepted"
            )));
        }
        Ok(_) => {
            return Err(CallerError::AlgorithmRefused(format!(
                "{alg} is not an accepted algorithm"
            )));
        }
        Err(_) if alg.eq_ignore_ascii_case("none") => {
            return Err(CallerError::AlgorithmRefused(
                "unsigned tokens (alg none) are refused".to_string(),
            ));
        }
        Err(_) => {
            return Err(CallerError::AlgorithmRefused(format!(
                "`{}` is not an accepted algorithm",
                printable(alg)
            )));
        }
    };
    let kid = head.get("kid").and_then(Value::as_str).map(str::to_string);
    Ok((algorithm, kid))
}

/// Text from a token's header, fit to put in an answer: short and printable.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    #[test]
    fn none_and_shared_secret_algorithms_are_refused_by_name() {
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        let error = header(&none).unwrap_err().to_string();
        assert!(error.contains("unsigned"), "{error}");
        let hs = format!("{}.{}.sig", b64(r#"{"alg":"HS256","kid":"k"}"#), b64("{}"));
        let error = header(&hs).unwrap_err().to_string();
        assert!(error.contains("shared-secret"), "{error}");
        let ok = format!("{}.{}.sig", b64(r#"{"alg":"ES256","kid":"k"}"#), b64("{}"));
        assert_eq!(
            header(&ok).unwrap(),
            (Algorithm::ES256, Some("k".to_string()))
        );
        assert!(header("not-a-jwt").is_err());
        assert!(header("a.b.c.d").is_err());
    }

    #[test]
    fn claims_are_found_by_name_then_by_path() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"https://example.com/groups":["a"],"realm_access":{"roles":["r"]}}"#,
        )
        .unwrap();
        assert_eq!(
            claim(&claims, "https://example.com/groups"),
            Some(&serde_json::json!(["a"]))
        );
        assert_eq!(
            claim(&claims, "realm_access.roles"),
            Some(&serde_json::json!(["r"]))
        );
        assert_eq!(claim(&claims, "groups"), None);
    }
}
