//! The proxy pipeline end to end: the credproxy binary between a client and a fake upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::sync::Semaphore;

const REAL_KEY: &str = "sk-ant-real-0123456789abcdef";

#[tokio::test]
async fn client_with_a_dummy_key_is_answered_by_an_upstream_that_accepts_only_the_real_key() {
    let upstream = FakeUpstream::accepting_key(REAL_KEY).await;
    let scratch = Scratch::new();
    let proxy = credproxy(
        &scratch,
        &config(&upstream.url(), r#"env = "ANTHROPIC_API_KEY""#),
    )
    .env("ANTHROPIC_API_KEY", REAL_KEY)
    .start();

    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let answer = send(
        Request::post(proxy.url("/v1/messages?beta=true"))
            .header("x-api-key", "dummy")
            .header("authorization", "Bearer dummy")
            .header("anthropic-version", "2023-06-01")
            .header(
                "anthropic-beta",
                "interleaved-thinking-2025-05-14,context-1m-2025-08-07",
            )
            .header("x-claude-code-session-id", "5f1c-AbC")
            .header("user-agent", "claude-cli/2.0.1 (external, cli)")
            .header("x-custom", "  spaced value  ")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("\"hi\""));

    let seen = &upstream.requests()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path_and_query, "/v1/messages?beta=true");
    assert_eq!(seen.header("x-api-key"), Some(REAL_KEY));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the client's bearer is gone"
    );
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        seen.header("anthropic-beta"),
        Some("interleaved-thinking-2025-05-14,context-1m-2025-08-07")
    );
    assert_eq!(seen.header("x-claude-code-session-id"), Some("5f1c-AbC"));
    assert_eq!(
        seen.header("user-agent"),
        Some("claude-cli/2.0.1 (external, cli)")
    );
    assert_eq!(
        seen.header("x-custom"),
        Some("spaced value"),
        "hyper trims surrounding whitespace on parse"
    );
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr.to_string().as_str())
    );
    assert_eq!(seen.body, body.as_bytes());
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn path_and_query_bytes_reach_the_upstream_exactly_as_sent() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let config = route_config("/bedrock", &format!("{}/base/", upstream.url()));
    let proxy = credproxy(&scratch, &config).start();
    let paths = [
        (
            "/bedrock/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
            "/base/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
        ),
        (
            "/bedrock/model/us.anthropic.claude-v1%3A0/invoke-with-response-stream",
            "/base/model/us.anthropic.claude-v1%3A0/invoke-with-response-stream",
        ),
        (
            "/bedrock/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fabc/invoke",
            "/base/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fabc/invoke",
        ),
        (
            "/bedrock/a%20b/%7e~/x?q=%2F%3a&r=a+b&&s",
            "/base/a%20b/%7e~/x?q=%2F%3a&r=a+b&&s",
        ),
        ("/bedrock", "/base"),
        ("/bedrock?list", "/base?list"),
    ];
    for (sent, expected) in paths {
        let response = raw(
            proxy.addr(),
            &format!("GET {sent} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "{sent}: {response}\n{}",
            proxy.output()
        );
        assert_eq!(
            upstream.requests().last().unwrap().path_and_query,
            expected,
            "sent {sent}"
        );
    }
}

#[tokio::test]
async fn sse_events_reach_the_client_one_by_one_as_the_upstream_sends_them() {
    // The upstream sends each event only after the client confirmed it received the one
    // before: if credproxy buffered, the stream would never finish.
    let gate = Arc::new(Semaphore::new(0));
    let events: Vec<Bytes> = (0..5)
        .map(|i| {
            Bytes::from(format!(
                "event: content_block_delta\ndata: {{\"index\":{i}}}\n\n"
            ))
        })
        .collect();
    let upstream = FakeUpstream::gated_stream(&gate, events.clone()).await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config(&upstream.url(), r#"value = "k""#)).start();

    let response = open_stream(&proxy.url("/v1/messages")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let received = read_gated(response.into_body(), &gate).await;
    assert_eq!(received, events, "one frame per event, byte-identical");
}

#[tokio::test]
async fn a_3_mib_body_is_forwarded_intact_and_a_body_over_the_limit_gets_413() {
    let upstream =
        FakeUpstream::start(|req| Reply::status(200, format!("{{\"len\":{}}}", req.body.len())))
            .await;
    let scratch = Scratch::new();
    let config = format!(
        "max_body = \"4MiB\"\n{}",
        config(&upstream.url(), r#"value = "k""#)
    );
    let proxy = credproxy(&scratch, &config).start();

    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let answer = send(
        Request::post(proxy.url("/v1/messages"))
            .body(Full::new(Bytes::from(big.clone())))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(upstream.requests()[0].body, big);

    let too_big = vec![b'x'; 4 * 1024 * 1024 + 1];
    let answer = send(
        Request::post(proxy.url("/v1/messages"))
            .body(Full::new(Bytes::from(too_big)))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 413);
    let (kind, message) = answer.error();
    assert_eq!(kind, "request_too_large");
    assert!(message.contains("max_body"), "{message}");

    // A chunked body (no Content-Length) is cut off while reading.
    let chunk = "x".repeat(1024 * 1024);
    let mut request = String::from(
        "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..5 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    let response = raw(proxy.addr(), &request).await;
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "{}",
        &response[..response.len().min(200)]
    );
    assert_eq!(
        upstream.count(),
        1,
        "nothing over the limit reached the upstream"
    );
}

#[tokio::test]
async fn a_rejected_key_is_refreshed_by_the_helper_and_the_request_replayed_once() {
    let upstream = FakeUpstream::accepting_key("key-2").await;
    let scratch = Scratch::new();
    scratch.write("key", "key-1");
    let helper = scratch.counting_helper("0");
    let proxy = credproxy(
        &scratch,
        &config(&upstream.url(), &format!("helper = \"{helper}\"")),
    )
    .start();
    proxy.wait_for_output("credential ready").await;
    assert_eq!(scratch.lines("runs"), 1);

    scratch.write("key", "key-2");
    let answer = post(&proxy.url("/v1/messages"), r#"{"n":1}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "exactly two upstream attempts");
    assert_eq!(seen[0].header("x-api-key"), Some("key-1"));
    assert_eq!(seen[1].header("x-api-key"), Some("key-2"));
    assert_eq!(
        seen[1].body, seen[0].body,
        "the replay carries the same body"
    );
    assert_eq!(scratch.lines("runs"), 2, "exactly two helper runs");

    // The fresh key is cached: the next request needs neither a run nor a retry.
    assert_eq!(post(&proxy.url("/v1/messages"), "{}").await.status, 200);
    assert_eq!((upstream.count(), scratch.lines("runs")), (3, 2));
}

#[tokio::test]
async fn a_key_that_stays_invalid_gets_two_attempts_and_the_second_401_reaches_the_client() {
    let upstream = FakeUpstream::accepting_key("never-this").await;
    let scratch = Scratch::new();
    scratch.write("key", "stale");
    let proxy = credproxy(
        &scratch,
        &config(
            &upstream.url(),
            &format!("helper = \"{}\"", scratch.counting_helper("0")),
        ),
    )
    .start();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.text(),
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        "the upstream's error body passes unmodified"
    );
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn non_auth_errors_pass_through_after_one_attempt() {
    let upstream = FakeUpstream::start(|req| {
        let status: u16 = req
            .path_and_query
            .trim_start_matches("/status/")
            .parse()
            .unwrap();
        let mut reply =
            Reply::anthropic_error(status, "some_error", &format!("upstream said {status}"));
        if let Reply::Full { headers, .. } = &mut reply {
            headers.push(("retry-after", "7".into()));
            headers.push(("x-should-retry", "true".into()));
        }
        reply
    })
    .await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config(&upstream.url(), r#"value = "k""#)).start();
    for (i, status) in [400u16, 403, 404, 429, 500, 503, 529]
        .into_iter()
        .enumerate()
    {
        let answer = post(&proxy.url(&format!("/status/{status}")), "{}").await;
        assert_eq!(answer.status, status);
        assert_eq!(answer.error().1, format!("upstream said {status}"));
        assert_eq!(answer.headers["retry-after"], "7");
        assert_eq!(answer.headers["x-should-retry"], "true");
        assert_eq!(upstream.count(), i + 1, "{status} was not retried");
    }
}

#[tokio::test]
async fn two_hundred_concurrent_requests_on_a_cold_helper_credential_run_it_once() {
    let upstream = FakeUpstream::accepting_key("cold-key").await;
    let scratch = Scratch::new();
    scratch.write("key", "cold-key");
    let proxy = credproxy(
        &scratch,
        &config(
            &upstream.url(),
            &format!("helper = \"{}\"", scratch.counting_helper("1")),
        ),
    )
    .start();
    let url = proxy.url("/v1/messages");
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, "{}").await.status })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        scratch.lines("runs"),
        1,
        "one helper run for all of them (start-up warm-up included)"
    );
    assert_eq!(upstream.count(), 200);
}

#[tokio::test]
async fn a_failing_helper_gives_a_502_that_names_the_cause_and_the_proxy_keeps_serving() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let helper = r#"helper = "echo 'op: you are not signed in' >&2; exit 3""#;
    let proxy = credproxy(&scratch, &config(&upstream.url(), helper)).start();
    for _ in 0..2 {
        let answer = post(&proxy.url("/v1/messages"), "{}").await;
        assert_eq!(answer.status, 502);
        assert_eq!(answer.headers["x-credproxy-error"], "credential");
        let (kind, message) = answer.error();
        assert_eq!(kind, "api_error");
        assert!(
            message
                .starts_with("credproxy: route `/` could not get credential `key` (helper `echo`)"),
            "{message}"
        );
        assert!(message.contains("exited with status 3 after"), "{message}");
        assert!(
            !message.contains("not signed in"),
            "what the helper printed stays in the log: {message}"
        );
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_helper_that_hangs_is_killed_at_its_timeout() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let pid_file = scratch.path("sleeper.pid");
    let helper = format!(
        "helper = \"sleep 60 & echo $! > {}; wait\"\nhelper_timeout = \"1s\"",
        pid_file.display()
    );
    let proxy = credproxy(&scratch, &config(&upstream.url(), &helper)).start();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 502);
    let message = answer.error().1;
    let took: f64 = message
        .split("timed out after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!(
        (1.0..30.0).contains(&took),
        "killed at its timeout, not after the 60 s sleep: {message}"
    );
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    // SIGKILL reaches the group at once but a process dies when it is next scheduled, so
    // give it a moment: gone, or dead and waiting for whoever adopted it to reap it.
    let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let alive = |stat: &str| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(&stat()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = stat();
    assert!(
        !alive(&last),
        "the helper's child {pid} outlived the timeout by 5 s: {last}"
    );
}

#[tokio::test]
async fn unknown_routes_foreign_hosts_and_cross_site_pages_are_refused() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let config = format!(
        r#"listen = "127.0.0.1:0"
allowed_origins = ["http://localhost:3000"]
[credentials.key]
kind = "api_key"
value = "k"
[[routes]]
prefix = "/anthropic"
upstream = "{0}"
credential = "key"
[[routes]]
prefix = "/other"
upstream = "{0}"
credential = "key"
"#,
        upstream.url()
    );
    let proxy = credproxy(&scratch, &config).start();

    let answer = get(&proxy.url("/v1/messages")).await;
    assert_eq!(answer.status, 404);
    let (kind, message) = answer.error();
    assert_eq!(kind, "not_found_error");
    assert!(message.contains("no route for `/v1/messages`"), "{message}");
    assert!(
        message.contains("`/anthropic`") && message.contains("`/other`"),
        "{message}"
    );

    let refused = raw(proxy.addr(), "POST /anthropic/v1/messages HTTP/1.1\r\nHost: evil.example:8787\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("DNS rebinding"), "{refused}");

    let absolute = raw(proxy.addr(), "GET http://evil.example/anthropic/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await;
    assert!(absolute.starts_with("HTTP/1.1 403"), "{absolute}");

    let connect = raw(
        proxy.addr(),
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");

    let page = send(
        Request::post(proxy.url("/anthropic/v1/messages"))
            .header("origin", "https://evil.example")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, 403);
    assert!(page.error().1.contains("allowed_origins"));
    let sneaky = send(
        Request::post(proxy.url("/anthropic/v1/messages"))
            .header("sec-fetch-site", "cross-site")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(sneaky.status, 403);
    // Another port on localhost is the same site, not the same origin: a GET from a page
    // there, with no Origin, is refused too.
    let neighbour = send(
        Request::get(proxy.url("/anthropic/v1/models"))
            .header("sec-fetch-site", "same-site")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(neighbour.status, 403, "{}", neighbour.text());
    assert!(neighbour.error().1.contains("cross-site"));
    let own = send(
        Request::get(proxy.url("/anthropic/v1/models"))
            .header("sec-fetch-site", "same-origin")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(own.status, 200);
    let allowed = send(
        Request::post(proxy.url("/anthropic/v1/messages"))
            .header("origin", "http://localhost:3000")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        upstream.count(),
        2,
        "only the allowed requests reached the upstream"
    );
}

#[tokio::test]
async fn head_is_answered_at_once_without_credentials_or_upstream() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let proxy = credproxy(
        &scratch,
        &config(&upstream.url(), r#"env = "UNSET_VARIABLE""#),
    )
    .start();
    for path in ["/", "/api/hello", "/nowhere/at/all"] {
        let answer = send(
            Request::head(proxy.url(path))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200, "{path}");
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_missing_credential_is_reported_at_start_and_on_use_naming_what_to_set() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let credential = "helper_env = \"CREDPROXY_API_KEY_HELPER\"\nenv = \"ANTHROPIC_API_KEY\"";
    let proxy = credproxy(&scratch, &config(&upstream.url(), credential)).start();
    proxy.wait_for_output("credential not available yet").await;
    assert!(
        proxy.output().contains("ANTHROPIC_API_KEY is not set"),
        "{}",
        proxy.output()
    );
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 502);
    let message = answer.error().1;
    assert!(
        message.contains(
            "set it to the key (or CREDPROXY_API_KEY_HELPER to a command that prints it)"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn helper_env_takes_precedence_when_set() {
    let upstream = FakeUpstream::accepting_key("from-helper").await;
    let scratch = Scratch::new();
    scratch.write("key", "from-helper");
    let credential = "helper_env = \"CREDPROXY_API_KEY_HELPER\"\nenv = \"ANTHROPIC_API_KEY\"";
    let proxy = credproxy(&scratch, &config(&upstream.url(), credential))
        .env("ANTHROPIC_API_KEY", "from-env")
        .env("CREDPROXY_API_KEY_HELPER", &scratch.counting_helper("0"))
        .start();
    assert_eq!(post(&proxy.url("/v1/messages"), "{}").await.status, 200);
    assert_eq!(
        upstream.requests()[0].header("x-api-key"),
        Some("from-helper")
    );
}

#[tokio::test]
async fn bearer_and_named_header_application() {
    let upstream = FakeUpstream::start(|_| Reply::status(200, "{}")).await;
    let scratch = Scratch::new();
    let config = format!(
        r#"listen = "127.0.0.1:0"
[credentials.bearer]
kind = "api_key"
value = "tok-1"
apply = "bearer"
[credentials.azure]
kind = "api_key"
value = "az-1"
apply = "api-key"
[[routes]]
prefix = "/b"
upstream = "{0}"
credential = "bearer"
[[routes]]
prefix = "/a"
upstream = "{0}"
credential = "azure"
"#,
        upstream.url()
    );
    let proxy = credproxy(&scratch, &config).start();
    post(&proxy.url("/b/v1/messages"), "{}").await;
    post(&proxy.url("/a/v1/messages"), "{}").await;
    let seen = upstream.requests();
    assert_eq!(seen[0].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(seen[0].header("x-api-key"), None);
    assert_eq!(seen[1].header("api-key"), Some("az-1"));
    assert_eq!(seen[1].header("x-api-key"), None);
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_and_a_silent_one_504() {
    let scratch = Scratch::new();
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = credproxy(
        &scratch,
        &config(&format!("http://{closed}"), r#"value = "k""#),
    )
    .start();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.headers["x-credproxy-error"], "upstream");
    let message = answer.error().1;
    assert!(
        message.contains(&format!("could not reach http://{closed}")),
        "{message}"
    );
    assert!(message.contains("onnection refused"), "{message}");

    let silent = FakeUpstream::start(|_| Reply::Hang).await;
    let scratch = Scratch::new();
    let config = format!(
        "upstream_timeout = \"300ms\"\n{}",
        config(&silent.url(), r#"value = "k""#)
    );
    let proxy = credproxy(&scratch, &config).start();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 504);
    let (kind, message) = answer.error();
    assert_eq!(kind, "timeout_error");
    assert!(message.contains("did not answer within 300ms"), "{message}");
}

#[tokio::test]
async fn h2c_clients_are_served_on_the_same_port() {
    let upstream = FakeUpstream::accepting_key("k").await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config(&upstream.url(), r#"value = "k""#)).start();
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let response = h2
        .request(
            Request::post(proxy.url("/v1/messages"))
                .header("x-api-key", "dummy")
                .body(Full::new(Bytes::from("{}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.requests()[0].header("x-api-key"), Some("k"));
}

#[tokio::test]
async fn routes_with_their_own_listener_are_served_only_there() {
    let upstream = FakeUpstream::start(|req| {
        Reply::status(200, req.header("x-api-key").unwrap_or("").to_string())
    })
    .await;
    let scratch = Scratch::new();
    let config = format!(
        r#"listen = "127.0.0.1:0"
[credentials.one]
kind = "api_key"
value = "key-one"
[credentials.two]
kind = "api_key"
value = "key-two"
[[routes]]
prefix = "/"
upstream = "{0}"
credential = "one"
[[routes]]
prefix = "/"
upstream = "{0}"
credential = "two"
listen = "127.0.0.2:0"
"#,
        upstream.url()
    );
    let proxy = credproxy(&scratch, &config).listeners(2).start();
    let mut seen = Vec::new();
    for addr in &proxy.addrs {
        seen.push(
            post(&format!("http://{addr}/v1/messages"), "{}")
                .await
                .text(),
        );
    }
    seen.sort();
    assert_eq!(seen, ["key-one", "key-two"]);
}
