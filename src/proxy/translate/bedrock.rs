//! Bedrock's InvokeModel and CountTokens, as `AnthropicBedrock` calls them: the model in
//! the path (`quote(id, safe=":;")`), `model` and `stream` out of the body,
//! `anthropic_version` in, and the `anthropic-beta` header's values in `anthropic_beta`.

use base64::Engine;
use http::HeaderMap;
use serde_json::{Map, Value, json};

use super::{Operation, Rewritten, TranslateError, Translation, set_version, take_model, to_bytes};

/// The body version Bedrock's Claude models accept for the classic API version.
const VERSION: &str = "bedrock-2023-05-31";

fn prepare(
    translation: &Translation,
    mut request: Map<String, Value>,
    headers: &HeaderMap,
) -> Result<(String, bool, Map<String, Value>), TranslateError> {
    let model = take_model(&mut request)?;
    let id = super::quote(translation.model_id(&model), ":;");
    let stream = matches!(request.remove("stream"), Some(Value::Bool(true)));
    set_version(&mut request, headers, VERSION);
    if !request.contains_key("anthropic_beta") {
        let betas: Vec<Value> = headers
            .get_all("anthropic-beta")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(|b| Value::String(b.to_string()))
            .collect();
        if !betas.is_empty() {
            request.insert("anthropic_beta".to_string(), Value::Array(betas));
        }
    }
    Ok((id, stream, request))
}

pub fn messages(
    translation: &Translation,
    request: Map<String, Value>,
    headers: &mut HeaderMap,
) -> Result<Rewritten, TranslateError> {
    let (id, stream, request) = prepare(translation, request, headers)?;
    headers.remove("anthropic-version");
    let action = if stream {
        "invoke-with-response-stream"
    } else {
        "invoke"
    };
    Ok(Rewritten {
        path: format!("/model/{id}/{action}"),
        body: to_bytes(&request),
        operation: Operation::Messages { stream },
    })
}

/// Bedrock's CountTokens wraps an InvokeModel body (which needs `max_tokens`) in base64:
/// `{"input":{"invokeModel":{"body":"…"}}}`.
pub fn count_tokens(
    translation: &Translation,
    request: Map<String, Value>,
    headers: &mut HeaderMap,
) -> Result<Rewritten, TranslateError> {
    let (id, _, mut request) = prepare(translation, request, headers)?;
    headers.remove("anthropic-version");
    if !request.contains_key("max_tokens") {
        request.insert("max_tokens".to_string(), json!(1));
    }
    let inner = base64::engine::general_purpose::STANDARD.encode(to_bytes(&request));
    let wrapped = json!({"input": {"invokeModel": {"body": inner}}});
    Ok(Rewritten {
        path: format!("/model/{id}/count-tokens"),
        body: bytes::Bytes::from(wrapped.to_string()),
        operation: Operation::CountTokens,
    })
}

/// `{"inputTokens": N}` → `{"input_tokens": N}`; `None` if the answer is not that.
pub fn count_tokens_answer(body: &[u8]) -> Option<Value> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let tokens = answer.get("inputTokens")?.as_u64()?;
    Some(json!({ "input_tokens": tokens }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::translate::TranslateTo;

    fn translation() -> Translation {
        Translation {
            to: TranslateTo::Bedrock,
            models: vec![(
                "claude-sonnet-4-5".into(),
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0".into(),
            )],
            project: None,
            region: None,
        }
    }

    #[test]
    fn messages_move_model_stream_and_betas() {
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-beta", "a-1, b-2,".parse().unwrap());
        headers.insert("anthropic-version", "2023-06-01".parse().unwrap());
        let request = serde_json::from_str(
            r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":5,"messages":[]}"#,
        )
        .unwrap();
        let rewritten = messages(&translation(), request, &mut headers).unwrap();
        assert_eq!(
            rewritten.path,
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke-with-response-stream"
        );
        assert_eq!(rewritten.operation, Operation::Messages { stream: true });
        let body: Value = serde_json::from_slice(&rewritten.body).unwrap();
        assert_eq!(
            body,
            json!({"max_tokens":5,"messages":[],"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["a-1","b-2"]})
        );
        assert!(headers.get("anthropic-version").is_none());
    }

    #[test]
    fn count_tokens_wraps_an_invoke_body() {
        let mut headers = HeaderMap::new();
        let request =
            serde_json::from_str(r#"{"model":"anthropic.claude-x","messages":[]}"#).unwrap();
        let rewritten = count_tokens(&translation(), request, &mut headers).unwrap();
        assert_eq!(rewritten.path, "/model/anthropic.claude-x/count-tokens");
        let body: Value = serde_json::from_slice(&rewritten.body).unwrap();
        let inner = base64::engine::general_purpose::STANDARD
            .decode(body["input"]["invokeModel"]["body"].as_str().unwrap())
            .unwrap();
        let inner: Value = serde_json::from_slice(&inner).unwrap();
        assert_eq!(
            inner,
            json!({"messages":[],"anthropic_version":"bedrock-2023-05-31","max_tokens":1})
        );
        assert_eq!(
            count_tokens_answer(br#"{"inputTokens":42}"#),
            Some(json!({"input_tokens":42}))
        );
    }
}
