//! The plain Anthropic Messages API in front of Bedrock and Vertex: a client that speaks
//! only the Anthropic API (no Bedrock or Vertex variant) streams, counts tokens and lists
//! models through a translating route, against fakes of the two clouds.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use credproxy::proxy::translate::eventstream;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::support::*;

const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// What the Anthropic API sends for a short answer, event by event.
const EVENTS: &[&str] = &[
    r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":9,"output_tokens":1}}}"#,
    r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
    r#"{"type":"content_block_stop","index":0}"#,
    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#,
    r#"{"type":"message_stop"}"#,
];

/// The SSE the Anthropic API would have sent for `EVENTS`.
fn anthropic_sse(events: &[&str]) -> String {
    events
        .iter()
        .map(|e| {
            let kind = serde_json::from_str::<Value>(e).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string();
            format!("event: {kind}\ndata: {e}\n\n")
        })
        .collect()
}

fn frame(headers: &[(&'static str, &str)], payload: Vec<u8>) -> Bytes {
    Bytes::from(eventstream::encode_frame(headers, payload))
}

fn chunk(event: &str) -> Bytes {
    Bytes::from(eventstream::encode_chunk(event))
}

fn bedrock_config(upstream: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
[credentials.aws]
kind = "aws"
region = "us-east-1"

[[routes]]
prefix = "/anthropic-on-bedrock"
upstream = "{upstream}"
credential = "aws"
translate = "bedrock"
models = {{ "claude-sonnet-4-5" = "us.anthropic.claude-sonnet-4-5-20250929-v1:0" }}
"#
    )
}

/// credproxy with the Bedrock translating route and static AWS keys.
fn start_bedrock(scratch: &Scratch, upstream: &FakeUpstream) -> Running {
    credproxy(scratch, &bedrock_config(&upstream.url()))
        .env("AWS_ACCESS_KEY_ID", AKID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .start()
}

async fn post_json(url: &str, body: Value, beta: Option<&str>) -> Answer {
    let mut request = Request::post(url)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "anything");
    if let Some(beta) = beta {
        request = request.header("anthropic-beta", beta);
    }
    send(
        request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn bedrock_streams_as_anthropic_sse_event_by_event_with_verified_signatures() {
    let gate = Arc::new(Semaphore::new(0));
    // One frame per network chunk, each sent only once the client has the event before it
    // (a frame split across chunks is covered by the decoder's unit tests).
    let frames: Vec<Bytes> = EVENTS.iter().map(|e| chunk(e)).collect();
    let gate_for_fake = Arc::clone(&gate);
    let upstream = FakeUpstream::start(move |request| {
        let signed = sigv4::verify(
            &request.method,
            &request.path_and_query,
            &request.headers,
            &request.body,
            |key| (key == AKID).then(|| SECRET.to_string()),
        );
        if let Err(problem) = signed {
            return Reply::status(403, format!(r#"{{"message":"{problem}"}}"#));
        }
        if request
            .path_and_query
            .ends_with("/invoke-with-response-stream")
        {
            Reply::Stream {
                headers: vec![("content-type", "application/vnd.amazon.eventstream".into())],
                chunks: frames.clone(),
                gate: Some(Arc::clone(&gate_for_fake)),
            }
        } else if request.path_and_query.ends_with("/count-tokens") {
            Reply::status(200, r#"{"inputTokens":17}"#)
        } else {
            Reply::status(
                200,
                r#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"Hello"}]}"#,
            )
        }
    })
    .await;
    let scratch = Scratch::new();
    let proxy = start_bedrock(&scratch, &upstream);
    let base = proxy.url("/anthropic-on-bedrock");

    // Streaming: each event reaches the client before the fake sends the next frame.
    let request = Request::post(format!("{base}/v1/messages?beta=true"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        )
        .body(Full::new(Bytes::from(
            json!({"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,
                   "messages":[{"role":"user","content":"hi"}]})
            .to_string(),
        )))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let received = read_gated(response.into_body(), &gate).await;
    let text: String = received
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(
        text,
        anthropic_sse(EVENTS),
        "byte for byte what Anthropic sends"
    );
    assert_eq!(
        received.len(),
        EVENTS.len(),
        "one frame per event, sent as it completed"
    );
    let seen = &upstream.requests()[0];
    assert_eq!(
        seen.path_and_query,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke-with-response-stream"
    );
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert!(
        body.get("model").is_none() && body.get("stream").is_none(),
        "{body}"
    );
    assert_eq!(body["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(
        body["anthropic_beta"],
        json!(["claude-code-20250219", "interleaved-thinking-2025-05-14"])
    );

    // Not streaming, a cloud id used as it is, count_tokens and the model list.
    let answer = post_json(
        &format!("{base}/v1/messages"),
        json!({"model":"anthropic.claude-3-haiku","max_tokens":8,"messages":[]}),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["content"][0]["text"], "Hello");
    assert_eq!(
        upstream.requests()[1].path_and_query,
        "/model/anthropic.claude-3-haiku/invoke"
    );
    let count = post_json(
        &format!("{base}/v1/messages/count_tokens"),
        json!({"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}),
        None,
    )
    .await;
    assert_eq!(count.status, 200, "{}", count.text());
    assert_eq!(count.json(), json!({"input_tokens": 17}));
    let wrapped: Value = serde_json::from_slice(&upstream.requests()[2].body).unwrap();
    let inner = base64::engine::general_purpose::STANDARD
        .decode(wrapped["input"]["invokeModel"]["body"].as_str().unwrap())
        .unwrap();
    let inner: Value = serde_json::from_slice(&inner).unwrap();
    assert_eq!(inner["messages"][0]["content"], "hi");
    let models = get(&format!("{base}/v1/models")).await;
    assert_eq!(models.json()["data"][0]["id"], "claude-sonnet-4-5");
    assert_eq!(
        upstream.count(),
        3,
        "the model list is answered by credproxy"
    );
}

#[tokio::test]
async fn bedrock_errors_and_exception_frames_become_anthropic_errors() {
    let upstream = FakeUpstream::start(|request| {
        if request.path_and_query.contains("throttled") {
            Reply::Full {
                status: 429,
                headers: vec![
                    ("content-type", "application/json".into()),
                    (
                        "x-amzn-errortype",
                        "ThrottlingException:http://internal.amazon.com/coral/".into(),
                    ),
                ],
                body: Bytes::from(
                    r#"{"message":"Too many requests, please wait before trying again."}"#,
                ),
            }
        } else {
            let exception = frame(
                &[
                    (":exception-type", "modelStreamErrorException"),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                br#"{"message":"the model stopped"}"#.to_vec(),
            );
            Reply::Stream {
                headers: vec![("content-type", "application/vnd.amazon.eventstream".into())],
                chunks: vec![chunk(EVENTS[0]), exception, chunk(EVENTS[1])],
                gate: None,
            }
        }
    })
    .await;
    let scratch = Scratch::new();
    let proxy = start_bedrock(&scratch, &upstream);
    let base = proxy.url("/anthropic-on-bedrock");
    let answer = post_json(
        &format!("{base}/v1/messages"),
        json!({"model":"throttled","max_tokens":8,"messages":[]}),
        None,
    )
    .await;
    assert_eq!(answer.status, 429);
    let (kind, message) = answer.error();
    assert_eq!(kind, "rate_limit_error");
    assert!(message.contains("Too many requests"), "{message}");

    let answer = post_json(
        &format!("{base}/v1/messages"),
        json!({"model":"claude-sonnet-4-5","max_tokens":8,"stream":true,"messages":[]}),
        None,
    )
    .await;
    let text = answer.text();
    let expected_start = anthropic_sse(&EVENTS[..1]);
    assert!(text.starts_with(&expected_start), "{text}");
    let rest = &text[expected_start.len()..];
    assert!(rest.starts_with("event: error\ndata: "), "{rest}");
    assert!(rest.contains(r#""type":"api_error""#), "{rest}");
    assert!(
        rest.contains("modelStreamErrorException: the model stopped"),
        "{rest}"
    );
    assert!(
        !rest.contains("content_block_start"),
        "the stream ends at the error"
    );

    let unknown = post_json(&format!("{base}/v1/complete"), json!({}), None).await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.error().1.contains("POST /v1/messages"),
        "{}",
        unknown.text()
    );
}

#[tokio::test]
async fn vertex_passes_sse_through_and_rewrites_paths() {
    let sse = anthropic_sse(EVENTS);
    let upstream = FakeUpstream::start(move |request| {
        if !request
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer ya29.token-"))
        {
            return Reply::status(401, "{}");
        }
        if request.path_and_query.ends_with(":streamRawPredict") {
            Reply::Full {
                status: 200,
                headers: vec![("content-type", "text/event-stream".into())],
                body: Bytes::from(sse.clone()),
            }
        } else if request.path_and_query.ends_with("count-tokens:rawPredict") {
            Reply::status(200, r#"{"input_tokens":5}"#)
        } else {
            Reply::status(
                429,
                r#"[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]"#,
            )
        }
    })
    .await;
    let scratch = Scratch::new();
    let account = google::ServiceAccount::create(&scratch, 3600).await;
    let config = format!(
        r#"listen = "127.0.0.1:0"
[credentials.vertex]
kind = "google"
project = "my-project"
region = "us-east5"
key_file = "{}"

[credentials.key]
kind = "api_key"
value = "k"

[[routes]]
prefix = "/anthropic-on-vertex"
upstream = "{}"
credential = "vertex"
translate = "vertex"
models = {{ "claude-sonnet-4-5" = "claude-sonnet-4-5@20250929" }}
"#,
        account.key_file.display(),
        upstream.url()
    );
    // A translation must match its credential's kind.
    let refused = format!(
        "{config}\n[[routes]]\nprefix = \"/x\"\nupstream = \"{}\"\ncredential = \"key\"\ntranslate = \"vertex\"\n",
        upstream.url()
    );
    let (status, _, stderr) = credproxy(&scratch, &refused).run_async("check").await;
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("needs a credential of kind google"),
        "{stderr}"
    );

    let proxy = credproxy(&scratch, &config).start();
    let base = proxy.url("/anthropic-on-vertex");
    let answer = post_json(
        &format!("{base}/v1/messages"),
        json!({"model":"claude-sonnet-4-5","max_tokens":8,"stream":true,"messages":[]}),
        Some("interleaved-thinking-2025-05-14"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), anthropic_sse(EVENTS));
    let seen = &upstream.requests()[0];
    assert_eq!(
        seen.path_and_query,
        "/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
    );
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["anthropic_version"], "vertex-2023-10-16");
    assert_eq!(body["stream"], true);
    assert!(body.get("model").is_none());
    assert_eq!(
        seen.header("anthropic-beta"),
        Some("interleaved-thinking-2025-05-14"),
        "Vertex keeps betas in the header"
    );
    let count = post_json(
        &format!("{base}/v1/messages/count_tokens"),
        json!({"model":"claude-sonnet-4-5","messages":[]}),
        None,
    )
    .await;
    assert_eq!(count.json(), json!({"input_tokens": 5}));
    let counted: Value = serde_json::from_slice(&upstream.requests()[1].body).unwrap();
    assert_eq!(counted["model"], "claude-sonnet-4-5@20250929");
    let limited = post_json(
        &format!("{base}/v1/messages"),
        json!({"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}),
        None,
    )
    .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.error().0, "rate_limit_error");
}

#[tokio::test]
async fn an_expired_token_answer_to_a_translated_request_refreshes_and_replays_once() {
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    let upstream = FakeUpstream::start(move |_| {
        if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::Full {
                status: 403,
                headers: vec![
                    ("content-type", "application/json".into()),
                    (
                        "x-amzn-errortype",
                        "ExpiredTokenException:http://internal.amazon.com/coral/".into(),
                    ),
                ],
                body: Bytes::from(
                    r#"{"message":"The security token included in the request is expired"}"#,
                ),
            }
        } else {
            Reply::status(200, r#"{"id":"msg_2","type":"message","content":[]}"#)
        }
    })
    .await;
    let scratch = Scratch::new();
    let proxy = start_bedrock(&scratch, &upstream);
    let answer = post_json(
        &proxy.url("/anthropic-on-bedrock/v1/messages"),
        json!({"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "replayed once");
    assert_eq!(
        seen[0].body, seen[1].body,
        "the same translated body, signed afresh"
    );
    assert_eq!(seen[1].path_and_query, seen[0].path_and_query);
}
