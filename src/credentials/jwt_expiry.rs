//! A credential whose value is a JWT carries its own end: `exp`. Whatever source produced
//! it (a helper printing one, a file holding one, an OpenID login), the value is used until
//! `exp` less a margin when that comes before the end its source gave it, so a token is
//! never sent expired and nobody has to tune a `ttl` to a token lifetime.
//!
//! Only the payload is read here (no signature check): the value is ours to send, not a
//! caller's to trust; an upstream that disagrees rejects it and the cache renews it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Fetched, Lifetime, Material, SourceError};

/// The most a JWT is used before its `exp`.
pub const MAX_MARGIN: Duration = Duration::from_secs(60);

/// The times a JWT states about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtTimes {
    pub expires_at: SystemTime,
    pub issued_at: Option<SystemTime>,
}

impl JwtTimes {
    /// Reads `exp` (and `iat`) from a compact JWT's payload; `None` for anything that is not
    /// a JWT with a numeric `exp` (an opaque key or token).
    pub fn of(value: &str) -> Option<JwtTimes> {
        let mut parts = value.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes).ok()?;
        let at = |claim: &str| {
            claims
                .get(claim)
                .and_then(serde_json::Value::as_f64)
                .filter(|secs| *secs >= 0.0 && secs.is_finite())
                .map(|secs| UNIX_EPOCH + Duration::from_secs(secs as u64))
        };
        Some(JwtTimes {
            expires_at: at("exp")?,
            issued_at: at("iat"),
        })
    }

    /// When to stop sending it: `exp` less 60 s, or less a tenth of its lifetime (from
    /// `iat`, else from `now`) when that is shorter.
    pub fn stop_at(&self, now: SystemTime) -> SystemTime {
        let from = self.issued_at.filter(|iat| *iat <= now).unwrap_or(now);
        let lifetime = self.expires_at.duration_since(from).unwrap_or_default();
        self.expires_at - MAX_MARGIN.min(lifetime / 10)
    }
}

/// Bounds a fetched token by its own `exp` when it is a JWT; a JWT already past its stop
/// time is a failure with that reason (`what` names the source), never a value to loop on.
pub fn bound(mut fetched: Fetched, what: &str) -> Result<Fetched, SourceError> {
    let Material::Token(token) = &fetched.material else {
        return Ok(fetched);
    };
    let Some(times) = JwtTimes::of(token.secret().expose()) else {
        return Ok(fetched);
    };
    let now = SystemTime::now();
    let stop_at = times.stop_at(now);
    if stop_at <= now {
        let ago = now.duration_since(times.expires_at).unwrap_or_default();
        let when = if ago.is_zero() {
            "expires within its safety margin".to_string()
        } else {
            format!(
                "expired {} ago",
                humantime::format_duration(Duration::from_secs(ago.as_secs()))
            )
        };
        return Err(SourceError::unrecoverable(format!(
            "{what} gave a JWT that {when}; it must give a fresh one"
        )));
    }
    let own_end = match fetched.lifetime {
        Lifetime::UntilRejected => None,
        Lifetime::Ttl(ttl) => Some(now + ttl),
        Lifetime::IssuerExpiry(at) => Some(at),
        Lifetime::Until { stop_at, .. } => Some(stop_at),
    };
    if own_end.is_none_or(|end| stop_at < end) {
        fetched.lifetime = Lifetime::Until {
            expires_at: times.expires_at,
            stop_at,
        };
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{Secret, Token};

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn fetched(value: &str, lifetime: Lifetime) -> Fetched {
        Fetched {
            material: Material::Token(Token::new(Secret::new(value)).unwrap()),
            lifetime,
            via: None,
        }
    }

    #[test]
    fn the_margin_is_a_minute_or_a_tenth_of_a_short_life() {
        let iat = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let long = JwtTimes {
            expires_at: iat + Duration::from_secs(3600),
            issued_at: Some(iat),
        };
        assert_eq!(long.stop_at(iat), iat + Duration::from_secs(3540));
        let short = JwtTimes {
            expires_at: iat + Duration::from_secs(300),
            issued_at: Some(iat),
        };
        assert_eq!(short.stop_at(iat), iat + Duration::from_secs(270));
        let text = jwt(&format!(
            r#"{{"exp":{},"iat":{}}}"#,
            secs(iat) + 300,
            secs(iat)
        ));
        assert_eq!(JwtTimes::of(&text), Some(short));
        assert_eq!(JwtTimes::of("sk-ant-opaque"), None);
        assert_eq!(JwtTimes::of(&jwt(r#"{"sub":"x"}"#)), None);
    }

    #[test]
    fn a_jwt_ending_before_its_ttl_is_used_until_its_exp_less_the_margin() {
        let now = secs(SystemTime::now());
        let text = jwt(&format!(r#"{{"exp":{},"iat":{now}}}"#, now + 600));
        let bounded = bound(
            fetched(&text, Lifetime::Ttl(Duration::from_secs(3600))),
            "x",
        )
        .unwrap()
        .lifetime;
        let Lifetime::Until {
            expires_at,
            stop_at,
        } = bounded
        else {
            panic!("{bounded:?}")
        };
        assert_eq!(secs(expires_at), now + 600);
        assert_eq!(secs(stop_at), now + 540);
        // A ttl that ends first stays the ttl.
        let short_ttl = Lifetime::Ttl(Duration::from_secs(60));
        assert_eq!(
            bound(fetched(&text, short_ttl), "x").unwrap().lifetime,
            short_ttl
        );
        // Not a JWT: unchanged.
        let key = bound(fetched("sk-key", Lifetime::UntilRejected), "x").unwrap();
        assert_eq!(key.lifetime, Lifetime::UntilRejected);
    }

    #[test]
    fn an_expired_jwt_is_a_failure_that_says_so() {
        let now = secs(SystemTime::now());
        let text = jwt(&format!(r#"{{"exp":{},"iat":{}}}"#, now - 120, now - 720));
        let error = bound(
            fetched(&text, Lifetime::Ttl(Duration::from_secs(300))),
            "helper `x`",
        )
        .unwrap_err();
        assert_eq!(error.kind, crate::credentials::FailureKind::Unrecoverable);
        assert_eq!(
            error.to_string(),
            "helper `x` gave a JWT that expired 2m ago; it must give a fresh one"
        );
    }
}
