//! A key or token in a single header. The Anthropic API, Azure keys, bearer tokens.

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;

use super::{ApplyError, Verdict};
use crate::config::Apply;
use crate::credentials::{Credential, Material};

#[derive(Debug, Clone)]
pub struct HeaderScheme {
    apply: Apply,
}

impl HeaderScheme {
    pub fn new(apply: Apply) -> Self {
        HeaderScheme { apply }
    }

    pub fn apply(
        &self,
        request: &mut Request<Full<Bytes>>,
        _body: &Bytes,
        credential: &Credential,
    ) -> Result<(), ApplyError> {
        let Material::Token(token) = &credential.material;
        let headers = request.headers_mut();
        match &self.apply {
            Apply::Header(name) => headers.insert(name.clone(), token.bare_header().clone()),
            Apply::Bearer => headers.insert(AUTHORIZATION, token.bearer_header().clone()),
        };
        Ok(())
    }

    /// Any 401 means the key or token was not accepted (Anthropic `authentication_error`,
    /// Azure "invalid subscription key", an expired bearer). 403 is a permission problem a
    /// new key would not cure, so it passes through like every other status.
    pub fn classify(&self, status: StatusCode, _headers: &HeaderMap) -> Verdict {
        if status == StatusCode::UNAUTHORIZED {
            Verdict::Refresh
        } else {
            Verdict::Deliver
        }
    }

    pub fn classify_body(&self, status: StatusCode, headers: &HeaderMap, _body: &[u8]) -> Verdict {
        self.classify(status, headers)
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
        HeaderScheme::new(apply)
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
        let scheme = HeaderScheme::new(Apply::Bearer);
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
}
