//! AWS: SigV4 verified by an independent implementation, credentials from the real
//! aws-config chain pointed at local files and a fake container endpoint, AWS's own
//! auth-failure answers, event streams, Bedrock API keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::support::sigv4::{Signed, verify};
use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::Full;
use tokio::sync::Semaphore;

const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// Routes `/bedrock` to `upstream` with an `aws` credential.
fn aws_config(upstream: &str, extra: &str) -> String {
    let table = format!("kind = \"aws\"\nregion = \"us-east-1\"\n{extra}");
    one_route("aws", &table, "/bedrock", upstream)
}

/// An AWS JSON error: the type in `x-amzn-ErrorType`, the message in the body.
fn aws_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::Full {
        status,
        headers: vec![(
            "x-amzn-errortype",
            format!("{kind}:http://internal.amazon.com/coral/com.amazon.coral.service/"),
        )],
        body: Bytes::from(format!(r#"{{"message":"{message}"}}"#)),
    }
}

fn verified(req: &Recorded, secrets: &HashMap<String, String>) -> Result<Signed, String> {
    verify(
        &req.method,
        &req.path_and_query,
        &req.headers,
        &req.body,
        |k| secrets.get(k).cloned(),
    )
}

/// A fake Bedrock that answers 200 only to requests whose signature verifies.
async fn verifying_upstream(secrets: HashMap<String, String>) -> FakeUpstream {
    FakeUpstream::start(move |req| match verified(req, &secrets) {
        Ok(_) => Reply::status(200, r#"{"type":"message"}"#),
        Err(why) => Reply::Full {
            status: 403,
            headers: vec![(
                "x-amzn-errortype",
                "InvalidSignatureException:http://internal.amazon.com/".into(),
            )],
            body: Bytes::from(format!(
                "{{\"message\":\"{}\"}}",
                why.lines().next().unwrap_or("")
            )),
        },
    })
    .await
}

// ── The verifier itself, against AWS's published signing test suite ────────

fn vector_headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_str(v).unwrap()))
        .collect()
}

#[test]
fn the_test_verifier_accepts_aws_published_vectors_and_rejects_changes() {
    let secret = |_: &str| Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string());
    let auth = |signed: &str, sig: &str| {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={sig}"
        )
    };
    // post-vanilla
    let headers = vector_headers(&[
        ("host", "example.amazonaws.com"),
        ("x-amz-date", "20150830T123600Z"),
        (
            "authorization",
            &auth(
                "host;x-amz-date",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
        ),
    ]);
    verify("POST", "/", &headers, b"", secret).unwrap();
    assert!(
        verify("GET", "/", &headers, b"", secret).is_err(),
        "another method"
    );
    assert!(
        verify("POST", "/", &headers, b"x", secret).is_err(),
        "another body"
    );
    // get-vanilla-with-session-token
    let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
    let headers = vector_headers(&[
        ("host", "example.amazonaws.com"),
        ("x-amz-date", "20150830T123600Z"),
        ("x-amz-security-token", token),
        (
            "authorization",
            &auth(
                "host;x-amz-date;x-amz-security-token",
                "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
            ),
        ),
    ]);
    verify("GET", "/", &headers, b"", secret).unwrap();
    // get-vanilla-query-unreserved
    let unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let headers = vector_headers(&[
        ("host", "example.amazonaws.com"),
        ("x-amz-date", "20150830T123600Z"),
        (
            "authorization",
            &auth(
                "host;x-amz-date",
                "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
            ),
        ),
    ]);
    verify(
        "GET",
        &format!("/?{unreserved}={unreserved}"),
        &headers,
        b"",
        secret,
    )
    .unwrap();
}

// ── Signing ──────────────────────────────────────────────────────────────────

#[tokio::test]
async fn sigv4_signatures_verify_for_bedrock_paths_with_and_without_a_session_token() {
    for token in [None, Some("FwoGZXIvYXdzEJr//////////wEaDOeXAMPLETOKEN+/=")] {
        let secrets = HashMap::from([(AKID.to_string(), SECRET.to_string())]);
        let upstream = verifying_upstream(secrets.clone()).await;
        let scratch = Scratch::new();
        let mut spawn = credproxy(&scratch, &aws_config(&upstream.url(), ""))
            .env("AWS_ACCESS_KEY_ID", AKID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET);
        if let Some(token) = token {
            spawn = spawn.env("AWS_SESSION_TOKEN", token);
        }
        let proxy = spawn.start();
        let models = [
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fabc123",
        ];
        let body = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
        for model in models {
            for action in ["invoke", "invoke-with-response-stream"] {
                let answer = send(
                    Request::post(proxy.url(&format!("/bedrock/model/{model}/{action}")))
                        .header("content-type", "application/json")
                        .header("anthropic-version", "2023-06-01")
                        .header("x-amz-date", "20000101T000000Z")
                        .header("x-amz-security-token", "client-token")
                        .header("authorization", "AWS4-HMAC-SHA256 client-signature")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap(),
                )
                .await;
                assert_eq!(answer.status, 200, "{model} {action}: {}", answer.text());
                let seen = upstream.requests().pop().unwrap();
                assert_eq!(
                    seen.path_and_query,
                    format!("/model/{model}/{action}"),
                    "path bytes kept"
                );
                let signed = verified(&seen, &secrets).unwrap();
                assert_eq!(
                    (signed.region.as_str(), signed.service.as_str()),
                    ("us-east-1", "bedrock")
                );
                let mut expected =
                    vec!["content-type", "host", "x-amz-content-sha256", "x-amz-date"];
                if token.is_some() {
                    expected.push("x-amz-security-token");
                }
                assert_eq!(
                    signed.signed_headers, expected,
                    "a minimal header set is signed"
                );
                assert_eq!(
                    seen.header("x-amz-security-token"),
                    token,
                    "the client's token is gone"
                );
                assert_eq!(
                    seen.header("anthropic-version"),
                    Some("2023-06-01"),
                    "passed, unsigned"
                );

                let mut tampered = seen.clone();
                tampered.body = Bytes::from(body.replace("hi", "ho"));
                assert!(
                    verified(&tampered, &secrets).is_err(),
                    "a tampered body fails verification"
                );
            }
        }
    }
}

#[tokio::test]
async fn credentials_come_from_a_profile_and_from_credential_process() {
    let secrets = HashMap::from([
        ("AKIAPROFILE".to_string(), "profile-secret".to_string()),
        ("AKIAPROCESS".to_string(), "process-secret".to_string()),
    ]);
    let upstream = verifying_upstream(secrets.clone()).await;
    let scratch = Scratch::new();
    let aws = scratch.path("home/.aws");
    std::fs::create_dir_all(&aws).unwrap();
    let process = scratch.write(
        "process.sh",
        "#!/bin/sh\nprintf '{\"Version\":1,\"AccessKeyId\":\"AKIAPROCESS\",\"SecretAccessKey\":\"process-secret\",\"SessionToken\":\"tok\",\"Expiration\":\"2099-01-01T00:00:00Z\"}'\n",
    );
    std::fs::write(
        aws.join("credentials"),
        "[dev]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile tools]\ncredential_process = sh {}\n",
            process.display()
        ),
    )
    .unwrap();

    for (profile, key, link) in [
        ("dev", "AKIAPROFILE", "profile"),
        ("tools", "AKIAPROCESS", "credential_process"),
    ] {
        let config = aws_config(&upstream.url(), &format!("profile = \"{profile}\""));
        let proxy = credproxy(&scratch, &config).start();
        let answer = post(&proxy.url("/bedrock/model/m/invoke"), "{}").await;
        assert_eq!(answer.status, 200, "{profile}: {}", answer.text());
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(verified(&seen, &secrets).unwrap().access_key, key);

        let (status, stdout, stderr) = credproxy(&scratch, &config).run_async("check").await;
        assert!(status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains(&format!("aws chain (profile {profile})")),
            "{stdout}"
        );
        assert!(stdout.contains(&format!("via {link}")), "{stdout}");
        assert!(!stdout.contains("secret"), "{stdout}");
    }
    // An expiring credential from credential_process lives until its Expiration.
    let (_, stdout, _) = credproxy(
        &scratch,
        &aws_config(&upstream.url(), "profile = \"tools\""),
    )
    .run_async("check")
    .await;
    assert!(stdout.contains("years"), "shows the time left: {stdout}");
}

/// A fake ECS/EKS container credentials endpoint: each fetch issues a new key pair that
/// expires `lifetime` later, and remembers when.
struct ContainerEndpoint {
    upstream: FakeUpstream,
    issued: Arc<Mutex<Vec<(String, String, SystemTime)>>>,
}

impl ContainerEndpoint {
    async fn start(lifetime: Duration) -> Self {
        let issued = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&issued);
        let count = AtomicUsize::new(0);
        let upstream = FakeUpstream::start(move |req| {
            if req.header("authorization") != Some("container-auth-token") {
                return Reply::status(401, "{}");
            }
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let (key, secret) = (format!("AKIACONTAINER{n}"), format!("container-secret-{n}"));
            let expires = SystemTime::now() + lifetime;
            record.lock().unwrap().push((key.clone(), secret.clone(), expires));
            Reply::status(
                200,
                format!(
                    r#"{{"AccessKeyId":"{key}","SecretAccessKey":"{secret}","Token":"token-{n}","Expiration":"{}"}}"#,
                    humantime::format_rfc3339_seconds(expires)
                ),
            )
        })
        .await;
        ContainerEndpoint { upstream, issued }
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{}/v2/credentials/abc", self.upstream.url()),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "container-auth-token".to_string(),
            ),
        ]
    }

    fn fetches(&self) -> usize {
        self.issued.lock().unwrap().len()
    }

    fn secrets(&self) -> HashMap<String, String> {
        self.issued
            .lock()
            .unwrap()
            .iter()
            .map(|(k, s, _)| (k.clone(), s.clone()))
            .collect()
    }

    fn expiry_of(&self, key: &str) -> SystemTime {
        self.issued
            .lock()
            .unwrap()
            .iter()
            .find(|(k, _, _)| k == key)
            .unwrap()
            .2
    }
}

#[tokio::test]
async fn container_credentials_are_refreshed_ahead_of_expiry_while_requests_flow() {
    let container = ContainerEndpoint::start(Duration::from_secs(8)).await;
    let times = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let times = Arc::clone(&times);
        FakeUpstream::start(move |req| {
            let key = req
                .header("authorization")
                .and_then(|a| a.split("Credential=").nth(1))
                .and_then(|c| c.split('/').next())
                .unwrap_or("")
                .to_string();
            times.lock().unwrap().push((key, SystemTime::now()));
            Reply::status(200, "{}")
        })
        .await
    };
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &aws_config(&upstream.url(), ""))
        .envs(&container.env())
        .start();
    proxy.wait_for_output("credential ready").await;

    // Requests every 100 ms for ten seconds, bounded by the clock rather than a count so
    // a slow machine does not stretch the run into a fourth key's lifetime.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let answer = post(&proxy.url("/bedrock/model/m/invoke"), "{}").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secrets = container.secrets();
    for seen in upstream.requests() {
        verified(&seen, &secrets).expect("every request signed with an issued key");
    }
    let times = times.lock().unwrap().clone();
    for (key, at) in &times {
        assert!(
            *at < container.expiry_of(key),
            "{key} was used after it expired"
        );
    }
    let first_new = times
        .iter()
        .find(|(k, _)| k == "AKIACONTAINER2")
        .expect("a second key was fetched");
    assert!(
        first_new.1 < container.expiry_of("AKIACONTAINER1"),
        "the refresh came before the first key expired"
    );
    assert!(
        container.fetches() <= 3,
        "the endpoint ran about once per lifetime, not per request: {}",
        container.fetches()
    );
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_request_replayed() {
    let container = ContainerEndpoint::start(Duration::from_secs(3600)).await;
    let upstream = FakeUpstream::start(|req| {
        if req
            .header("authorization")
            .is_some_and(|a| a.contains("AKIACONTAINER1/"))
        {
            aws_error(
                403,
                "ExpiredTokenException",
                "The security token included in the request is expired",
            )
        } else {
            Reply::status(200, "{}")
        }
    })
    .await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &aws_config(&upstream.url(), ""))
        .envs(&container.env())
        .start();
    proxy.wait_for_output("credential ready").await;
    let body = r#"{"messages":[]}"#;
    let answer = post(&proxy.url("/bedrock/model/m/invoke"), body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "exactly two upstream attempts");
    assert_eq!(container.fetches(), 2, "one start-up fetch and one refresh");
    let secrets = container.secrets();
    assert_eq!(
        verified(&seen[1], &secrets).unwrap().access_key,
        "AKIACONTAINER2"
    );
    assert_eq!(seen[1].body, body.as_bytes());
}

#[tokio::test]
async fn access_denied_passes_after_one_attempt() {
    let upstream = FakeUpstream::start(|_| {
        aws_error(
            403,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        )
    })
    .await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &aws_config(&upstream.url(), ""))
        .env("AWS_ACCESS_KEY_ID", AKID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .start();
    let answer = post(&proxy.url("/bedrock/model/m/invoke"), "{}").await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.text(),
        r#"{"message":"You don't have access to the model with the specified model ID."}"#
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn an_expired_signature_is_signed_again_without_fetching_new_keys() {
    let container = ContainerEndpoint::start(Duration::from_secs(3600)).await;
    let attempts = AtomicUsize::new(0);
    let upstream = FakeUpstream::start(move |_| {
        if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            aws_error(403, "InvalidSignatureException", "Signature expired: 20250101T000000Z is now earlier than 20250101T000500Z (20250101T001000Z - 5 min.)")
        } else {
            Reply::status(200, "{}")
        }
    })
    .await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &aws_config(&upstream.url(), ""))
        .envs(&container.env())
        .start();
    proxy.wait_for_output("credential ready").await;
    let answer = post(&proxy.url("/bedrock/model/m/invoke"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(upstream.count(), 2);
    assert_eq!(container.fetches(), 1, "same keys, new signature");
    let secrets = container.secrets();
    for seen in upstream.requests() {
        verified(&seen, &secrets).unwrap();
    }
}

#[tokio::test]
async fn event_stream_frames_arrive_one_by_one_and_byte_identical() {
    // Binary frames with NULs and bytes that are not UTF-8, like real event-stream messages.
    let frames: Vec<Bytes> = (0..4u8)
        .map(|i| {
            let mut frame = vec![0, 0, 0, 40 + i, 0, 0, 0, 16, 0xde, 0xad, 0xbe, 0xef];
            frame.extend((0..28 + i).map(|b| b.wrapping_mul(37).wrapping_add(i)));
            Bytes::from(frame)
        })
        .collect();
    let gate = Arc::new(Semaphore::new(0));
    let upstream = {
        let (gate, frames) = (Arc::clone(&gate), frames.clone());
        FakeUpstream::start(move |_| Reply::Stream {
            headers: vec![("content-type", "application/vnd.amazon.eventstream".into())],
            chunks: frames.clone(),
            gate: Some(Arc::clone(&gate)),
        })
        .await
    };
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &aws_config(&upstream.url(), ""))
        .env("AWS_ACCESS_KEY_ID", AKID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .start();
    let response = open_stream(&proxy.url("/bedrock/model/m/invoke-with-response-stream")).await;
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let received = read_gated(response.into_body(), &gate).await;
    assert_eq!(received, frames);
}

#[tokio::test]
async fn a_bedrock_api_key_is_sent_as_a_bearer_without_sigv4_and_refreshed_on_authentication_failed()
 {
    let upstream = FakeUpstream::start(|req| {
        if req.header("authorization") == Some("Bearer bedrock-api-key-NEW") {
            Reply::status(200, "{}")
        } else {
            Reply::Full {
                status: 403,
                headers: vec![("content-type", "application/json".into())],
                body: Bytes::from(r#"{"Message":"Authentication failed: Please make sure your API Key is valid."}"#),
            }
        }
    })
    .await;
    let scratch = Scratch::new();
    scratch.write("key", "bedrock-api-key-OLD");
    let config = format!(
        r#"listen = "127.0.0.1:0"
[credentials.bedrock-key]
kind = "bedrock_api_key"
helper = "{}"
[[routes]]
prefix = "/bedrock"
upstream = "{}"
credential = "bedrock-key"
"#,
        scratch.counting_helper("0"),
        upstream.url()
    );
    let proxy = credproxy(&scratch, &config).start();
    proxy.wait_for_output("credential ready").await;
    scratch.write("key", "bedrock-api-key-NEW");
    let answer = post(&proxy.url("/bedrock/model/m/invoke"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(scratch.lines("runs"), 2);
    for request in &seen {
        let amz: Vec<_> = request
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-amz"))
            .collect();
        assert!(amz.is_empty(), "no SigV4 headers: {amz:?}");
    }

    // A 403 that is not about the key passes through after one attempt.
    let denied = FakeUpstream::start(|_| {
        Reply::status(
            403,
            r#"{"message":"not authorized to perform bedrock:InvokeModel"}"#,
        )
    })
    .await;
    let scratch = Scratch::new();
    let proxy = credproxy(
        &scratch,
        &aws_config(&denied.url(), "bearer_env = \"AWS_BEARER_TOKEN_BEDROCK\""),
    )
    .env("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-ENV")
    .start();
    let answer = post(&proxy.url("/bedrock/model/m/invoke"), "{}").await;
    assert_eq!(answer.status, 403);
    assert_eq!(denied.count(), 1);
    assert_eq!(
        denied.requests()[0].header("authorization"),
        Some("Bearer bedrock-api-key-ENV"),
        "bearer_env wins over SigV4"
    );
}

#[tokio::test]
async fn the_embedded_default_serves_bedrock_only_when_a_region_is_known() {
    let scratch = Scratch::new();
    let proxy = credproxy_default(&scratch)
        .env("ANTHROPIC_API_KEY", "k")
        .start();
    let answer = post(&proxy.url("/bedrock/model/m/invoke"), "{}").await;
    assert_eq!(answer.status, 502);
    let message = answer.error().1;
    assert!(
        message.contains("route `/bedrock` is disabled") && message.contains("set AWS_REGION"),
        "{message}"
    );

    let (status, stdout, _) = credproxy_default(&scratch)
        .env("AWS_REGION", "eu-west-3")
        .run_async("env")
        .await;
    assert!(status.success());
    for line in [
        "export CLAUDE_CODE_USE_BEDROCK=1",
        "export ANTHROPIC_BEDROCK_BASE_URL=http://127.0.0.1:8787/bedrock",
        "export CLAUDE_CODE_SKIP_BEDROCK_AUTH=1",
        "export AWS_REGION=eu-west-3",
        "# route /bedrock/inference-profiles -> https://bedrock.eu-west-3.amazonaws.com/inference-profiles",
    ] {
        assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
    }
    // The region may also come from the AWS profile.
    std::fs::create_dir_all(scratch.path("home/.aws")).unwrap();
    scratch.write(
        "home/.aws/config",
        "[profile work]\nregion = ap-southeast-2\n",
    );
    let (_, stdout, _) = credproxy_default(&scratch)
        .env("AWS_PROFILE", "work")
        .run_async("env")
        .await;
    assert!(
        stdout.contains("https://bedrock-runtime.ap-southeast-2.amazonaws.com"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_role_is_assumed_on_top_of_the_chain_through_sts() {
    // A fake STS (AWS_ENDPOINT_URL_STS) that checks the AssumeRole call is signed with the
    // base credentials and carries the role, session name and external id.
    let base = HashMap::from([(AKID.to_string(), SECRET.to_string())]);
    let sts = {
        let base = base.clone();
        FakeUpstream::start(move |req| {
            let signed = match verified(req, &base) {
                Ok(signed) => signed,
                Err(why) => return Reply::status(403, why),
            };
            let form = String::from_utf8_lossy(&req.body).to_string();
            let wanted = [
                "Action=AssumeRole",
                "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fbedrock-user",
                "RoleSessionName=bench-session",
                "ExternalId=ext-42",
            ];
            if signed.service != "sts" || !wanted.iter().all(|w| form.contains(w)) {
                return Reply::status(400, format!("unexpected call: {} {form}", signed.service));
            }
            Reply::Full {
                status: 200,
                headers: vec![("content-type", "text/xml".into())],
                body: Bytes::from(
                    r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials><AccessKeyId>ASIAASSUMED</AccessKeyId><SecretAccessKey>assumed-secret</SecretAccessKey><SessionToken>assumed-token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROAEXAMPLE:bench-session</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/bedrock-user/bench-session</Arn></AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleResponse>"#,
                ),
            }
        })
        .await
    };
    let assumed = HashMap::from([("ASIAASSUMED".to_string(), "assumed-secret".to_string())]);
    let upstream = verifying_upstream(assumed.clone()).await;
    let scratch = Scratch::new();
    let extra = r#"role_arn = "arn:aws:iam::123456789012:role/bedrock-user"
session_name = "bench-session"
external_id = "ext-42""#;
    let proxy = credproxy(&scratch, &aws_config(&upstream.url(), extra))
        .env("AWS_ACCESS_KEY_ID", AKID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_ENDPOINT_URL_STS", &sts.url())
        .start();
    let answer = post(&proxy.url("/bedrock/model/m/invoke"), "{}").await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.text(), proxy.output());
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(verified(&seen, &assumed).unwrap().access_key, "ASIAASSUMED");
    assert_eq!(seen.header("x-amz-security-token"), Some("assumed-token"));
    assert_eq!(sts.count(), 1);
}
