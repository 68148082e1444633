//! Vertex AI's rawPredict, as `AnthropicVertex` calls it: the model in the path (quoted
//! with `!$&'()*+,;=:@` kept, then `;` encoded), `model` out of the body, `stream` kept,
//! `anthropic_version` in; count_tokens keeps `model` in the body.

use http::HeaderMap;
use serde_json::{Map, Value};

use super::{Operation, Rewritten, TranslateError, Translation, set_version, take_model, to_bytes};

const VERSION: &str = "vertex-2023-10-16";
const SAFE: &str = "!$&'()*+,;=:@";

fn base(translation: &Translation) -> String {
    let project = translation.project.as_deref().unwrap_or_default();
    let region = translation.region.as_deref().unwrap_or_default();
    format!(
        "/v1/projects/{}/locations/{}/publishers/anthropic/models",
        super::quote(project, SAFE),
        super::quote(region, SAFE)
    )
}

pub fn messages(
    translation: &Translation,
    mut request: Map<String, Value>,
    headers: &mut HeaderMap,
) -> Result<Rewritten, TranslateError> {
    let model = take_model(&mut request)?;
    let stream = matches!(request.get("stream"), Some(Value::Bool(true)));
    set_version(&mut request, headers, VERSION);
    headers.remove("anthropic-version");
    let id = super::quote(translation.model_id(&model), SAFE).replace(';', "%3B");
    let specifier = if stream {
        "streamRawPredict"
    } else {
        "rawPredict"
    };
    Ok(Rewritten {
        path: format!("{}/{id}:{specifier}", base(translation)),
        body: to_bytes(&request),
        operation: Operation::Messages { stream },
    })
}

pub fn count_tokens(
    translation: &Translation,
    mut request: Map<String, Value>,
    headers: &mut HeaderMap,
) -> Result<Rewritten, TranslateError> {
    let model = take_model(&mut request)?;
    request.insert(
        "model".to_string(),
        Value::String(translation.model_id(&model).to_string()),
    );
    set_version(&mut request, headers, VERSION);
    headers.remove("anthropic-version");
    Ok(Rewritten {
        path: format!("{}/count-tokens:rawPredict", base(translation)),
        body: to_bytes(&request),
        operation: Operation::CountTokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::translate::TranslateTo;
    use serde_json::json;

    #[test]
    fn paths_and_bodies_follow_the_vertex_client() {
        let translation = Translation {
            to: TranslateTo::Vertex,
            models: vec![(
                "claude-sonnet-4-5".into(),
                "claude-sonnet-4-5@20250929".into(),
            )],
            project: Some("my-project".into()),
            region: Some("us-east5".into()),
        };
        let mut headers = HeaderMap::new();
        let request = serde_json::from_str(
            r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":5,"messages":[]}"#,
        )
        .unwrap();
        let rewritten = messages(&translation, request, &mut headers).unwrap();
        assert_eq!(
            rewritten.path,
            "/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
        );
        let body: Value = serde_json::from_slice(&rewritten.body).unwrap();
        assert_eq!(
            body,
            json!({"stream":true,"max_tokens":5,"messages":[],"anthropic_version":"vertex-2023-10-16"})
        );
        let request = serde_json::from_str(r#"{"model":"a;b","messages":[]}"#).unwrap();
        let rewritten = count_tokens(&translation, request, &mut headers).unwrap();
        assert_eq!(
            rewritten.path,
            "/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
        );
        let body: Value = serde_json::from_slice(&rewritten.body).unwrap();
        assert_eq!(body["model"], "a;b");
        let request = serde_json::from_str(r#"{"model":"a;b/c","messages":[]}"#).unwrap();
        let rewritten = messages(&translation, request, &mut headers).unwrap();
        assert!(
            rewritten.path.ends_with("/a%3Bb%2Fc:rawPredict"),
            "{}",
            rewritten.path
        );
    }
}
