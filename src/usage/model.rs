//! The model a request asks for, to attribute its usage and price it: the body's `model`
//! (Anthropic, OpenAI, Foundry, credproxy's translated routes), else the path's (Bedrock's
//! and Vertex's, whose bodies do not name it; Azure OpenAI's deployment).

use std::borrow::Cow;

use crate::upstream::percent_decode;

/// Bedrock's model operations: `/model/{id}/{operation}`.
const BEDROCK_OPERATIONS: &[&str] = &[
    "invoke",
    "invoke-with-response-stream",
    "converse",
    "converse-stream",
];
/// Vertex's: `.../models/{model}:{method}`.
const VERTEX_METHODS: &[&str] = &["rawPredict", "streamRawPredict"];

/// The model a request asks for: the JSON body's "model", else from the path: Bedrock
/// `/model/{id}/invoke`, `/invoke-with-response-stream`, `/converse`, `/converse-stream`
/// (id percent-decoded, e.g. ARNs / inference profiles), Vertex
/// `.../publishers/anthropic/models/{model}:rawPredict|:streamRawPredict`,
/// Foundry/Azure OpenAI `/openai/deployments/{name}/...`.
pub fn of_request(path: &str, body: &[u8]) -> Option<String> {
    let named = top_level_string(body, b"model").filter(|m| !m.is_empty());
    match named {
        Some(model) => Some(model.into_owned()),
        None => of_path(path),
    }
}

/// The string value of the top-level member `key` of the JSON object `json`, found
/// without parsing the rest: strings (the bulk of a request: its messages) are skipped
/// with memchr, nested values by counting brackets. A request body is read on every
/// model request, so this is the hot path's cheapest way to its `model` (a full parse of
/// an 8 KiB body costs several microseconds).
fn top_level_string<'a>(json: &'a [u8], key: &[u8]) -> Option<Cow<'a, str>> {
    let mut i = json.iter().position(|b| !b.is_ascii_whitespace())?;
    if json[i] != b'{' {
        return None;
    }
    i += 1;
    let (mut depth, mut at_key, mut wanted) = (1usize, true, false);
    while let Some(&byte) = json.get(i) {
        match byte {
            b'"' => {
                let end = string_end(json, i + 1)?;
                if depth == 1 && at_key {
                    wanted = &json[i + 1..end] == key;
                    at_key = false;
                } else if depth == 1 && wanted {
                    return serde_json::from_slice(&json[i..=end]).ok();
                }
                i = end + 1;
            }
            b'{' | b'[' if depth == 1 && wanted => return None,
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
                i += 1;
            }
            b',' => {
                if depth == 1 {
                    (at_key, wanted) = (true, false);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// The index of the quote that closes the string whose contents start at `from`.
fn string_end(json: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr2(b'"', b'\\', json.get(from..)?)?;
        if json[at] == b'"' {
            return Some(at);
        }
        from = at + 2;
    }
}

fn of_path(path: &str) -> Option<String> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').collect();
    let found = (0..segments.len()).find_map(|i| {
        let at = |k: usize| segments.get(i + k).copied();
        match (segments[i], at(1), at(2), at(3)) {
            ("model", Some(id), Some(operation), _) if BEDROCK_OPERATIONS.contains(&operation) => {
                Some(id)
            }
            ("openai", Some("deployments"), Some(name), _) => Some(name),
            ("publishers", Some(_), Some("models"), Some(last)) => {
                let (model, method) = last.rsplit_once(':')?;
                VERTEX_METHODS.contains(&method).then_some(model)
            }
            _ => None,
        }
    })?;
    let decoded = String::from_utf8(percent_decode(found.as_bytes())).ok()?;
    // Vertex's token counting is `models/count-tokens:rawPredict`: no model of its own.
    (!decoded.is_empty() && decoded != "count-tokens").then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_skips_escapes_nesting_and_other_members() {
        let body = br#" { "messages": [{"content": "a \" quote and a \\"}, {"model": "nested"}],
            "system": "say \"model\": \"x\"", "model" : "claude-\u0061", "stream": true }"#;
        assert_eq!(
            top_level_string(body, b"model").as_deref(),
            Some("claude-a")
        );
        assert_eq!(top_level_string(br#"{"model": 7}"#, b"model"), None);
        assert_eq!(
            top_level_string(br#"{"model": {"id": "x"}}"#, b"model"),
            None
        );
        assert_eq!(top_level_string(br#"["model", "x"]"#, b"model"), None);
        assert_eq!(
            top_level_string(br#"{"model": "unterminated"#, b"model"),
            None
        );
    }

    #[test]
    fn the_bodys_model_comes_first() {
        let body = br#"{"max_tokens":1024,"messages":[{"role":"user","content":[{"type":"text","text":"{\"model\":\"not-this\"}"}]}],"metadata":{"model":"nor-this"},"model":"claude-sonnet-4-5","stream":true}"#;
        assert_eq!(
            of_request("/v1/messages?beta=true", body).as_deref(),
            Some("claude-sonnet-4-5")
        );
        // Even on a path that names another (the body is what the upstream obeys).
        assert_eq!(
            of_request(
                "/openai/deployments/gpt-4o/chat/completions",
                br#"{"model":"gpt-4o-mini"}"#
            )
            .as_deref(),
            Some("gpt-4o-mini")
        );
    }

    #[test]
    fn without_a_model_in_the_body_the_path_names_it() {
        let cases = [
            // Bedrock, as the Anthropic SDKs send an inference profile (`:` kept, `/` encoded)...
            (
                "/bedrock/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fabc/invoke",
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
            ),
            // ...and as botocore does (`:` encoded too).
            (
                "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream",
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            ),
            (
                "/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
                "anthropic.claude-3-haiku-20240307-v1:0",
            ),
            (
                "/model/amazon.nova-pro-v1%3A0/converse-stream",
                "amazon.nova-pro-v1:0",
            ),
            (
                "/vertex/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
                "claude-sonnet-4-5@20250929",
            ),
            (
                "/v1/projects/p/locations/global/publishers/anthropic/models/claude-opus-4-1%4020250805:rawPredict",
                "claude-opus-4-1@20250805",
            ),
            (
                "/openai/deployments/my-gpt-4o/chat/completions?api-version=2024-10-21",
                "my-gpt-4o",
            ),
        ];
        for (path, model) in cases {
            assert_eq!(of_request(path, b"").as_deref(), Some(model), "{path}");
            // A JSON body without `model` (Bedrock's and Vertex's) changes nothing.
            let body =
                br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}"#;
            assert_eq!(of_request(path, body).as_deref(), Some(model), "{path}");
        }
    }

    #[test]
    fn no_model_where_none_is_named() {
        for path in [
            "/v1/messages",
            "/model/anthropic.claude-3-haiku-20240307-v1:0/count-tokens",
            "/model/invoke",
            "/v1/projects/p/locations/l/publishers/anthropic/models/count-tokens:rawPredict",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude:predict",
            "/openai/deployments/",
        ] {
            assert_eq!(of_request(path, b""), None, "{path}");
        }
        // A body that is not JSON, a `model` that is no string, or an empty one: the path.
        assert_eq!(of_request("/v1/messages", b"model=x"), None);
        assert_eq!(of_request("/v1/messages", br#"{"model":5}"#), None);
        assert_eq!(
            of_request("/model/m/invoke", br#"{"model":""}"#).as_deref(),
            Some("m")
        );
        // Escapes in the body's model are decoded.
        assert_eq!(
            of_request("/", br#"{"model":"a\/b"}"#).as_deref(),
            Some("a/b")
        );
    }
}
