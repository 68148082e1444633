//! A key or token in a single header: the Anthropic API, Azure keys, bearer tokens,
//! Bedrock API keys.

use super::Applies;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::Full;

use super::{ApplyError, Verdict};
use crate::credentials::{Credential, Material};

/// How a key goes onto the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apply {
    /// The key alone as the value of this header (`x-api-key`, `api-key`, ...).
    Header(HeaderName),
    /// `Authorization: Bearer <key>`.
    Bearer,
}

impl std::fmt::Display for Apply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Apply::Header(name) => write!(f, "{name}"),
            Apply::Bearer => f.write_str("authorization: Bearer"),
        }
    }
}

/// How an upstream says a key went bad; decides which answers trigger refresh-and-replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Any 401 (Anthropic, Azure, most bearer APIs).
    Unauthorized,
    /// Bedrock API keys: 403 whose body starts `{"Message":"Authentication failed` (and 401).
    BedrockApiKey,
}

#[derive(Debug, Clone)]
pub struct HeaderScheme {
    apply: Apply,
    rejection: Rejection,
    /// A fixed header sent beside the credential (Google's `x-goog-user-project`).
    extra: Option<(HeaderName, HeaderValue)>,
}

/// Bedrock's answer to a bad API key starts with this (a 403, not a 401).
const BEDROCK_KEY_REJECTED: &[u8] = br#"{"Message":"Authentication failed"#;

impl HeaderScheme {
    pub fn new(apply: Apply, rejection: Rejection) -> Self {
        HeaderScheme {
            apply,
            rejection,
            extra: None,
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.extra = Some((name, value));
        self
    }

    pub fn is_bedrock(&self) -> bool {
        self.rejection == Rejection::BedrockApiKey
    }
}

impl Applies for HeaderScheme {
    fn apply(
        &self,
        request: &mut Request<Full<Bytes>>,
        _body: &Bytes,
        credential: &Credential,
    ) -> Result<(), ApplyError> {
        let Material::Token(token) = &credential.material else {
            return Err(ApplyError("this credential is not a key or token".into()));
        };
        let headers = request.headers_mut();
        match &self.apply {
            Apply::Header(name) => headers.insert(name.clone(), token.bare_header().clone()),
            Apply::Bearer => headers.insert(AUTHORIZATION, token.bearer_header().clone()),
        };
        if let Some((name, value)) = &self.extra {
            headers.insert(name.clone(), value.clone());
        }
        Ok(())
    }

    /// Any 401 means the key or token was not accepted (Anthropic `authentication_error`,
    /// Azure "invalid subscription key", an expired bearer). 403 is a permission problem a
    /// new key would not cure and passes through, except Bedrock's 403 for a bad API key,
    /// which the body tells apart.
    fn classify(&self, status: StatusCode, _headers: &HeaderMap) -> Verdict {
        match (status, self.rejection) {
            (StatusCode::UNAUTHORIZED, _) => Verdict::Refresh,
            (StatusCode::FORBIDDEN, Rejection::BedrockApiKey) => {
                Verdict::Inspect { max_bytes: 4096 }
            }
            _ => Verdict::Deliver,
        }
    }

    fn classify_body(&self, status: StatusCode, _headers: &HeaderMap, body: &[u8]) -> Verdict {
        if status == StatusCode::FORBIDDEN
            && self.rejection == Rejection::BedrockApiKey
            && body.trim_ascii_start().starts_with(BEDROCK_KEY_REJECTED)
        {
            Verdict::Refresh
        } else {
            Verdict::Deliver
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{Secret, Token};

    fn credential(key: &str) -> Credential {
        Credential {
            material: Material::Token(Token::new(Secret::new(key)).unwrap()),
            expires_at: None,
            generation: 1,
        }
    }

    fn applied(apply: Apply) -> HeaderMap {
        let mut request = Request::new(Full::new(Bytes::new()));
        HeaderScheme::new(apply, Rejection::Unauthorized)
            .apply(&mut request, &Bytes::new(), &credential("sk-1"))
            .unwrap();
        request.headers().clone()
    }

    #[test]
    fn key_goes_in_the_named_header_or_as_bearer() {
        let h = applied(Apply::Header(http::HeaderName::from_static("x-api-key")));
        assert_eq!(h["x-api-key"], "sk-1");
        assert!(h["x-api-key"].is_sensitive());
        let h = applied(Apply::Bearer);
        assert_eq!(h["authorization"], "Bearer sk-1");
        let h = applied(Apply::Header(http::HeaderName::from_static("api-key")));
        assert_eq!(h["api-key"], "sk-1");
    }

    #[test]
    fn only_401_asks_for_a_refresh() {
        let scheme = HeaderScheme::new(Apply::Bearer, Rejection::Unauthorized);
        let none = HeaderMap::new();
        assert_eq!(
            scheme.classify(StatusCode::UNAUTHORIZED, &none),
            Verdict::Refresh
        );
        for status in [200, 400, 403, 404, 429, 500, 529] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(scheme.classify(status, &none), Verdict::Deliver, "{status}");
        }
    }

    #[test]
    fn bedrock_api_key_rejection_is_told_apart_by_its_body() {
        let scheme = HeaderScheme::new(Apply::Bearer, Rejection::BedrockApiKey);
        let none = HeaderMap::new();
        let forbidden = StatusCode::FORBIDDEN;
        assert_eq!(
            scheme.classify(forbidden, &none),
            Verdict::Inspect { max_bytes: 4096 }
        );
        let bad_key =
            br#"{"Message":"Authentication failed: Please make sure your API Key is valid."}"#;
        assert_eq!(
            scheme.classify_body(forbidden, &none, bad_key),
            Verdict::Refresh
        );
        let denied = br#"{"message":"User is not authorized to perform: bedrock:InvokeModel"}"#;
        assert_eq!(
            scheme.classify_body(forbidden, &none, denied),
            Verdict::Deliver
        );
        assert_eq!(
            scheme.classify(StatusCode::UNAUTHORIZED, &none),
            Verdict::Refresh
        );
        assert_eq!(
            scheme.classify(StatusCode::TOO_MANY_REQUESTS, &none),
            Verdict::Deliver
        );
    }
}
