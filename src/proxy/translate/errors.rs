//! The clouds' errors in the Anthropic shape, so an Anthropic SDK raises the class it
//! would raise for the same problem from the Anthropic API (and retries what it retries):
//!
//! | Bedrock (`x-amzn-errortype`, or the stream's `:exception-type`) | status | `error.type` |
//! |---|---|---|
//! | ValidationException | 400 | invalid_request_error |
//! | AccessDeniedException | 403 | permission_error |
//! | ResourceNotFoundException | 404 | not_found_error |
//! | ThrottlingException, ServiceQuotaExceededException | 429 | rate_limit_error |
//! | ModelTimeoutException | 504 | timeout_error |
//! | ModelNotReadyException, ServiceUnavailableException | 529 | overloaded_error |
//! | ModelErrorException, ModelStreamErrorException, InternalServerException | 500 | api_error |
//! | UnrecognizedClient, InvalidSignature, ExpiredToken, MissingAuthenticationToken | 502 | api_error (credproxy's own credential was refused) |
//!
//! Vertex: an Anthropic-shaped error (from the model) passes through; a Google one maps its
//! `status`: INVALID_ARGUMENT/FAILED_PRECONDITION/OUT_OF_RANGE 400 invalid_request_error,
//! PERMISSION_DENIED 403 permission_error, NOT_FOUND 404 not_found_error,
//! RESOURCE_EXHAUSTED 429 rate_limit_error, DEADLINE_EXCEEDED 504 timeout_error,
//! UNAVAILABLE 529 overloaded_error, UNAUTHENTICATED 502 api_error, others 500 api_error.
//! Anything else maps by its HTTP status.

use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::config::translate::TranslateTo;

/// An Anthropic error: status and body.
pub fn anthropic_error(status: u16, kind: &str, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// A Bedrock error code (the part before `:`, after any `#`) → status and type.
pub fn bedrock_code(code: &str) -> Option<(u16, &'static str)> {
    let code = code.to_ascii_lowercase();
    let code = code.trim_end_matches("exception");
    Some(match code {
        "validation" => (400, "invalid_request_error"),
        "accessdenied" => (403, "permission_error"),
        "resourcenotfound" => (404, "not_found_error"),
        "throttling" | "servicequotaexceeded" => (429, "rate_limit_error"),
        "modeltimeout" => (504, "timeout_error"),
        "modelnotready" | "serviceunavailable" => (529, "overloaded_error"),
        "modelerror" | "modelstreamerror" | "internalserver" | "internalfailure" => {
            (500, "api_error")
        }
        "unrecognizedclient"
        | "invalidsignature"
        | "expiredtoken"
        | "missingauthenticationtoken"
        | "incompletesignature" => (502, "api_error"),
        _ => return None,
    })
}

/// The Anthropic type for an HTTP status, when nothing more specific is known.
fn by_status(status: u16) -> (u16, &'static str) {
    match status {
        400 | 422 => (400, "invalid_request_error"),
        401 => (401, "authentication_error"),
        403 => (403, "permission_error"),
        404 => (404, "not_found_error"),
        408 | 504 => (504, "timeout_error"),
        413 => (413, "request_too_large"),
        429 => (429, "rate_limit_error"),
        503 | 529 => (529, "overloaded_error"),
        s if (400..500).contains(&s) => (s, "invalid_request_error"),
        s => (s.max(500), "api_error"),
    }
}

/// A cloud's error answer in the Anthropic shape.
pub fn translate(
    to: TranslateTo,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, Value) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let text = || {
        String::from_utf8_lossy(body)
            .chars()
            .take(2000)
            .collect::<String>()
    };
    match to {
        TranslateTo::Bedrock => {
            let code = headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| {
                    let p = parsed.as_ref()?;
                    ["__type", "code", "Code"]
                        .iter()
                        .find_map(|k| p.get(*k)?.as_str().map(str::to_string))
                })
                .map(|c| {
                    let c = c.split(':').next().unwrap_or("").to_string();
                    c.rsplit('#').next().unwrap_or("").to_string()
                });
            let message = parsed
                .as_ref()
                .and_then(|p| {
                    p.get("message")
                        .or_else(|| p.get("Message"))?
                        .as_str()
                        .map(str::to_string)
                })
                .unwrap_or_else(text);
            let (mapped, kind) = code
                .as_deref()
                .and_then(bedrock_code)
                .unwrap_or_else(|| by_status(status.as_u16()));
            let message = match &code {
                Some(code) if !code.is_empty() => format!("{code}: {message}"),
                _ => message,
            };
            anthropic_error(mapped, kind, &message)
        }
        TranslateTo::Vertex => {
            let first = match parsed {
                Some(Value::Array(mut items)) if !items.is_empty() => Some(items.swap_remove(0)),
                other => other,
            };
            if let Some(error) = &first
                && error.get("type").and_then(Value::as_str) == Some("error")
            {
                // Already Anthropic's: the model's own error.
                return (status, error.clone());
            }
            let google = first.as_ref().and_then(|e| e.get("error"));
            let message = google
                .and_then(|g| g.get("message")?.as_str().map(str::to_string))
                .unwrap_or_else(text);
            let state = google.and_then(|g| g.get("status")?.as_str()).unwrap_or("");
            let (mapped, kind) = match state {
                "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
                    (400, "invalid_request_error")
                }
                "PERMISSION_DENIED" => (403, "permission_error"),
                "NOT_FOUND" => (404, "not_found_error"),
                "RESOURCE_EXHAUSTED" => (429, "rate_limit_error"),
                "DEADLINE_EXCEEDED" => (504, "timeout_error"),
                "UNAVAILABLE" => (529, "overloaded_error"),
                "UNAUTHENTICATED" => (502, "api_error"),
                "" => by_status(status.as_u16()),
                _ => (500, "api_error"),
            };
            let message = if state.is_empty() {
                message
            } else {
                format!("{state}: {message}")
            };
            anthropic_error(mapped, kind, &message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bedrock_errors_map_by_their_code() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
                .parse()
                .unwrap(),
        );
        let (status, body) = translate(
            TranslateTo::Bedrock,
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            br#"{"message":"Too many requests"}"#,
        );
        assert_eq!(status, 429);
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(
            body["error"]["message"],
            "ThrottlingException: Too many requests"
        );
        let (status, body) = translate(
            TranslateTo::Bedrock,
            StatusCode::SERVICE_UNAVAILABLE,
            &HeaderMap::new(),
            br#"{"__type":"com.amazon#ServiceUnavailableException","message":"busy"}"#,
        );
        assert_eq!(
            (status.as_u16(), body["error"]["type"].as_str()),
            (529, Some("overloaded_error"))
        );
        assert_eq!(
            bedrock_code("modelStreamErrorException"),
            Some((500, "api_error"))
        );
    }

    #[test]
    fn vertex_errors_pass_anthropic_shapes_and_map_google_ones() {
        let (status, body) = translate(
            TranslateTo::Vertex,
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            br#"[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]"#,
        );
        assert_eq!(status, 429);
        assert_eq!(body["error"]["type"], "rate_limit_error");
        let anthropic =
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#;
        let (status, body) = translate(
            TranslateTo::Vertex,
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            anthropic,
        );
        assert_eq!(status, 400);
        assert_eq!(body, serde_json::from_slice::<Value>(anthropic).unwrap());
    }
}
