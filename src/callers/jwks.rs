//! The identity provider's signing keys (a JWKS): fetched through credproxy's own upstream
//! client (the same roots, `ca_file` included), kept for the answer's `Cache-Control:
//! max-age` or `jwks_max_age`, fetched again when a token names a key the set lacks (at
//! most once per `jwks_refetch_interval`: rotation works, garbage `kid`s cannot hammer the
//! provider), and served last-good when the provider is down.
//!
//! One value per process, so an `ArcSwapOption` with a single-flight mutex rather than a
//! cache keyed by anything: moka would evict the expired set, and last-good needs it kept.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::Request;
use http::uri::Uri;
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::sync::Mutex;

use crate::client::UpstreamClient;

/// A fetch (discovery document or key set) that takes longer than this fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger answers are not key sets.
const MAX_BYTES: usize = 1024 * 1024;
/// Bounds on a `Cache-Control: max-age`.
const MIN_AGE: Duration = Duration::from_secs(60);
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Where the key set is read from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `{issuer}/.well-known/openid-configuration` names the key set's URL.
    Discovery {
        issuer: String,
    },
    Url(Uri),
    File(PathBuf),
}

/// One public key, ready to verify with.
pub struct Key {
    pub decoding: DecodingKey,
    /// The `alg` the key set pins this key to, if any.
    pub algorithm: Option<Algorithm>,
    pub family: AlgorithmFamily,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("algorithm", &self.algorithm)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid`: usable only by tokens without one, and only when alone.
    unnamed: Vec<Arc<Key>>,
    fresh_until: Instant,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None if self.by_kid.len() + self.unnamed.len() == 1 => self
                .unnamed
                .first()
                .or_else(|| self.by_kid.values().next())
                .cloned(),
            None => None,
        }
    }
}

#[derive(Debug, Default)]
struct RefreshState {
    /// From discovery, kept until a key-set fetch fails.
    jwks_uri: Option<Uri>,
    /// The last fetch made because a token named an unknown key.
    last_unknown_kid_fetch: Option<Instant>,
    /// After a failed fetch, none before this (requests keep the last-good set meanwhile).
    quiet_until: Option<Instant>,
    last_error: Option<String>,
}

/// Why a key could not be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The set (fetched now) has no key of that id.
    Unknown,
    /// No key set has ever been fetched; the reason.
    Unavailable(String),
}

#[derive(Debug)]
pub struct KeyStore {
    source: KeySource,
    client: UpstreamClient,
    max_age: Duration,
    refetch_interval: Duration,
    current: ArcSwapOption<KeySet>,
    refresh: Mutex<RefreshState>,
}

impl KeyStore {
    pub fn new(
        source: KeySource,
        client: UpstreamClient,
        max_age: Duration,
        refetch_interval: Duration,
    ) -> Self {
        KeyStore {
            source,
            client,
            max_age,
            refetch_interval,
            current: ArcSwapOption::empty(),
            refresh: Mutex::new(RefreshState::default()),
        }
    }

    /// Fetches the set now unless a fresh one is held: the number of usable keys, or why
    /// there are none (`credproxy check`, and the warm-up at start).
    pub async fn prefetch(&self) -> Result<usize, String> {
        let current = self.current.load_full();
        match self.refresh(current.as_ref(), false).await {
            Ok(Some(set)) => Ok(set.by_kid.len() + set.unnamed.len()),
            Ok(None) => Err("no key set".to_string()),
            Err(KeyError::Unavailable(reason)) => Err(reason),
            Err(KeyError::Unknown) => Err("no key set".to_string()),
        }
    }

    /// The key a token names. Lock-free while the set is fresh and holds the key.
    pub async fn find(&self, kid: Option<&str>) -> Result<Arc<Key>, KeyError> {
        let mut set = self.current.load_full();
        if set.as_ref().is_none_or(|s| Instant::now() >= s.fresh_until) {
            set = self.refresh(set.as_ref(), false).await?;
        }
        let seen = set.expect("refresh returns a set or an error");
        if let Some(key) = seen.find(kid) {
            return Ok(key);
        }
        let set = self.refresh(Some(&seen), true).await?.expect("a set");
        set.find(kid).ok_or(KeyError::Unknown)
    }

    /// Fetches the set again unless another task just did, or the provider failed
    /// recently, or (for an unknown key) one such fetch happened within the interval.
    /// Returns the set to use: new, or the last good one.
    async fn refresh(
        &self,
        seen: Option<&Arc<KeySet>>,
        unknown_kid: bool,
    ) -> Result<Option<Arc<KeySet>>, KeyError> {
        let mut state = self.refresh.lock().await;
        let current = self.current.load_full();
        let now = Instant::now();
        let replaced = match (seen, &current) {
            (Some(seen), Some(current)) => !Arc::ptr_eq(seen, current),
            (None, Some(_)) => true,
            _ => false,
        };
        let fresh = current.as_ref().is_some_and(|s| now < s.fresh_until);
        let quiet = state.quiet_until.is_some_and(|t| now < t);
        let rate_limited = unknown_kid
            && state
                .last_unknown_kid_fetch
                .is_some_and(|t| now < t + self.refetch_interval);
        let skip = replaced || quiet || rate_limited || (!unknown_kid && fresh);
        if !skip {
            if unknown_kid {
                state.last_unknown_kid_fetch = Some(now);
            }
            match self.fetch(&mut state).await {
                Ok(set) => {
                    tracing::debug!(target: "credproxy::callers", keys = set.by_kid.len() + set.unnamed.len(),
                        "fetched the identity provider's signing keys");
                    let set = Arc::new(set);
                    self.current.store(Some(Arc::clone(&set)));
                    state.quiet_until = None;
                    state.last_error = None;
                    return Ok(Some(set));
                }
                Err(error) => {
                    tracing::warn!(target: "credproxy::callers", %error, serving_last_good = current.is_some(),
                        "cannot fetch the identity provider's signing keys");
                    state.jwks_uri = None;
                    state.quiet_until = Some(now + self.refetch_interval);
                    state.last_error = Some(error);
                }
            }
        }
        match current {
            Some(set) => Ok(Some(set)),
            None => Err(KeyError::Unavailable(
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the signing keys have not been fetched yet".to_string()),
            )),
        }
    }

    async fn fetch(&self, state: &mut RefreshState) -> Result<KeySet, String> {
        let (bytes, max_age) = match &self.source {
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read jwks_file {}: {e}", path.display()))?;
                (Bytes::from(bytes), None)
            }
            KeySource::Url(url) => self.get(url).await?,
            KeySource::Discovery { issuer } => {
                let url = match &state.jwks_uri {
                    Some(url) => url.clone(),
                    None => {
                        let url = self.discover(issuer).await?;
                        state.jwks_uri = Some(url.clone());
                        url
                    }
                };
                self.get(&url).await?
            }
        };
        let max_age = max_age.unwrap_or(self.max_age);
        parse(&bytes, Instant::now() + max_age)
    }

    /// Reads the discovery document and returns its `jwks_uri`, after checking it speaks for
    /// the configured issuer (OpenID Connect Discovery §4.3).
    async fn discover(&self, issuer: &str) -> Result<Uri, String> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!("{issuer}/.well-known/openid-configuration");
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("the discovery URL {url} is not a URL: {e}"))?;
        let (bytes, _) = self.get(&uri).await?;
        let document: Discovery = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{url} is not an OpenID discovery document: {e}"))?;
        if document.issuer.trim_end_matches('/') != issuer {
            return Err(format!(
                "{url} speaks for issuer `{}`, not `{issuer}`",
                document.issuer
            ));
        }
        let jwks: Uri = document
            .jwks_uri
            .parse()
            .map_err(|e| format!("{url} names a jwks_uri that is not a URL: {e}"))?;
        if jwks.scheme_str() != Some("https") && uri.scheme_str() == Some("https") {
            return Err(format!(
                "{url} names a jwks_uri that is not https: {}",
                document.jwks_uri
            ));
        }
        Ok(jwks)
    }

    /// GET through the upstream client: the body, and its `max-age` if it gave one.
    async fn get(&self, url: &Uri) -> Result<(Bytes, Option<Duration>), String> {
        let request = Request::get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("cannot build a request for {url}: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{url}: {}", crate::failure::chain(&e)))?;
            let status = response.status();
            let max_age = max_age(response.headers());
            let body = Limited::new(response.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| format!("{url}: the answer could not be read: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("{url} answered {status}"));
            }
            Ok((body, max_age))
        };
        tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                format!(
                    "{url} did not answer within {}",
                    humantime::format_duration(FETCH_TIMEOUT)
                )
            })?
    }
}

/// `Cache-Control: max-age=N`, bounded; `no-store`/`no-cache` count as the minimum.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::CACHE_CONTROL)?.to_str().ok()?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(MIN_AGE);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            age = seconds
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age.map(|a| a.clamp(MIN_AGE, MAX_AGE))
}

/// The usable signing keys of a JWKS document: public keys not marked for encryption.
/// Shared-secret (`oct`) keys are skipped: accepting them would let anyone who read the
/// set sign tokens.
fn parse(bytes: &[u8], fresh_until: Instant) -> Result<KeySet, String> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| format!("the key set is not a JWKS: {e}"))?;
    let mut by_kid = HashMap::new();
    let mut unnamed = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            _ => continue,
        };
        let algorithm = match jwk.common.key_algorithm {
            Some(named) => match Algorithm::try_from(named) {
                Ok(algorithm) if algorithm.family() == family => Some(algorithm),
                _ => continue,
            },
            None => None,
        };
        let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let key = Arc::new(Key {
            decoding,
            algorithm,
            family,
        });
        match &jwk.common.key_id {
            Some(kid) => {
                by_kid.insert(kid.clone(), key);
            }
            None => unnamed.push(key),
        }
    }
    if by_kid.is_empty() && unnamed.is_empty() {
        return Err("the key set holds no usable signing key (RSA, EC or Ed25519)".to_string());
    }
    Ok(KeySet {
        by_kid,
        unnamed,
        fresh_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_and_bounded() {
        let headers = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
            h
        };
        assert_eq!(
            max_age(&headers("public, max-age=3600")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(max_age(&headers("max-age=5")), Some(MIN_AGE));
        assert_eq!(max_age(&headers("max-age=99999999")), Some(MAX_AGE));
        assert_eq!(max_age(&headers("no-store")), Some(MIN_AGE));
        assert_eq!(max_age(&headers("public")), None);
        assert_eq!(max_age(&http::HeaderMap::new()), None);
    }

    #[test]
    fn shared_secret_and_encryption_keys_are_not_signing_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"EC","kid":"enc","use":"enc","crv":"P-256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let error = parse(doc, Instant::now()).unwrap_err();
        assert!(error.contains("no usable signing key"), "{error}");
        let doc = br#"{"keys":[{"kty":"EC","kid":"sig","crv":"P-256","alg":"ES256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let set = parse(doc, Instant::now()).unwrap();
        let key = set.find(Some("sig")).unwrap();
        assert_eq!(key.algorithm, Some(Algorithm::ES256));
        assert!(set.find(Some("other")).is_none());
        // A token without a kid may use the only key there is.
        assert!(set.find(None).is_some());
    }

    #[test]
    fn a_key_pinned_to_another_family_is_skipped() {
        let doc = br#"{"keys":[{"kty":"EC","kid":"x","crv":"P-256","alg":"HS256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        assert!(parse(doc, Instant::now()).is_err());
    }
}
