//! The Anthropic Messages API in front of Bedrock and Vertex AI (`translate = "bedrock"` /
//! `"vertex"` on a route), following the Anthropic SDK's own `AnthropicBedrock` and
//! `AnthropicVertex` clients (docs/research/translation.md):
//!
//! - `POST /v1/messages` (streaming or not) and `POST /v1/messages/count_tokens` are
//!   rewritten to the cloud's path and body before the credential is applied, so SigV4 signs
//!   what is sent and the refresh-and-replay rules work unchanged;
//! - `GET /v1/models` is answered from the route's `models` table;
//! - answers come back in the Anthropic shape: Bedrock's event stream re-emitted as SSE frame
//!   by frame ([`eventstream`]), its token count renamed, and the clouds' errors mapped to
//!   Anthropic error types and statuses ([`errors`]).

pub mod bedrock;
pub mod errors;
pub mod eventstream;
pub mod vertex;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Map, Value, json};

pub use crate::config::translate::{TranslateTo, Translation};

/// What a translated request does, so its answer can be translated back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Messages { stream: bool },
    CountTokens,
}

/// A translated request on its way: the route's translation and what the request does.
/// Its request half is [`plan`] (run before the credential is applied); its answer half
/// is [`Translator::reshape`] and [`Translator::rewrite`]. Which cloud it is is asked here
/// and in the per-cloud files only.
#[derive(Debug, Clone, Copy)]
pub struct Translator<'a> {
    pub translation: &'a Translation,
    pub operation: Operation,
}

/// What a translated answer needs before the client may have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reshape {
    /// The Anthropic shape already (Vertex; Bedrock's plain JSON message).
    AsIs,
    /// Bedrock's event stream, re-emitted as SSE frame by frame.
    EventStreamToSse,
    /// Read whole (it is small) and rewritten: an error, Bedrock's token count.
    ReadWhole,
}

impl Translator<'_> {
    pub fn reshape(&self, status: StatusCode, headers: &HeaderMap) -> Reshape {
        let bedrock = self.translation.to == TranslateTo::Bedrock;
        if !status.is_success() || (bedrock && self.operation == Operation::CountTokens) {
            return Reshape::ReadWhole;
        }
        let event_stream = bedrock
            && headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
                v.as_bytes()
                    .starts_with(b"application/vnd.amazon.eventstream")
            });
        if event_stream {
            Reshape::EventStreamToSse
        } else {
            Reshape::AsIs
        }
    }

    /// A whole answer ([`Reshape::ReadWhole`]) in the Anthropic shape; `Err` says what it
    /// lacked.
    pub fn rewrite(
        &self,
        head: &http::response::Parts,
        body: &[u8],
    ) -> Result<(StatusCode, Value), &'static str> {
        if !head.status.is_success() {
            return Ok(errors::translate(
                self.translation.to,
                head.status,
                &head.headers,
                body,
            ));
        }
        bedrock::count_tokens_answer(body)
            .map(|json| (StatusCode::OK, json))
            .ok_or("Bedrock's CountTokens answer has no `inputTokens`")
    }
}

/// A request rewritten for the cloud: the path below the upstream's base, and the body.
#[derive(Debug)]
pub struct Rewritten {
    pub path: String,
    pub body: Bytes,
    pub operation: Operation,
}

/// What a translating route does with a request.
#[derive(Debug)]
pub enum Plan {
    Forward(Rewritten),
    /// Answered by credproxy itself (`GET /v1/models`).
    Answer(StatusCode, Value),
}

/// Why a request cannot be translated (400 or 404 to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("the request body is not a JSON object: {0}")]
    NotJson(String),
    #[error("the request names no `model`")]
    NoModel,
    #[error("model `{0}` cannot be put into a path (`.` and `..` are not models)")]
    BadModel(String),
    #[error(
        "`{method} {path}` is not translated; this route serves POST /v1/messages, POST /v1/messages/count_tokens and GET /v1/models"
    )]
    NotTranslated { method: String, path: String },
}

impl TranslateError {
    pub fn status(&self) -> StatusCode {
        match self {
            TranslateError::NotTranslated { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Rewrites a request on a translating route. `path` is the request path below the
/// route's prefix, without the query (`?beta=true` is dropped, as the SDKs drop it).
pub fn plan(
    translation: &Translation,
    method: &Method,
    path: &str,
    headers: &mut HeaderMap,
    body: &Bytes,
) -> Result<Plan, TranslateError> {
    let path = path.trim_end_matches('/');
    match (method, path) {
        (&Method::GET, "/v1/models") => Ok(Plan::Answer(StatusCode::OK, models(translation))),
        (&Method::POST, "/v1/messages") => {
            let request = json_object(body)?;
            let rewritten = match translation.to {
                TranslateTo::Bedrock => bedrock::messages(translation, request, headers)?,
                TranslateTo::Vertex => vertex::messages(translation, request, headers)?,
            };
            Ok(Plan::Forward(rewritten))
        }
        (&Method::POST, "/v1/messages/count_tokens") => {
            let request = json_object(body)?;
            let rewritten = match translation.to {
                TranslateTo::Bedrock => bedrock::count_tokens(translation, request, headers)?,
                TranslateTo::Vertex => vertex::count_tokens(translation, request, headers)?,
            };
            Ok(Plan::Forward(rewritten))
        }
        _ => Err(TranslateError::NotTranslated {
            method: method.to_string(),
            path: path.chars().take(200).collect(),
        }),
    }
}

fn json_object(body: &Bytes) -> Result<Map<String, Value>, TranslateError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TranslateError::NotJson("it is not an object".to_string())),
        Err(error) => Err(TranslateError::NotJson(error.to_string())),
    }
}

/// The body's `model`, removed (it goes into the path).
fn take_model(request: &mut Map<String, Value>) -> Result<String, TranslateError> {
    match request.remove("model") {
        Some(Value::String(model)) if !model.is_empty() => {
            let before_params = model.split(';').next().unwrap_or("");
            if before_params == "." || before_params == ".." || before_params.is_empty() {
                return Err(TranslateError::BadModel(model));
            }
            Ok(model)
        }
        _ => Err(TranslateError::NoModel),
    }
}

/// `anthropic_version` for the body, unless it has one: the cloud's dated version for the
/// classic `2023-06-01` header (or none), else the client's header as it is (what the
/// SDK's 2.x clients do).
fn set_version(request: &mut Map<String, Value>, headers: &HeaderMap, classic: &str) {
    if request.contains_key("anthropic_version") {
        return;
    }
    let header = headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "2023-06-01");
    let version = header.unwrap_or(classic).to_string();
    request.insert("anthropic_version".to_string(), Value::String(version));
}

fn to_bytes(request: &Map<String, Value>) -> Bytes {
    Bytes::from(serde_json::to_vec(request).expect("a JSON map serialises"))
}

/// `GET /v1/models`: the names this route maps, in the Anthropic list shape.
fn models(translation: &Translation) -> Value {
    let data: Vec<Value> = translation
        .models
        .iter()
        .map(|(name, id)| {
            json!({
                "type": "model",
                "id": name,
                "display_name": name,
                "created_at": "1970-01-01T00:00:00Z",
                "cloud_id": id,
            })
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": translation.models.first().map(|(n, _)| n),
        "last_id": translation.models.last().map(|(n, _)| n),
    })
}

/// Percent-encodes `text`, keeping unreserved characters and `keep` (Python's
/// `urllib.parse.quote(text, safe=keep)`, which the SDKs use for model ids).
pub fn quote(text: &str, keep: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let c = byte as char;
        if c.is_ascii_alphanumeric() || "_.-~".contains(c) || (c.is_ascii() && keep.contains(c)) {
            out.push(c);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_quoted_as_the_sdks_quote_them() {
        assert_eq!(
            quote(
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/jf2sje1c0jnb",
                ":;"
            ),
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fjf2sje1c0jnb"
        );
        assert_eq!(quote("a;b/c d", ":;"), "a;b%2Fc%20d");
        assert_eq!(quote("..%3Bx", ":;"), "..%253Bx");
        assert_eq!(
            quote("claude-sonnet-4-5@20250929", "!$&'()*+,;=:@"),
            "claude-sonnet-4-5@20250929"
        );
    }

    #[test]
    fn the_version_follows_the_header_unless_the_body_has_one() {
        let mut headers = HeaderMap::new();
        let mut body = Map::new();
        set_version(&mut body, &headers, "bedrock-2023-05-31");
        assert_eq!(body["anthropic_version"], "bedrock-2023-05-31");
        headers.insert("anthropic-version", "2026-10-21".parse().unwrap());
        let mut body = Map::new();
        set_version(&mut body, &headers, "bedrock-2023-05-31");
        assert_eq!(body["anthropic_version"], "2026-10-21");
        let mut body = Map::new();
        body.insert("anthropic_version".into(), "mine".into());
        set_version(&mut body, &headers, "x");
        assert_eq!(body["anthropic_version"], "mine");
    }
}
