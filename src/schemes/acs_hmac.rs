//! Azure Communication Services HMAC-SHA256 request signing, signed at send time on every
//! attempt: `x-ms-date` (RFC 1123), `x-ms-content-sha256` (base64 SHA-256 of the body) and
//! `Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=…`
//! over `VERB\n<path and query>\n<date>;<host>;<content hash>`.

use super::Applies;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::Mac;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};

use super::{ApplyError, Verdict};
use crate::credentials::{AcsKey, Credential, Material};

#[derive(Debug, Clone, Default)]
pub struct AcsHmacScheme;

impl Applies for AcsHmacScheme {
    fn apply(
        &self,
        request: &mut Request<Full<Bytes>>,
        body: &Bytes,
        credential: &Credential,
    ) -> Result<(), ApplyError> {
        let Material::AcsKey(key) = &credential.material else {
            return Err(ApplyError("this credential holds no ACS access key".into()));
        };
        let host = super::signed_host(request)?;
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let date = httpdate::fmt_http_date(SystemTime::now());
        let signed = sign(
            key,
            request.method().as_str(),
            &path_and_query,
            &date,
            &host,
            body,
        );
        let headers = request.headers_mut();
        let value = |text: String| {
            HeaderValue::try_from(text).map_err(|e| ApplyError(format!("ACS header: {e}")))
        };
        headers.insert("x-ms-date", value(date)?);
        headers.insert("x-ms-content-sha256", value(signed.content_hash)?);
        let mut authorization = value(signed.authorization)?;
        authorization.set_sensitive(true);
        headers.insert(AUTHORIZATION, authorization);
        Ok(())
    }

    /// ACS answers a bad signature or key with 401: refresh (the key may have rotated).
    fn classify(&self, status: StatusCode, _headers: &HeaderMap) -> Verdict {
        if status == StatusCode::UNAUTHORIZED {
            Verdict::Refresh
        } else {
            Verdict::Deliver
        }
    }

    fn classify_body(&self, status: StatusCode, headers: &HeaderMap, _body: &[u8]) -> Verdict {
        self.classify(status, headers)
    }
}

pub struct Signed {
    pub content_hash: String,
    pub authorization: String,
}

/// The signature itself, separate from the request so it can be checked on fixed input.
pub fn sign(
    key: &AcsKey,
    method: &str,
    path_and_query: &str,
    date: &str,
    host: &str,
    body: &[u8],
) -> Signed {
    let content_hash = STANDARD.encode(Sha256::digest(body));
    let string_to_sign = format!("{method}\n{path_and_query}\n{date};{host};{content_hash}");
    let mut mac = key.mac.clone();
    mac.update(string_to_sign.as_bytes());
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    Signed {
        authorization: format!(
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={signature}"
        ),
        content_hash,
    }
}

#[cfg(test)]
mod tests {
    use hmac::Hmac;

    use super::*;

    /// Computed once with Python's hmac/hashlib from the documented string-to-sign, so a
    /// change in how credproxy builds it cannot pass unnoticed.
    #[test]
    fn fixed_input_gives_the_known_signature() {
        let key_bytes = STANDARD
            .decode("Y3JlZHByb3h5LXRlc3QtYWNjZXNzLWtleS0wMTIzNDU2Nzg5")
            .unwrap();
        let key = AcsKey {
            mac: Hmac::<Sha256>::new_from_slice(&key_bytes).unwrap(),
            endpoint: None,
        };
        let signed = sign(
            &key,
            "POST",
            "/emails:send?api-version=2023-03-31",
            "Fri, 08 Apr 2015 03:52:31 GMT",
            "res.communication.azure.com",
            br#"{"senderAddress":"a@b.c","recipients":{"to":[]}}"#,
        );
        assert_eq!(
            signed.content_hash,
            "7s6pq9iItyApjQamuGx1drdf0nTzZwgEJfhS97q9cTg="
        );
        assert_eq!(
            signed.authorization,
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=KjgQ82DkVZkyJIIrj4Le/MPEp4fUmoPhw/lZeVbZ26s="
        );
    }
}
