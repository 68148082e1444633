//! Google Vertex AI: tokens from gcp_auth (a service account made at test time, checked by a
//! fake token endpoint) and from a metadata server emulator, applied as bearers, refreshed
//! on 401.

use std::sync::Arc;
use std::time::Duration;

use crate::support::google::ServiceAccount;
use crate::support::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::sync::Semaphore;

const RAW_PREDICT: &str = "/vertex/v1/projects/test-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict";
const STREAM_RAW_PREDICT: &str = "/vertex/v1/projects/test-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict";

fn vertex_config(upstream: &str, extra: &str) -> String {
    let table = format!("kind = \"google\"\n{extra}");
    one_route("google", &table, "/vertex", upstream)
}

/// A fake Vertex that accepts only the bearer `ya29.token-{accepted}`.
async fn vertex_accepting(accepted: &'static str) -> FakeUpstream {
    FakeUpstream::start(move |req| {
        if req.header("authorization") == Some(&format!("Bearer ya29.token-{accepted}")) {
            Reply::status(200, r#"{"type":"message"}"#)
        } else {
            Reply::status(401, r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#)
        }
    })
    .await
}

#[tokio::test]
async fn a_service_account_token_is_injected_on_raw_predict_and_stream_raw_predict() {
    let scratch = Scratch::new();
    let account = ServiceAccount::create(&scratch, 3600).await;
    let upstream = vertex_accepting("1").await;
    let proxy = credproxy(
        &scratch,
        &vertex_config(&upstream.url(), "quota_project = \"billing-project\""),
    )
    .env(
        "GOOGLE_APPLICATION_CREDENTIALS",
        account.key_file.to_str().unwrap(),
    )
    .start();
    for path in [RAW_PREDICT, STREAM_RAW_PREDICT] {
        let answer = send(
            Request::post(proxy.url(path))
                .header("authorization", "Bearer client-dummy")
                .header("x-goog-api-key", "client-dummy")
                .header("anthropic-version", "vertex-2023-10-16")
                .body(Full::new(Bytes::from(
                    r#"{"anthropic_version":"vertex-2023-10-16","messages":[]}"#,
                )))
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(seen.path_and_query, path.trim_start_matches("/vertex"));
        assert_eq!(seen.header("authorization"), Some("Bearer ya29.token-1"));
        assert_eq!(seen.header("x-goog-api-key"), None);
        assert_eq!(seen.header("x-goog-user-project"), Some("billing-project"));
        assert_eq!(seen.header("anthropic-version"), Some("vertex-2023-10-16"));
    }
    assert_eq!(account.issued(), 1, "one token for both requests");
    assert_eq!(account.token_endpoint.count(), 1);

    let (status, stdout, _) = credproxy(&scratch, &vertex_config(&upstream.url(), ""))
        .env(
            "GOOGLE_APPLICATION_CREDENTIALS",
            account.key_file.to_str().unwrap(),
        )
        .run_async("check")
        .await;
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("ok (via service account key)"), "{stdout}");
    assert!(stdout.contains("59m"), "shows the token's expiry: {stdout}");
    assert!(!stdout.contains("ya29"), "{stdout}");
}

#[tokio::test]
async fn stream_raw_predict_events_arrive_one_by_one() {
    let scratch = Scratch::new();
    let account = ServiceAccount::create(&scratch, 3600).await;
    let gate = Arc::new(Semaphore::new(0));
    let events: Vec<Bytes> = [
        "message_start",
        "content_block_delta",
        "content_block_delta",
        "message_stop",
    ]
    .iter()
    .map(|e| Bytes::from(format!("event: {e}\ndata: {{\"type\":\"{e}\"}}\n\n")))
    .collect();
    let upstream = FakeUpstream::gated_stream(&gate, events.clone()).await;
    let key_file = format!("key_file = \"{}\"", account.key_file.display());
    let proxy = credproxy(&scratch, &vertex_config(&upstream.url(), &key_file)).start();
    let response = open_stream(&proxy.url(STREAM_RAW_PREDICT)).await;
    assert_eq!(response.status(), 200);
    let received = read_gated(response.into_body(), &gate).await;
    assert_eq!(received, events);
    assert_eq!(
        upstream.requests()[0].header("authorization"),
        Some("Bearer ya29.token-1")
    );
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once_and_403_passes_through() {
    let scratch = Scratch::new();
    let account = ServiceAccount::create(&scratch, 3600).await;
    let upstream = vertex_accepting("2").await;
    let key_file = format!("key_file = \"{}\"", account.key_file.display());
    let proxy = credproxy(&scratch, &vertex_config(&upstream.url(), &key_file)).start();
    proxy.wait_for_output("credential ready").await;
    let answer = post(&proxy.url(RAW_PREDICT), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "exactly two attempts");
    assert_eq!(seen[0].header("authorization"), Some("Bearer ya29.token-1"));
    assert_eq!(seen[1].header("authorization"), Some("Bearer ya29.token-2"));
    assert_eq!(
        account.issued(),
        2,
        "one new token, from a fresh gcp_auth instance"
    );

    let denied = FakeUpstream::start(|_| {
        Reply::status(403, r#"{"error":{"code":403,"message":"Permission 'aiplatform.endpoints.predict' denied","status":"PERMISSION_DENIED"}}"#)
    })
    .await;
    let proxy = credproxy(&scratch, &vertex_config(&denied.url(), &key_file)).start();
    let answer = post(&proxy.url(RAW_PREDICT), "{}").await;
    assert_eq!(answer.status, 403);
    assert!(answer.text().contains("PERMISSION_DENIED"));
    assert_eq!(denied.count(), 1);
}

#[tokio::test]
async fn the_metadata_server_named_by_gce_metadata_host_supplies_the_token() {
    let metadata = FakeUpstream::start(|req| {
        let expected = "/computeMetadata/v1/instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/cloud-platform";
        if req.header("metadata-flavor") != Some("Google") {
            Reply::status(403, "Missing Metadata-Flavor:Google header.")
        } else if req.path_and_query != expected {
            Reply::status(404, format!("unexpected {}", req.path_and_query))
        } else {
            Reply::status(200, r#"{"access_token":"ya29.token-1","expires_in":3599,"token_type":"Bearer"}"#)
        }
    })
    .await;
    let upstream = vertex_accepting("1").await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &vertex_config(&upstream.url(), ""))
        .env("GCE_METADATA_HOST", &metadata.addr.to_string())
        .start();
    let answer = post(&proxy.url(RAW_PREDICT), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(metadata.count(), 1);

    let (status, stdout, _) = credproxy(&scratch, &vertex_config(&upstream.url(), ""))
        .env("GCE_METADATA_HOST", &metadata.addr.to_string())
        .run_async("check")
        .await;
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("ok (via metadata server)"), "{stdout}");
}

#[tokio::test]
async fn an_unconfigured_chain_fails_fast_with_what_to_set() {
    let upstream = vertex_accepting("1").await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &vertex_config(&upstream.url(), "")).start();
    let answer = tokio::time::timeout(Duration::from_secs(10), post(&proxy.url(RAW_PREDICT), "{}"))
        .await
        .expect("an unconfigured chain must not hang");
    assert_eq!(answer.status, 502);
    let message = answer.error().1;
    assert!(message.contains("no Google credentials found"), "{message}");
    assert!(
        message.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{message}"
    );
    assert_eq!(upstream.count(), 0);

    let (status, stdout, _) = credproxy(&scratch, &vertex_config(&upstream.url(), ""))
        .run_async("check")
        .await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stdout.contains("FAILED: no Google credentials found"),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_embedded_default_serves_vertex_in_the_region_of_cloud_ml_region() {
    let scratch = Scratch::new();
    for (region, host) in [
        ("us-east5", "https://us-east5-aiplatform.googleapis.com"),
        ("global", "https://aiplatform.googleapis.com"),
        ("eu", "https://aiplatform.eu.rep.googleapis.com"),
    ] {
        let (status, stdout, _) = credproxy_default(&scratch)
            .env("CLOUD_ML_REGION", region)
            .env("ANTHROPIC_VERTEX_PROJECT_ID", "my-project")
            .run_async("env")
            .await;
        assert!(status.success());
        assert!(
            stdout.contains(&format!("# route /vertex -> {host} (credential `google`)")),
            "{stdout}"
        );
        for line in [
            "export CLAUDE_CODE_USE_VERTEX=1",
            "export ANTHROPIC_VERTEX_BASE_URL=http://127.0.0.1:8787/vertex/v1",
            "export CLAUDE_CODE_SKIP_VERTEX_AUTH=1",
            &format!("export CLOUD_ML_REGION={region}"),
            "export ANTHROPIC_VERTEX_PROJECT_ID=my-project",
        ] {
            assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
        }
    }
    let proxy = credproxy_default(&scratch)
        .env("ANTHROPIC_API_KEY", "k")
        .start();
    let answer = post(&proxy.url(RAW_PREDICT), "{}").await;
    assert_eq!(answer.status, 502);
    assert!(
        answer.error().1.contains("set CLOUD_ML_REGION"),
        "{}",
        answer.text()
    );
}
