//! AWS Signature Version 4 with aws-sigv4, for Bedrock and any AWS service fronted by a route.
//!
//! Signed right before each attempt is sent (a replay gets a fresh `x-amz-date`), over the
//! exact path and query bytes that go on the wire and a minimal header set: `host` and
//! `content-type`, plus the `x-amz-date`, `x-amz-security-token` and `x-amz-content-sha256`
//! the signer adds. Everything else the client sent (`anthropic-version`, `user-agent`,
//! trace headers) travels unsigned, so no proxy or client change to them can break a
//! signature.

use super::Applies;
use std::time::SystemTime;

use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;

use super::{ApplyError, Verdict};
use crate::credentials::{Credential, Material};
use crate::upstream::region_from_host;

/// Error bodies of AWS JSON services are small; a larger 403 is not an auth failure.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct SigV4Scheme {
    service: String,
    region: Option<String>,
}

impl SigV4Scheme {
    pub fn new(service: String, region: Option<String>) -> Self {
        SigV4Scheme { service, region }
    }
}

impl Applies for SigV4Scheme {
    fn apply(
        &self,
        request: &mut Request<Full<Bytes>>,
        body: &Bytes,
        credential: &Credential,
    ) -> Result<(), ApplyError> {
        let Material::Aws(aws) = &credential.material else {
            return Err(ApplyError("this credential holds no AWS keys".into()));
        };
        let uri = request.uri().to_string();
        let host = super::signed_host(request)?;
        let region = region_from_host(&host)
            .or(self.region.as_deref())
            .or(aws.region.as_deref())
            .ok_or_else(|| {
                ApplyError(format!(
                    "cannot tell which region to sign for: `{host}` names none; set `region` in the credential"
                ))
            })?
            .to_string();
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut signed_headers = vec![("host", host.as_str())];
        if let Some(content_type) = &content_type {
            signed_headers.push(("content-type", content_type.as_str()));
        }

        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&aws.identity)
            .region(&region)
            .name(&self.service)
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| ApplyError(format!("SigV4 parameters: {e}")))?
            .into();
        // The body hash is the bulk of signing a large body: ring's SHA-256 uses the CPU's
        // SHA extensions, several times faster than the signer's own hashing.
        let body_hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, body));
        let signable = SignableRequest::new(
            request.method().as_str(),
            &uri,
            signed_headers.into_iter(),
            SignableBody::Precomputed(body_hash),
        )
        .map_err(|e| ApplyError(format!("the request cannot be signed: {e}")))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| ApplyError(format!("SigV4 signing failed: {e}")))?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }

    /// AWS says "bad credential" with a 403 and an error type: expired or unknown keys are
    /// refreshed; a signature that expired or is not yet valid (clock skew) is signed again
    /// with the same keys; `AccessDeniedException` and the rest are real answers.
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        if status == StatusCode::UNAUTHORIZED {
            return Verdict::Refresh;
        }
        if status != StatusCode::FORBIDDEN {
            return Verdict::Deliver;
        }
        match error_type(headers) {
            Some(kind) if is_rejected_credential(kind) => Verdict::Refresh,
            // Tell an expired signature from a wrong one by the message.
            Some(kind) if is_bad_signature(kind) => Verdict::Inspect {
                max_bytes: ERROR_BODY_LIMIT,
            },
            Some(_) => Verdict::Deliver,
            // No header: the type, if any, is in the body.
            None => Verdict::Inspect {
                max_bytes: ERROR_BODY_LIMIT,
            },
        }
    }

    fn classify_body(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Verdict {
        if status != StatusCode::FORBIDDEN {
            return self.classify(status, headers);
        }
        let text = String::from_utf8_lossy(body);
        let said = |needle: &str| text.contains(needle);
        if said("Signature expired") || said("Signature not yet current") || said("not yet current")
        {
            return Verdict::Resign;
        }
        let kind = error_type(headers).or_else(|| {
            [
                "ExpiredTokenException",
                "ExpiredToken",
                "UnrecognizedClientException",
                "InvalidClientTokenId",
                "InvalidSignatureException",
                "SignatureDoesNotMatch",
            ]
            .into_iter()
            .find(|k| said(k))
        });
        match kind {
            // A wrong signature from valid-looking keys: the secret may have rotated.
            Some(kind) if is_rejected_credential(kind) || is_bad_signature(kind) => {
                Verdict::Refresh
            }
            _ => Verdict::Deliver,
        }
    }
}

fn is_rejected_credential(kind: &str) -> bool {
    matches!(
        kind,
        "ExpiredTokenException"
            | "ExpiredToken"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
    )
}

fn is_bad_signature(kind: &str) -> bool {
    matches!(kind, "InvalidSignatureException" | "SignatureDoesNotMatch")
}

/// `x-amzn-ErrorType: ExpiredTokenException:http://internal.amazon.com/...` → the name.
fn error_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("x-amzn-errortype")?.to_str().ok()?;
    value
        .split(':')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn scheme() -> SigV4Scheme {
        SigV4Scheme::new("bedrock".into(), None)
    }

    fn with_type(kind: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_str(&format!(
                "{kind}:http://internal.amazon.com/coral/com.amazon.coral.service/"
            ))
            .unwrap(),
        );
        headers
    }

    #[test]
    fn region_comes_from_the_host() {
        assert_eq!(
            region_from_host("bedrock-runtime.us-east-1.amazonaws.com"),
            Some("us-east-1")
        );
        assert_eq!(
            region_from_host("bedrock.eu-west-3.amazonaws.com"),
            Some("eu-west-3")
        );
        assert_eq!(
            region_from_host("vpce-0a.bedrock-runtime.us-west-2.vpce.amazonaws.com"),
            Some("us-west-2")
        );
        assert_eq!(
            region_from_host("bedrock-runtime.us-gov-west-1.amazonaws.com"),
            Some("us-gov-west-1")
        );
        assert_eq!(region_from_host("127.0.0.1:8080"), None);
        assert_eq!(region_from_host("bedrock-runtime.amazonaws.com"), None);
    }

    #[test]
    fn expired_and_unknown_keys_refresh_and_permission_errors_pass() {
        let forbidden = StatusCode::FORBIDDEN;
        for kind in [
            "ExpiredTokenException",
            "UnrecognizedClientException",
            "InvalidClientTokenId",
        ] {
            assert_eq!(
                scheme().classify(forbidden, &with_type(kind)),
                Verdict::Refresh,
                "{kind}"
            );
        }
        assert_eq!(
            scheme().classify(forbidden, &with_type("AccessDeniedException")),
            Verdict::Deliver
        );
        assert_eq!(
            scheme().classify(
                StatusCode::TOO_MANY_REQUESTS,
                &with_type("ThrottlingException")
            ),
            Verdict::Deliver
        );
        assert_eq!(
            scheme().classify(StatusCode::BAD_REQUEST, &with_type("ValidationException")),
            Verdict::Deliver
        );
    }

    #[test]
    fn an_expired_signature_is_signed_again_and_a_wrong_one_refreshed() {
        let headers = with_type("InvalidSignatureException");
        let forbidden = StatusCode::FORBIDDEN;
        assert_eq!(
            scheme().classify(forbidden, &headers),
            Verdict::Inspect {
                max_bytes: ERROR_BODY_LIMIT
            }
        );
        let expired = br#"{"message":"Signature expired: 20250101T000000Z is now earlier than 20250101T000500Z (20250101T001000Z - 5 min.)"}"#;
        assert_eq!(
            scheme().classify_body(forbidden, &headers, expired),
            Verdict::Resign
        );
        let early = br#"{"message":"Signature not yet current: 20250101T010000Z is still later than 20250101T000500Z"}"#;
        assert_eq!(
            scheme().classify_body(forbidden, &headers, early),
            Verdict::Resign
        );
        let wrong = br#"{"message":"The request signature we calculated does not match the signature you provided."}"#;
        assert_eq!(
            scheme().classify_body(forbidden, &headers, wrong),
            Verdict::Refresh
        );
        let body_only = br#"{"__type":"com.amazon.coral.service#ExpiredTokenException","message":"The security token included in the request is expired"}"#;
        assert_eq!(
            scheme().classify_body(forbidden, &HeaderMap::new(), body_only),
            Verdict::Refresh
        );
        let denied =
            br#"{"message":"You don't have access to the model with the specified model ID."}"#;
        assert_eq!(
            scheme().classify_body(forbidden, &HeaderMap::new(), denied),
            Verdict::Deliver
        );
    }
}
