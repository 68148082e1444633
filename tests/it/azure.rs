//! Azure: Entra ID tokens from azure_identity pointed at local fakes (managed identity over
//! http, client secret and workload identity against a TLS token endpoint with a CA made at
//! test time), Foundry keys, and Azure Communication Services HMAC signing checked by an
//! independent implementation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::tls::TestCa;
use crate::support::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::Request;
use http_body_util::Full;
use sha2::{Digest, Sha256};

const FOUNDRY_MESSAGES: &str = "/foundry/v1/messages";

fn azure_config(upstream: &str, extra: &str) -> String {
    let table = format!("kind = \"azure\"\n{extra}");
    one_route(
        "azure",
        &table,
        "/foundry",
        &format!("{upstream}/anthropic"),
    )
}

/// A fake Foundry that accepts only `Bearer {accepted}`.
async fn foundry_accepting(accepted: &'static str) -> FakeUpstream {
    FakeUpstream::start(move |req| {
        if req.header("authorization") == Some(&format!("Bearer {accepted}")) {
            Reply::status(200, r#"{"type":"message"}"#)
        } else {
            Reply::status(401, r#"{"error":{"code":"401","message":"Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired."}}"#)
        }
    })
    .await
}

/// An App Service style managed identity endpoint (`IDENTITY_ENDPOINT`): checks the
/// identity header and the resource, issues `mi-token-N` that expire `lifetime` later.
struct IdentityEndpoint {
    fake: FakeUpstream,
    issued: Arc<AtomicUsize>,
}

impl IdentityEndpoint {
    async fn start(lifetime: Duration) -> Self {
        let issued = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&issued);
        let fake = FakeUpstream::start(move |req| {
            if req.header("x-identity-header") != Some("identity-header-secret") {
                return Reply::status(401, "missing identity header");
            }
            let query = req.path_and_query.split_once('?').map_or("", |(_, q)| q);
            let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            let has = |k: &str, v: &str| pairs.iter().any(|(a, b)| a == k && b == v);
            if !has("resource", "https://cognitiveservices.azure.com") || !has("api-version", "2019-08-01") {
                return Reply::status(400, format!("unexpected query {query}"));
            }
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + lifetime;
            Reply::status(
                200,
                format!(
                    r#"{{"access_token":"mi-token-{n}","expires_on":"{}","resource":"https://cognitiveservices.azure.com","token_type":"Bearer"}}"#,
                    expires.as_secs()
                ),
            )
        })
        .await;
        IdentityEndpoint { fake, issued }
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [
            (
                "IDENTITY_ENDPOINT",
                format!("{}/msi/token", self.fake.url()),
            ),
            ("IDENTITY_HEADER", "identity-header-secret".to_string()),
        ]
    }

    fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_managed_identity_token_is_applied_and_replaced_once_after_a_401() {
    let identity = IdentityEndpoint::start(Duration::from_secs(3600)).await;
    let upstream = foundry_accepting("mi-token-2").await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &azure_config(&upstream.url(), ""))
        .envs(&identity.env())
        .start();
    proxy.wait_for_output("credential ready").await;
    let answer = send(
        Request::post(proxy.url(FOUNDRY_MESSAGES))
            .header("api-key", "client-dummy")
            .header("authorization", "Bearer client-dummy")
            .body(Full::new(Bytes::from("{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "exactly two attempts");
    assert_eq!(seen[0].header("authorization"), Some("Bearer mi-token-1"));
    assert_eq!(seen[1].header("authorization"), Some("Bearer mi-token-2"));
    assert_eq!(seen[1].header("api-key"), None, "the client's key is gone");
    assert_eq!(seen[1].path_and_query, "/anthropic/v1/messages");
    assert_eq!(
        identity.issued(),
        2,
        "one new token, from a fresh azure_identity instance"
    );

    let (status, stdout, _) = credproxy(&scratch, &azure_config(&upstream.url(), ""))
        .envs(&identity.env())
        .run_async("check")
        .await;
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("ok (via managed identity)"), "{stdout}");
    assert!(!stdout.contains("mi-token"), "{stdout}");
}

#[tokio::test]
async fn short_lived_managed_identity_tokens_are_refreshed_ahead() {
    let identity = IdentityEndpoint::start(Duration::from_secs(4)).await;
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &azure_config(&upstream.url(), ""))
        .envs(&identity.env())
        .start();
    proxy.wait_for_output("credential ready").await;
    // Bounded by the clock, not a count: a slow machine must not stretch the run into a
    // fourth token's lifetime.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        assert_eq!(post(&proxy.url(FOUNDRY_MESSAGES), "{}").await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tokens: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_string())
        .collect();
    assert!(
        tokens.contains(&"Bearer mi-token-2".to_string()),
        "a second token was fetched while requests flowed"
    );
    assert!(
        identity.issued() <= 3,
        "about once per lifetime, not per request: {}",
        identity.issued()
    );
}

#[tokio::test]
async fn a_dead_token_endpoint_is_a_502_naming_the_cause_within_seconds() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream = foundry_accepting("never").await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &azure_config(&upstream.url(), ""))
        .env("IDENTITY_ENDPOINT", &format!("http://{closed}/msi/token"))
        .env("IDENTITY_HEADER", "x")
        .start();
    // A guard against a hang, not a timing claim: the default retry policy would take ~80 s.
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        post(&proxy.url(FOUNDRY_MESSAGES), "{}"),
    )
    .await
    .expect("the dead endpoint must fail fast");
    assert_eq!(answer.status, 502);
    let message = answer.error().1;
    assert!(message.contains("managed_identity"), "{message}");
    assert!(
        message.to_lowercase().contains("connect"),
        "the real cause, not 'retry policy expired': {message}"
    );
    assert!(!message.contains("retry policy expired"), "{message}");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_client_secret_is_exchanged_at_a_tls_authority_host() {
    let ca = TestCa::new();
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let entra = FakeUpstream::start_tls(&ca, |req| {
        let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
        let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
        let path_ok = req.path_and_query == "/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token";
        if path_ok
            && has("client_id", "app-id")
            && has("client_secret", "client-SECRET-value")
            && has("grant_type", "client_credentials")
            && has("scope", "https://cognitiveservices.azure.com/.default")
        {
            Reply::status(200, r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"entra-token-1"}"#)
        } else {
            Reply::status(400, format!(r#"{{"error":"invalid_request","error_description":"unexpected {} {form:?}"}}"#, req.path_and_query))
        }
    })
    .await;
    let upstream = foundry_accepting("entra-token-1").await;
    let extra = format!(
        "method = \"client_secret\"\nauthority_host = \"{}\"",
        entra.url()
    );
    let proxy = credproxy(&scratch, &azure_config(&upstream.url(), &extra))
        .env("AZURE_TENANT_ID", "11111111-2222-3333-4444-555555555555")
        .env("AZURE_CLIENT_ID", "app-id")
        .env("AZURE_CLIENT_SECRET", "client-SECRET-value")
        .env("SSL_CERT_FILE", ca_file.to_str().unwrap())
        .arg("--log-level")
        .arg("trace")
        .start();
    let answer = post(&proxy.url(FOUNDRY_MESSAGES), "{}").await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.text(), proxy.output());
    assert_eq!(entra.count(), 1);
    let output = proxy.output();
    for secret in ["client-SECRET-value", "entra-token-1"] {
        assert!(
            !output.contains(secret),
            "{secret} leaked at trace level:\n{output}"
        );
    }
}

#[tokio::test]
async fn workload_identity_sends_the_federated_token_file() {
    let ca = TestCa::new();
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let token_file = scratch.write(
        "federated-token",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl",
    );
    let entra = FakeUpstream::start_tls(&ca, |req| {
        let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
        let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
        if has(
            "client_assertion",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl",
        ) && has(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ) && has("client_id", "workload-app")
        {
            Reply::status(
                200,
                r#"{"token_type":"Bearer","expires_in":3599,"access_token":"workload-token"}"#,
            )
        } else {
            Reply::status(
                400,
                format!(r#"{{"error":"invalid_client","error_description":"{form:?}"}}"#),
            )
        }
    })
    .await;
    let upstream = foundry_accepting("workload-token").await;
    let proxy = credproxy(&scratch, &azure_config(&upstream.url(), ""))
        .env("AZURE_TENANT_ID", "tenant-1")
        .env("AZURE_CLIENT_ID", "workload-app")
        .env("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap())
        .env("AZURE_AUTHORITY_HOST", &entra.url())
        .env("SSL_CERT_FILE", ca_file.to_str().unwrap())
        .start();
    let answer = post(&proxy.url(FOUNDRY_MESSAGES), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(entra.count(), 1);
}

#[tokio::test]
async fn a_foundry_key_is_applied_as_api_key_or_x_api_key() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    for (apply, header) in [("", "api-key"), ("apply = \"x-api-key\"", "x-api-key")] {
        let extra = format!("key_env = \"ANTHROPIC_FOUNDRY_API_KEY\"\n{apply}");
        let proxy = credproxy(&scratch, &azure_config(&upstream.url(), &extra))
            .env("ANTHROPIC_FOUNDRY_API_KEY", "foundry-key-1")
            .start();
        assert_eq!(post(&proxy.url(FOUNDRY_MESSAGES), "{}").await.status, 200);
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(seen.header(header), Some("foundry-key-1"));
        assert_eq!(seen.header("authorization"), None);
    }
}

#[tokio::test]
async fn an_unconfigured_chain_fails_fast_with_what_to_set() {
    let upstream = foundry_accepting("x").await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &azure_config(&upstream.url(), "")).start();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        post(&proxy.url(FOUNDRY_MESSAGES), "{}"),
    )
    .await
    .expect("must not hang");
    assert_eq!(answer.status, 502);
    assert!(
        answer.error().1.contains("no Azure credentials found"),
        "{}",
        answer.text()
    );
}

#[tokio::test]
async fn the_embedded_default_serves_foundry_for_the_named_resource() {
    let scratch = Scratch::new();
    let (status, stdout, _) = credproxy_default(&scratch)
        .env("ANTHROPIC_FOUNDRY_RESOURCE", "my-resource")
        .run_async("env")
        .await;
    assert!(status.success());
    for line in [
        "# route /foundry -> https://my-resource.services.ai.azure.com/anthropic (credential `azure`)",
        "export CLAUDE_CODE_USE_FOUNDRY=1",
        "export ANTHROPIC_FOUNDRY_BASE_URL=http://127.0.0.1:8787/foundry",
        "export CLAUDE_CODE_SKIP_FOUNDRY_AUTH=1",
    ] {
        assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
    }
    let (_, stdout, _) = credproxy_default(&scratch)
        .env(
            "ANTHROPIC_FOUNDRY_BASE_URL",
            "https://gateway.example.com/foundry/",
        )
        .run_async("env")
        .await;
    assert!(
        stdout.contains(
            "# route /foundry -> https://gateway.example.com/foundry (credential `azure`)"
        ),
        "{stdout}"
    );

    let proxy = credproxy_default(&scratch)
        .env("ANTHROPIC_API_KEY", "k")
        .start();
    let answer = post(&proxy.url(FOUNDRY_MESSAGES), "{}").await;
    assert_eq!(answer.status, 502);
    assert!(
        answer.error().1.contains("set ANTHROPIC_FOUNDRY_RESOURCE"),
        "{}",
        answer.text()
    );
}

// ── Azure Communication Services ─────────────────────────────────────────────

/// Checks an ACS HMAC signature from what the fake received, from the documented
/// string-to-sign (not credproxy's code).
fn verify_acs(req: &Recorded, key_b64: &str) -> Result<(), String> {
    let date = req.header("x-ms-date").ok_or("no x-ms-date")?;
    httpdate::parse_http_date(date).map_err(|_| format!("x-ms-date {date} is not RFC 1123"))?;
    let hash = STANDARD.encode(Sha256::digest(&req.body));
    if req.header("x-ms-content-sha256") != Some(hash.as_str()) {
        return Err("x-ms-content-sha256 does not match the body".into());
    }
    let host = req.header("host").ok_or("no host")?;
    let to_sign = format!(
        "{}\n{}\n{date};{host};{hash}",
        req.method, req.path_and_query
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&STANDARD.decode(key_b64).unwrap()).unwrap();
    mac.update(to_sign.as_bytes());
    let expected = format!(
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={}",
        STANDARD.encode(mac.finalize().into_bytes())
    );
    if req.header("authorization") == Some(expected.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "bad authorization {:?}",
            req.header("authorization")
        ))
    }
}

#[tokio::test]
async fn acs_requests_carry_a_valid_hmac_signature_made_at_send_time() {
    let key_b64 = STANDARD.encode(b"acs-test-access-key-0123456789abcdef");
    let upstream = {
        let key = key_b64.clone();
        FakeUpstream::start(move |req| match verify_acs(req, &key) {
            Ok(()) => Reply::status(202, r#"{"id":"op-1","status":"Running"}"#),
            Err(why) => Reply::status(
                401,
                format!(r#"{{"error":{{"code":"Denied","message":"{why}"}}}}"#),
            ),
        })
        .await
    };
    let scratch = Scratch::new();
    let connection_string = format!("endpoint={}/;accesskey={key_b64}", upstream.url());
    let config = format!(
        r#"listen = "127.0.0.1:0"
[credentials.acs]
kind = "acs"
env = "ACS_CONNECTION_STRING"
[[routes]]
prefix = "/acs"
upstream = "{}"
credential = "acs"
"#,
        upstream.url()
    );
    let proxy = credproxy(&scratch, &config)
        .env("ACS_CONNECTION_STRING", &connection_string)
        .start();
    for (path, body) in [
        (
            "/acs/emails:send?api-version=2023-03-31",
            r#"{"senderAddress":"a@b.c"}"#,
        ),
        (
            "/acs/sms?api-version=2021-03-07",
            r#"{"from":"+1","smsRecipients":[]}"#,
        ),
    ] {
        let answer = send(
            Request::post(proxy.url(path))
                .header("x-ms-date", "Thu, 01 Jan 1970 00:00:00 GMT")
                .header("authorization", "HMAC-SHA256 client")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 202, "{path}: {}", answer.text());
        let seen = upstream.requests().pop().unwrap();
        verify_acs(&seen, &key_b64).unwrap();
        assert_ne!(
            seen.header("x-ms-date"),
            Some("Thu, 01 Jan 1970 00:00:00 GMT"),
            "signed at send time"
        );
        let mut tampered = seen.clone();
        tampered.body = Bytes::from("{}");
        assert!(
            verify_acs(&tampered, &key_b64).is_err(),
            "a changed body breaks the signature"
        );
    }

    let (status, stdout, _) = credproxy(&scratch, &config)
        .env("ACS_CONNECTION_STRING", &connection_string)
        .run_async("check")
        .await;
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("via endpoint {}", upstream.url())),
        "{stdout}"
    );
    assert!(!stdout.contains(&key_b64), "{stdout}");
}
