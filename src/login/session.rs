//! One login in use: the token to send now, renewed with the refresh-token grant. The
//! running proxy reaches it through the credential cache (single flight, refresh ahead of
//! expiry, a fresh value after a 401), `credproxy token` directly; both go through
//! [`Session::current`], which decides under the store's lock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::provider::{Provider, ProviderError, TokenAnswer, access_expiry};
use super::store::{Locked, Saved, Store};
use crate::callers::Caller;
use crate::credentials::jwt_expiry::JwtTimes;
use crate::credentials::{
    BoxFuture, FailureKind, Fetched, Lifetime, Material, Provide, Secret, SourceError, Token,
};
use crate::kinds::oidc::Sent;

#[derive(Debug)]
pub struct Session {
    name: String,
    provider: Arc<Provider>,
    store: Store,
    /// The SHA-256 of the token this process last handed out: asked again for a value, the
    /// cache wants a newer one (ahead of expiry, or after an upstream refused it).
    last_sent: Mutex<Option<[u8; 32]>>,
}

impl Session {
    pub fn new(name: &str, provider: Arc<Provider>, store: Store) -> Self {
        Session {
            name: name.to_string(),
            provider,
            store,
            last_sent: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// "run `credproxy login NAME`".
    pub fn hint(&self) -> String {
        format!("run `credproxy login {}`", self.name)
    }

    /// The login stored for this provider and app, if any.
    pub async fn stored(&self, locked: &Locked) -> Result<Option<Saved>, String> {
        let spec = self.provider.spec();
        Ok(self
            .store
            .load(locked)
            .await?
            .filter(|s| s.issuer == spec.issuer && s.client_id == spec.client_id))
    }

    /// A token to send now. Under the login's lock: the stored token when it is fresh (and,
    /// for the proxy, not the one it already holds), else a refresh whose answer is stored
    /// before the lock is released.
    pub async fn current(&self, for_cache: bool) -> Result<(Secret, Lifetime), SourceError> {
        let locked = self.store.lock().await.map_err(SourceError::transient)?;
        let saved = self
            .stored(&locked)
            .await
            .map_err(SourceError::unrecoverable)?
            .ok_or_else(|| {
                SourceError::login_required(format!(
                    "credential `{}` is not logged in; {}",
                    self.name,
                    self.hint()
                ))
            })?;
        if let Some(why) = &saved.ended {
            return Err(self.ended(why));
        }
        let held = *self.last_sent.lock().expect("not poisoned");
        let now = SystemTime::now();
        // The stored token, when it is not the one the cache wants replaced, with whether it
        // is fresh (in the first three quarters of its usable life) and still usable at all.
        let stored = self
            .sendable(&saved)
            .filter(|(secret, _)| !(for_cache && held == Some(digest(secret))))
            .and_then(|(secret, lifetime)| {
                let (from, stop) = window(secret.expose(), &saved)?;
                let fresh = now < from + stop.duration_since(from).unwrap_or_default() * 3 / 4;
                Some((secret, lifetime, fresh, now < stop))
            });
        let (secret, lifetime) = match stored {
            Some((secret, lifetime, true, _)) => (secret, lifetime),
            // A login without a refresh token lasts as long as its token.
            Some((secret, lifetime, _, true)) if saved.refresh_token.is_none() => {
                (secret, lifetime)
            }
            still_usable => match self.refresh(&locked, saved).await {
                Ok(saved) => self.sendable(&saved).ok_or_else(|| {
                    SourceError::unrecoverable(format!(
                        "the identity provider's refresh answer for `{}` holds no {}",
                        self.name,
                        self.sent_name()
                    ))
                })?,
                // The provider is unreachable for now: the token in hand serves until its end.
                Err(error) if error.kind == FailureKind::Transient => match still_usable {
                    Some((secret, lifetime, _, true)) => {
                        tracing::warn!(credential = %self.name, %error, "refresh failed; using the current token while it is valid");
                        (secret, lifetime)
                    }
                    _ => return Err(error),
                },
                Err(error) => return Err(error),
            },
        };
        if for_cache {
            *self.last_sent.lock().expect("not poisoned") = Some(digest(&secret));
        }
        Ok((secret, lifetime))
    }

    /// Runs the refresh-token grant and stores its answer (a rotated refresh token replaces
    /// the old one). A refused refresh token ends the login, stored as ended so that no
    /// process asks the provider again with it.
    async fn refresh(&self, locked: &Locked, mut saved: Saved) -> Result<Saved, SourceError> {
        let Some(refresh_token) = saved.refresh_token.clone() else {
            return Err(SourceError::login_required(format!(
                "the login for `{}` has expired and holds no refresh token (is `offline_access` among `scopes`, and allowed for the app?); {}",
                self.name,
                self.hint()
            )));
        };
        let answer = self
            .provider
            .token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh_token),
            ])
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(ProviderError::OAuth { error, description }) if error == "invalid_grant" => {
                let why = format!(
                    "the identity provider refused its refresh token: invalid_grant{}",
                    description.map(|d| format!(", {d}")).unwrap_or_default()
                );
                tracing::warn!(credential = %self.name, reason = %why, "login ended");
                saved = Saved {
                    issuer: saved.issuer,
                    client_id: saved.client_id,
                    ended: Some(why.clone()),
                    ..Saved::default()
                };
                self.store
                    .save(locked, &saved)
                    .await
                    .map_err(SourceError::unrecoverable)?;
                return Err(self.ended(&why));
            }
            Err(error @ ProviderError::OAuth { .. }) => {
                return Err(SourceError::unrecoverable(format!(
                    "the identity provider refused to refresh the login for `{}`: {error}",
                    self.name
                )));
            }
            Err(ProviderError::Transport(why)) => {
                return Err(SourceError::transient(format!(
                    "cannot refresh the login for `{}`: {why}",
                    self.name
                )));
            }
        };
        let fresh = self
            .accept(answer, None, Some(refresh_token))
            .await
            .map_err(SourceError::unrecoverable)?;
        self.store
            .save(locked, &fresh.0)
            .await
            .map_err(SourceError::unrecoverable)?;
        tracing::info!(credential = %self.name, "login refreshed");
        Ok(fresh.0)
    }

    /// Checks a token answer (the ID token as the gateway would, with the login's `nonce`)
    /// and turns it into what is stored; `previous_refresh` stays when no new one came.
    pub async fn accept(
        &self,
        answer: TokenAnswer,
        nonce: Option<&str>,
        previous_refresh: Option<String>,
    ) -> Result<(Saved, Option<Caller>), String> {
        let spec = self.provider.spec();
        let caller = match &answer.id_token {
            Some(id_token) => Some(self.provider.verify_id_token(id_token, nonce).await?),
            None if spec.token == Sent::IdToken || nonce.is_some() => {
                return Err(format!(
                    "the identity provider's answer holds no ID token (is \"openid\" among `scopes`?); {}",
                    self.hint()
                ));
            }
            None => None,
        };
        let now = SystemTime::now();
        Ok((
            Saved {
                issuer: spec.issuer.clone(),
                client_id: spec.client_id.clone(),
                access_expires_at: access_expiry(&answer, now).map(unix),
                refresh_token: answer.refresh_token.or(previous_refresh),
                id_token: answer.id_token,
                access_token: answer.access_token,
                obtained_at: unix(now),
                ended: None,
            },
            caller,
        ))
    }

    /// The token this credential sends, with its lifetime, if the login holds one.
    fn sendable(&self, saved: &Saved) -> Option<(Secret, Lifetime)> {
        let token = match self.provider.spec().token {
            Sent::IdToken => saved.id_token.as_deref(),
            Sent::AccessToken => saved.access_token.as_deref(),
        }?;
        let lifetime = match (JwtTimes::of(token), saved.access_expires_at) {
            (Some(_), _) => Lifetime::UntilRejected, // bounded by its `exp` on the way out
            (None, Some(at)) => Lifetime::IssuerExpiry(UNIX_EPOCH + Duration::from_secs(at)),
            (None, None) => Lifetime::UntilRejected,
        };
        Some((Secret::new(token), lifetime))
    }

    fn sent_name(&self) -> &'static str {
        match self.provider.spec().token {
            Sent::IdToken => "ID token",
            Sent::AccessToken => "access token",
        }
    }

    fn ended(&self, why: &str) -> SourceError {
        SourceError::login_required(format!(
            "the login for `{}` has ended ({why}); {}",
            self.name,
            self.hint()
        ))
    }
}

impl Provide for Session {
    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(async move {
            let (secret, lifetime) = self.current(true).await?;
            Ok(Fetched {
                material: Material::Token(Token::new(secret)?),
                lifetime,
                via: None,
            })
        })
    }
}

/// When a stored token was issued and when to stop sending it: from its own `iat` and
/// `exp` when it is a JWT, else from when it was obtained and the provider's `expires_in`.
fn window(token: &str, saved: &Saved) -> Option<(SystemTime, SystemTime)> {
    let obtained = UNIX_EPOCH + Duration::from_secs(saved.obtained_at);
    let times = match JwtTimes::of(token) {
        Some(times) => times,
        None => JwtTimes {
            expires_at: UNIX_EPOCH + Duration::from_secs(saved.access_expires_at?),
            issued_at: Some(obtained),
        },
    };
    Some((
        times.issued_at.unwrap_or(obtained),
        times.stop_at(SystemTime::now()),
    ))
}

fn digest(secret: &Secret) -> [u8; 32] {
    Sha256::digest(secret.expose().as_bytes()).into()
}

pub fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}
