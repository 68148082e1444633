//! The identity provider's signing keys (a JWKS): fetched through credproxy's own upstream
//! client (the same roots, `ca_file` included), kept for the answer's `Cache-Control:
//! max-age` or `jwks_max_age`, fetched again when a token names a key the set lacks (at
//! most once per `jwks_refetch_interval`: rotation works, garbage `kid`s cannot hammer the
//! provider), and served last-good when the provider is down.
//!
//! One value per process, so an `ArcSwapOption` with a single-flight mutex. Not the
//! credentials' cache (`credentials::cache`), though it too is single-flight and serves
//! last-good: that cache holds one credential value of a source, dropped when an upstream
//! rejects it, renewed ahead of its expiry; a key set is renewed for a different reason (a
//! token names a key it lacks), at most once per `jwks_refetch_interval` however many
//! tokens ask, and is never dropped for a rejection.

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
/// Bounds on a `Cache-Control: max-age` (then `jwks_max_age` bounds it again).
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
    /// When the last fetch (of any kind) finished: a token naming an unknown key makes
    /// another only after `refetch_interval`.
    last_fetch: Option<Instant>,
    /// After a failed fetch, none before this (requests keep the last-good set meanwhile).
    quiet_until: Option<Instant>,
    last_error: Option<String>,
}

/// Why a key could not be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The set in use has no key of that id (fetched again if the interval allowed).
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
    /// A background refresh of a stale set is running.
    refreshing: std::sync::atomic::AtomicBool,
}

/// Why a fetch is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// No set, or a stale one.
    Fresh,
    /// The set lacks a key a token names.
    UnknownKey,
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
            refreshing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// `None` once a key set is held (fresh or stale: tokens signed with its keys are
    /// checked); before that, why not (the last fetch's error, or that none finished yet).
    pub fn missing(&self) -> Option<String> {
        if self.current.load().is_some() {
            return None;
        }
        let error = self
            .refresh
            .try_lock()
            .ok()
            .and_then(|state| state.last_error.clone());
        Some(error.unwrap_or_else(|| "the signing keys have not been fetched yet".to_string()))
    }

    /// Fetches the set now unless a fresh one is held: the number of usable keys, or why
    /// there are none (`credproxy check`, and the warm-up at start).
    pub async fn prefetch(&self) -> Result<usize, String> {
        let current = self.current.load_full();
        match self.refresh(current.as_ref(), Want::Fresh).await {
            Ok(set) => Ok(set.by_kid.len() + set.unnamed.len()),
            Err(KeyError::Unavailable(reason)) => Err(reason),
            Err(KeyError::Unknown) => Err("no key set".to_string()),
        }
    }

    /// The key a token names. Lock-free while the set holds the key: a stale set is still
    /// used while one background task fetches the next, so a slow or unreachable provider
    /// never holds up tokens signed with keys already known. Only a token naming an
    /// unknown key (rotation), or the very first fetch, waits for the provider.
    pub async fn find(self: &Arc<Self>, kid: Option<&str>) -> Result<Arc<Key>, KeyError> {
        let set = match self.current.load_full() {
            Some(set) => {
                if Instant::now() >= set.fresh_until
                    && !self
                        .refreshing
                        .swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    let store = Arc::clone(self);
                    let stale = Arc::clone(&set);
                    crate::runtime::spawn_background(async move {
                        let _ = store.refresh(Some(&stale), Want::Fresh).await;
                        store
                            .refreshing
                            .store(false, std::sync::atomic::Ordering::Release);
                    });
                }
                set
            }
            None => self.refresh_apart(None, Want::Fresh).await?,
        };
        if let Some(key) = set.find(kid) {
            return Ok(key);
        }
        let set = self.refresh_apart(Some(set), Want::UnknownKey).await?;
        set.find(kid).ok_or(KeyError::Unknown)
    }

    /// [`refresh`](Self::refresh) on the background runtime: a token on a serving thread
    /// waits for the provider there, not on its own thread.
    async fn refresh_apart(
        self: &Arc<Self>,
        seen: Option<Arc<KeySet>>,
        want: Want,
    ) -> Result<Arc<KeySet>, KeyError> {
        let store = Arc::clone(self);
        crate::runtime::on_background(async move { store.refresh(seen.as_ref(), want).await }).await
    }

    /// Fetches the set again unless another task just did, or the provider failed
    /// recently, or (for an unknown key) a fetch happened within the interval. Returns the
    /// set to use: new, or the last good one.
    async fn refresh(
        &self,
        seen: Option<&Arc<KeySet>>,
        want: Want,
    ) -> Result<Arc<KeySet>, KeyError> {
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
        let rate_limited = want == Want::UnknownKey
            && state
                .last_fetch
                .is_some_and(|t| now < t + self.refetch_interval);
        let skip = replaced || quiet || rate_limited || (want == Want::Fresh && fresh);
        if !skip {
            let fetched = self.fetch(&mut state).await;
            let done = Instant::now();
            state.last_fetch = Some(done);
            match fetched {
                Ok(set) => {
                    tracing::debug!(target: "credproxy::callers", keys = set.by_kid.len() + set.unnamed.len(),
                        "fetched the identity provider's signing keys");
                    let set = Arc::new(set);
                    self.current.store(Some(Arc::clone(&set)));
                    state.quiet_until = None;
                    state.last_error = None;
                    return Ok(set);
                }
                Err(error) => {
                    tracing::warn!(target: "credproxy::callers", %error, serving_last_good = current.is_some(),
                        "cannot fetch the identity provider's signing keys");
                    state.jwks_uri = None;
                    state.quiet_until = Some(done + self.refetch_interval);
                    state.last_error = Some(error);
                }
            }
        }
        current.ok_or_else(|| {
            KeyError::Unavailable(
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the signing keys have not been fetched yet".to_string()),
            )
        })
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
        // The provider's max-age, but never longer than the configured one: an operator can
        // bound how long a removed key stays trusted.
        let max_age = max_age.map_or(self.max_age, |age| age.min(self.max_age));
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
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("the discovery URL {url} is not a URL: {e}"))?;
        let (bytes, _) = self.get(&uri).await?;
        let document: Discovery = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{url} is not an OpenID discovery document: {e}"))?;
        if document.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(format!(
                "{url} speaks for issuer `{}`, not `{issuer}`",
                document.issuer
            ));
        }
        let jwks: Uri = document
            .jwks_uri
            .parse()
            .map_err(|e| format!("{url} names a jwks_uri that is not a URL: {e}"))?;
        let loopback = jwks.host().is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if jwks.scheme_str() != Some("https") && !loopback {
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
