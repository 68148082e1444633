//! The company's OpenID provider as a native client sees it: its discovery document, its
//! token, device-authorization and revocation endpoints, and the check of every ID token it
//! hands out, made by the gateway's own JWT validation (`callers::jwt`), so the employee's
//! side refuses exactly what the gateway would.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::uri::Uri;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::callers::jwks::{KeySource, KeyStore};
use crate::callers::jwt::JwtVerifier;
use crate::callers::{Caller, CallerError};
use crate::client::UpstreamClient;
use crate::config::{JwtConfig, KeysFrom};
use crate::kinds::oidc::OidcSpec;
use crate::upstream::is_loopback_host;

/// A request to the provider that takes longer than this fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Larger answers are not token answers.
const MAX_BYTES: usize = 1024 * 1024;
/// Clock difference allowed between this machine and the provider (Envoy's default).
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The endpoints discovery names.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    pub device_authorization_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
}

/// A token endpoint's answer. No `Debug`: it holds the tokens.
#[derive(Deserialize)]
pub struct TokenAnswer {
    pub access_token: Option<String>,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
}

/// A device authorization answer (RFC 8628 §3.2).
#[derive(Debug, Deserialize)]
pub struct DeviceAnswer {
    pub device_code: String,
    pub user_code: String,
    #[serde(alias = "verification_url")]
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: Option<u64>,
}

/// Why a request to the provider failed.
#[derive(Debug, Clone)]
pub enum ProviderError {
    /// The provider answered with an OAuth error (`invalid_grant`, `authorization_pending`).
    OAuth {
        error: String,
        description: Option<String>,
    },
    /// No usable answer: unreachable, timed out, not JSON, a 5xx.
    Transport(String),
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::OAuth {
                error,
                description: Some(description),
            } => write!(f, "{error} ({description})"),
            ProviderError::OAuth { error, .. } => f.write_str(error),
            ProviderError::Transport(text) => f.write_str(text),
        }
    }
}

pub struct Provider {
    spec: OidcSpec,
    client: UpstreamClient,
    endpoints: tokio::sync::OnceCell<Endpoints>,
    verifier: JwtVerifier,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.spec.issuer)
            .field("client_id", &self.spec.client_id)
            .finish_non_exhaustive()
    }
}

impl Provider {
    pub fn new(spec: OidcSpec, client: UpstreamClient) -> Self {
        let config = JwtConfig {
            issuer: spec.issuer.clone(),
            keys: KeysFrom::Discovery,
            audiences: vec![spec.client_id.clone()],
            email_domains: Vec::new(),
            require_email_verified: false,
            email_claim: "email".to_string(),
            groups_claim: "groups".to_string(),
            clock_skew: CLOCK_SKEW,
            jwks_max_age: Duration::from_secs(600),
            jwks_refetch_interval: Duration::from_secs(30),
        };
        let keys = KeyStore::new(
            KeySource::Discovery {
                issuer: spec.issuer.clone(),
            },
            client.clone(),
            config.jwks_max_age,
            config.jwks_refetch_interval,
        );
        Provider {
            verifier: JwtVerifier::new(config, keys),
            spec,
            client,
            endpoints: tokio::sync::OnceCell::new(),
        }
    }

    pub fn spec(&self) -> &OidcSpec {
        &self.spec
    }

    /// The discovery document, fetched once per process.
    pub async fn endpoints(&self) -> Result<&Endpoints, ProviderError> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.spec.issuer);
                let request = Request::get(&url)
                    .header(header::ACCEPT, "application/json")
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| ProviderError::Transport(format!("{url}: {e}")))?;
                let (status, body) = self.exchange(request, &url).await?;
                if !status.is_success() {
                    return Err(ProviderError::Transport(format!("{url} answered {status}")));
                }
                let endpoints: Endpoints = serde_json::from_slice(&body).map_err(|e| {
                    ProviderError::Transport(format!(
                        "{url} is not an OpenID discovery document: {e}"
                    ))
                })?;
                if endpoints.issuer.trim_end_matches('/') != self.spec.issuer {
                    return Err(ProviderError::Transport(format!(
                        "{url} speaks for issuer `{}`, not `{}`",
                        endpoints.issuer, self.spec.issuer
                    )));
                }
                for endpoint in [
                    Some(&endpoints.token_endpoint),
                    endpoints.authorization_endpoint.as_ref(),
                    endpoints.device_authorization_endpoint.as_ref(),
                    endpoints.revocation_endpoint.as_ref(),
                ]
                .into_iter()
                .flatten()
                {
                    check_endpoint(endpoint).map_err(|why| {
                        ProviderError::Transport(format!("{url} names {endpoint}: {why}"))
                    })?;
                }
                Ok(endpoints)
            })
            .await
    }

    /// A token request (`grant_type` and its parameters); the client's own id and secret
    /// are added here.
    pub async fn token(&self, form: &[(&str, &str)]) -> Result<TokenAnswer, ProviderError> {
        let endpoint = self.endpoints().await?.token_endpoint.clone();
        let body = self.post(&endpoint, form).await?;
        serde_json::from_slice(&body).map_err(|e| {
            ProviderError::Transport(format!("{endpoint} answered with no token answer: {e}"))
        })
    }

    /// Starts the device grant.
    pub async fn device_authorization(&self) -> Result<DeviceAnswer, ProviderError> {
        let endpoints = self.endpoints().await?;
        let Some(endpoint) = endpoints.device_authorization_endpoint.clone() else {
            return Err(ProviderError::Transport(format!(
                "{} offers no device authorization endpoint; log in with the browser, or ask the administrator to enable the device flow",
                self.spec.issuer
            )));
        };
        let scope = self.spec.scopes.join(" ");
        let mut form = vec![("scope", scope.as_str())];
        if let Some(audience) = &self.spec.audience {
            form.push(("audience", audience));
        }
        let body = self.post(&endpoint, &form).await?;
        serde_json::from_slice(&body).map_err(|e| {
            ProviderError::Transport(format!("{endpoint} answered with no device code: {e}"))
        })
    }

    /// Revokes a token where the provider offers revocation (RFC 7009); `Ok(false)` when it
    /// offers none.
    pub async fn revoke(&self, token: &str, hint: &str) -> Result<bool, ProviderError> {
        let Some(endpoint) = self.endpoints().await?.revocation_endpoint.clone() else {
            return Ok(false);
        };
        self.post(&endpoint, &[("token", token), ("token_type_hint", hint)])
            .await?;
        Ok(true)
    }

    /// Checks an ID token as the gateway would (signature through the issuer's keys, `iss`,
    /// `aud`, `exp`), and its `nonce` when one was sent; says who it names.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        nonce: Option<&str>,
    ) -> Result<Caller, String> {
        let refused = |e: CallerError| format!("the identity provider's ID token is refused: {e}");
        let claims: Map<String, Value> = self
            .verifier
            .verified_claims(id_token)
            .await
            .map_err(refused)?;
        if let Some(nonce) = nonce
            && claims.get("nonce").and_then(Value::as_str) != Some(nonce)
        {
            return Err(
                "the identity provider's ID token is refused: its `nonce` is not the one this login sent"
                    .to_string(),
            );
        }
        self.verifier.caller(&claims).map_err(refused)
    }

    /// A form POST with the client's credentials; the body of a 2xx answer.
    async fn post(&self, endpoint: &str, form: &[(&str, &str)]) -> Result<Bytes, ProviderError> {
        // Finished before any await: the serializer is not `Send`.
        let body = {
            let mut body = form_urlencoded::Serializer::new(String::new());
            body.append_pair("client_id", &self.spec.client_id);
            if let Some(secret) = &self.spec.client_secret {
                body.append_pair("client_secret", secret.expose());
            }
            for (key, value) in form {
                body.append_pair(key, value);
            }
            body.finish()
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(endpoint)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProviderError::Transport(format!("{endpoint}: {e}")))?;
        let (status, body) = self.exchange(request, endpoint).await?;
        if status.is_success() {
            return Ok(body);
        }
        #[derive(Deserialize)]
        struct OAuthError {
            error: String,
            error_description: Option<String>,
        }
        match serde_json::from_slice::<OAuthError>(&body) {
            Ok(e) if status.is_client_error() => Err(ProviderError::OAuth {
                error: e.error,
                description: e.error_description.map(|d| printable(&d)),
            }),
            _ => Err(ProviderError::Transport(format!(
                "{endpoint} answered {status}"
            ))),
        }
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        url: &str,
    ) -> Result<(http::StatusCode, Bytes), ProviderError> {
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                ProviderError::Transport(format!("{url}: {}", crate::failure::chain(&e)))
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| ProviderError::Transport(format!("{url}: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                ProviderError::Transport(format!(
                    "{url} did not answer within {}",
                    humantime::format_duration(REQUEST_TIMEOUT)
                ))
            })?
    }
}

/// An endpoint must be https, or http on a loopback address (a local provider).
fn check_endpoint(url: &str) -> Result<(), &'static str> {
    let uri: Uri = url.parse().map_err(|_| "not a URL")?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => Ok(()),
        (Some("http"), Some(host)) if is_loopback_host(host) => Ok(()),
        _ => Err("not https"),
    }
}

/// Text from the provider fit for a message: printable and short.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// When a token answer's access token expires.
pub fn access_expiry(answer: &TokenAnswer, now: SystemTime) -> Option<SystemTime> {
    answer
        .expires_in
        .map(|secs| now + Duration::from_secs(secs))
}
