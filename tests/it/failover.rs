//! Routes with several targets (`targets`): failover in order on the statuses of rate
//! limits, overload and server errors and on a refused connection; cool-downs from
//! `retry-after` and the single trial after them; `strategy = "spread"` over keys; streams
//! held until their first event; the body limit; failover from the Anthropic API to
//! Bedrock through translation; and what operators see (`/status`, metrics, the access
//! line, `/readyz`, `check`, `env`, reloads, config errors).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use credproxy::proxy::translate::eventstream;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::*;

const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const MESSAGE: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","usage":{"input_tokens":9,"output_tokens":2}}"#;
const EVENTS: &[&str] = &[
    r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":9,"output_tokens":1}}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
    r#"{"type":"message_stop"}"#,
];

/// Keys `a`, `b`, `c` as literal api keys, and the admin listener on a free port.
const KEYS: &str = r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[credentials.a]
kind = "api_key"
value = "a"

[credentials.b]
kind = "api_key"
value = "b"

[credentials.c]
kind = "api_key"
value = "c"
"#;

/// A route at `prefix` over `targets` (`(upstream, credential)`), with extra route lines.
fn route(prefix: &str, targets: &[(&str, &str)], extra: &str) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|(upstream, credential)| {
            format!("{{ upstream = \"{upstream}\", credential = \"{credential}\" }}")
        })
        .collect();
    format!(
        "\n[[routes]]\nprefix = \"{prefix}\"\ntargets = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// A fake that answers `status` (with `headers`) to every request.
async fn answering(status: u16, headers: Vec<(&'static str, String)>) -> FakeUpstream {
    FakeUpstream::start(move |_| Reply::Full {
        status,
        headers: headers.clone(),
        body: Bytes::from(format!(
            r#"{{"type":"error","error":{{"type":"overloaded_error","message":"{status}"}}}}"#
        )),
    })
    .await
}

async fn ok_upstream() -> FakeUpstream {
    FakeUpstream::start(|_| Reply::status(200, MESSAGE)).await
}

/// An address nothing listens on.
fn refused() -> String {
    format!("http://127.0.0.1:{}", Scratch::free_port())
}

fn sse(events: &[&str]) -> String {
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

fn target_of(answer: &Answer) -> &str {
    answer.headers["x-credproxy-target"].to_str().unwrap()
}

async fn metrics(proxy: &Running) -> String {
    get(&proxy.admin_url("/metrics").await).await.text()
}

#[tokio::test]
async fn each_failover_status_and_a_refused_connection_move_on_to_the_next_target() {
    let good = ok_upstream().await;
    let mut config = KEYS.to_string();
    let mut failing = Vec::new();
    for status in [429, 529, 500, 502, 503, 504] {
        let fake = answering(status, vec![]).await;
        config += &route(
            &format!("/s{status}"),
            &[(&fake.url(), "a"), (&good.url(), "b")],
            "",
        );
        failing.push((status, fake));
    }
    let gone = refused();
    config += &route("/refused", &[(&gone, "a"), (&good.url(), "b")], "");
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config).start();
    for (status, fake) in &failing {
        let answer = post(&proxy.url(&format!("/s{status}/v1/messages")), "{}").await;
        assert_eq!(answer.status, 200, "{status}: {}", answer.text());
        assert_eq!(
            answer.text(),
            MESSAGE,
            "the serving target's answer, byte for byte"
        );
        assert_eq!(target_of(&answer), "1", "{status}");
        assert_eq!(fake.requests().len(), 1, "{status}: tried once");
    }
    let answer = post(&proxy.url("/refused/v1/messages"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(target_of(&answer), "1");
    // The good target saw each request once, with its own key.
    let seen = good.requests();
    assert_eq!(seen.len(), 7);
    assert!(seen.iter().all(|r| r.header("x-api-key") == Some("b")));
    let text = metrics(&proxy).await;
    for reason in ["429", "529", "500", "502", "503", "504", "connect"] {
        assert!(
            text.contains(&format!("reason=\"{reason}\""))
                && text.contains("credproxy_failovers_total{"),
            "a failover counted for {reason}:\n{text}"
        );
    }
    assert!(
        text.contains(
            r#"credproxy_target_requests_total{route="/s429",target="0",outcome="429"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"credproxy_target_requests_total{route="/s429",target="1",outcome="served"} 1"#
        ),
        "{text}"
    );
    // The access line names the serving target and counts both attempts.
    proxy.wait_for_output("route=\"/refused\"").await;
    let line = proxy
        .output()
        .lines()
        .find(|l| l.contains("credproxy::access") && l.contains("route=\"/refused\""))
        .unwrap()
        .to_string();
    assert!(line.contains("attempts=2 served_by=\"1\""), "{line}");
}

#[tokio::test]
async fn targets_are_tried_in_order_never_twice_and_at_most_max_attempts() {
    let first = answering(503, vec![]).await;
    let second = answering(429, vec![]).await;
    let third = ok_upstream().await;
    let fourth = ok_upstream().await;
    let targets = [
        (first.url(), "a"),
        (second.url(), "b"),
        (third.url(), "c"),
        (fourth.url(), "a"),
    ];
    let targets: Vec<(&str, &str)> = targets.iter().map(|(u, c)| (u.as_str(), *c)).collect();
    let config = KEYS.to_string()
        + &route("/three", &targets, "")
        + &route("/two", &targets[..3], "max_attempts = 2");
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config).start();
    let answer = post(&proxy.url("/three/v1/messages"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(target_of(&answer), "2");
    assert_eq!(third.requests()[0].header("x-api-key"), Some("c"));
    assert_eq!(
        fourth.requests().len(),
        0,
        "the first healthy target serves"
    );
    // Two attempts: the second target's 429 is the answer, as it came.
    let answer = post(&proxy.url("/two/v1/messages"), "{}").await;
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert_eq!(target_of(&answer), "1");
    assert_eq!(answer.error().1, "429");
    assert_eq!(first.requests().len(), 2);
    assert_eq!(second.requests().len(), 2);
    assert_eq!(
        third.requests().len(),
        1,
        "max_attempts = 2 stops before it"
    );
}

#[tokio::test]
async fn retry_after_cools_a_target_down_then_one_trial_request_goes_there() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    // The first answer is a 429 with `retry-after: 2`; later ones succeed slowly.
    let limited = FakeUpstream::start(move |_| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Full {
                status: 429,
                headers: vec![("retry-after", "2".into())],
                body: Bytes::from_static(b"{}"),
            }
        } else {
            Reply::After {
                delay: Duration::from_millis(1500),
                reply: Box::new(Reply::status(200, MESSAGE)),
            }
        }
    })
    .await;
    let backup = ok_upstream().await;
    let config = KEYS.to_string() + &route("/", &[(&limited.url(), "a"), (&backup.url(), "b")], "");
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    assert_eq!(target_of(&post(&url, "{}").await), "1");
    // Cooling: the next requests go straight to the backup.
    for _ in 0..3 {
        assert_eq!(target_of(&post(&url, "{}").await), "1");
    }
    assert_eq!(limited.requests().len(), 1);
    let status = get(&proxy.admin_url("/status").await).await.json();
    let first = &status["routes"][0]["targets"][0];
    assert_eq!(first["state"], "cooling", "{status}");
    assert_eq!(first["last_error"]["message"], "429", "{status}");
    assert_eq!(status["routes"][0]["targets"][1]["requests"], 4, "{status}");
    assert_eq!(first["failovers"], 1, "{status}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The cool-down is over: one request is the trial; while it runs, others go on to the
    // backup rather than pile onto the target that was limited.
    let trial = tokio::spawn(post_owned(url.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during = post(&url, "{}").await;
    assert_eq!(target_of(&during), "1", "only one trial at a time");
    let trial = trial.await.unwrap();
    assert_eq!((trial.status, target_of(&trial)), (200, "0"));
    assert_eq!(limited.requests().len(), 2);
    // The trial succeeded: the first target is healthy again and serves in order.
    assert_eq!(target_of(&post(&url, "{}").await), "0");
}

async fn post_owned(url: String) -> Answer {
    post(&url, "{}").await
}

#[tokio::test]
async fn when_every_target_cools_the_client_gets_the_last_answer_then_a_503_naming_them() {
    let a = answering(429, vec![("retry-after", "30".into())]).await;
    let b = answering(529, vec![("retry-after", "10".into())]).await;
    let config = KEYS.to_string() + &route("/", &[(&a.url(), "a"), (&b.url(), "b")], "");
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    let last = post(&url, "{}").await;
    assert_eq!(
        last.status,
        529,
        "the last upstream answer: {}",
        last.text()
    );
    assert_eq!(target_of(&last), "1");
    assert_eq!(last.headers["retry-after"], "10", "the smallest wait");
    let none = post(&url, "{}").await;
    assert_eq!(none.status, 503, "{}", none.text());
    let (kind, message) = none.error();
    assert_eq!(kind, "overloaded_error");
    assert!(
        message.contains("target 0 cooling for 30s after 429")
            && message.contains("target 1 cooling for 10s after 529"),
        "{message}"
    );
    let wait: u64 = none.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((9..=10).contains(&wait), "{wait}");
    assert_eq!((a.requests().len(), b.requests().len()), (1, 1));
}

#[tokio::test]
async fn spread_gives_each_of_three_keys_about_a_third_and_skips_a_key_that_answers_429() {
    let limit_b = Arc::new(AtomicUsize::new(0));
    let limit = Arc::clone(&limit_b);
    let upstream = FakeUpstream::start(move |request| {
        if request.header("x-api-key") == Some("b") && limit.load(Ordering::SeqCst) == 1 {
            return Reply::Full {
                status: 429,
                headers: vec![("retry-after", "60".into())],
                body: Bytes::from_static(b"{}"),
            };
        }
        Reply::After {
            delay: Duration::from_millis(20),
            reply: Box::new(Reply::status(200, MESSAGE)),
        }
    })
    .await;
    let url = upstream.url();
    let config = KEYS.to_string()
        + &route(
            "/",
            &[(&url, "a"), (&url, "b"), (&url, "c")],
            "strategy = \"spread\"",
        );
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config).start();
    let burst = |count: usize| {
        let url = proxy.url("/v1/messages");
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..count {
            set.spawn(post_owned(url.clone()));
        }
        set
    };
    let mut set = burst(300);
    while let Some(answer) = set.join_next().await {
        assert_eq!(answer.unwrap().status, 200);
    }
    let by_key = |key: &str| {
        upstream
            .requests()
            .iter()
            .filter(|r| r.header("x-api-key") == Some(key))
            .count()
    };
    for key in ["a", "b", "c"] {
        let n = by_key(key);
        assert!((70..=130).contains(&n), "key {key} got {n} of 300");
    }
    limit_b.store(1, Ordering::SeqCst);
    // One request after another until one lands on b (ties go round in turn) and fails
    // over; from then b cools down.
    let before = by_key("b");
    for _ in 0..6 {
        let answer = post(&proxy.url("/v1/messages"), "{}").await;
        assert_eq!(answer.status, 200, "failed over from b: {}", answer.text());
        if by_key("b") > before {
            break;
        }
    }
    assert_eq!(by_key("b"), before + 1, "b was tried");
    let mut set = burst(60);
    while let Some(answer) = set.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_ne!(target_of(&answer), "1");
    }
    assert_eq!(by_key("b"), before + 1, "b is skipped while it cools");
}

#[tokio::test]
async fn a_stream_fails_over_before_its_first_byte_and_never_after() {
    let error_first = FakeUpstream::start(|_| Reply::Stream {
        headers: vec![("content-type", "text/event-stream".into())],
        chunks: vec![Bytes::from(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        )],
        gate: None,
    })
    .await;
    let good_stream = sse(EVENTS);
    let streaming = FakeUpstream::start(move |_| Reply::Stream {
        headers: vec![("content-type", "text/event-stream".into())],
        chunks: good_stream
            .split_inclusive("\n\n")
            .map(|e| Bytes::from(e.to_string()))
            .collect(),
        gate: None,
    })
    .await;
    // Fails after its first event has gone to the client.
    let late = FakeUpstream::start(|_| Reply::Stream {
        headers: vec![("content-type", "text/event-stream".into())],
        chunks: vec![
            Bytes::from(format!("event: message_start\ndata: {}\n\n", EVENTS[0])),
            Bytes::from(
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            ),
        ],
        gate: None,
    })
    .await;
    let unused = ok_upstream().await;
    let config = KEYS.to_string()
        + &route(
            "/early",
            &[(&error_first.url(), "a"), (&streaming.url(), "b")],
            "",
        )
        + &route("/late", &[(&late.url(), "a"), (&unused.url(), "b")], "");
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config).start();
    let answer = post(&proxy.url("/early/v1/messages"), r#"{"stream":true}"#).await;
    assert_eq!(answer.status, 200);
    assert_eq!(target_of(&answer), "1");
    assert_eq!(
        answer.text(),
        sse(EVENTS),
        "only the serving target's events"
    );
    assert_eq!(error_first.requests().len(), 1);
    let answer = post(&proxy.url("/late/v1/messages"), r#"{"stream":true}"#).await;
    assert_eq!(target_of(&answer), "0");
    assert!(
        answer.text().contains("message_start") && answer.text().contains("overloaded_error"),
        "the stream goes on as it came once a byte was sent: {}",
        answer.text()
    );
    assert_eq!(unused.requests().len(), 0, "never after the first byte");
    let metrics = metrics(&proxy).await;
    assert!(metrics.contains("reason=\"error_event\""), "{metrics}");
}

#[tokio::test]
async fn a_body_over_max_body_is_refused_before_any_target_and_a_413_is_not_replayed() {
    let too_large = FakeUpstream::start(|_| {
        Reply::anthropic_error(413, "request_too_large", "too large for this target")
    })
    .await;
    let other = ok_upstream().await;
    let config = format!("max_body = \"2KiB\"\n{KEYS}")
        + &route("/", &[(&too_large.url(), "a"), (&other.url(), "b")], "");
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    let big = "x".repeat(4096);
    let answer = post(&url, &big).await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(too_large.requests().len() + other.requests().len(), 0);
    // Within max_body: the target's own 413 is the request's fault, the same everywhere.
    let answer = post(&url, &"y".repeat(1500)).await;
    assert_eq!(answer.status, 413);
    assert_eq!(target_of(&answer), "0");
    assert_eq!(too_large.requests()[0].body.len(), 1500);
    assert_eq!(other.requests().len(), 0, "not replayed");
}

/// A fake Bedrock that checks the signature and answers invoke (JSON) and
/// invoke-with-response-stream (event stream) for `EVENTS`.
async fn fake_bedrock() -> FakeUpstream {
    FakeUpstream::start(|request| {
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
                chunks: EVENTS
                    .iter()
                    .map(|e| Bytes::from(eventstream::encode_chunk(e)))
                    .collect(),
                gate: None,
            }
        } else {
            Reply::status(200, MESSAGE)
        }
    })
    .await
}

#[tokio::test]
async fn failover_from_the_anthropic_api_to_bedrock_gives_the_same_anthropic_answer() {
    let overloaded = answering(529, vec![]).await;
    let bedrock = fake_bedrock().await;
    let config = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[credentials.anthropic]
kind = "api_key"
value = "sk-ant"
[credentials.aws]
kind = "aws"
region = "us-east-1"

[[routes]]
prefix = "/"
targets = [
  {{ upstream = "{}", credential = "anthropic", name = "anthropic" }},
  {{ upstream = "{}", credential = "aws", translate = "bedrock", name = "bedrock", models = {{ "claude-sonnet-4-5" = "us.anthropic.claude-sonnet-4-5-20250929-v1:0" }} }},
]
max_cooldown = "1s"
"#,
        overloaded.url(),
        bedrock.url()
    );
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config)
        .env("AWS_ACCESS_KEY_ID", AKID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .start();
    let request = |stream: bool| {
        let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}]});
        Request::post(proxy.url("/v1/messages"))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let answer = send(request(false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(target_of(&answer), "bedrock");
    assert_eq!(
        answer.json(),
        serde_json::from_str::<Value>(MESSAGE).unwrap()
    );
    let invoked = &bedrock.requests()[0];
    assert_eq!(
        invoked.path_and_query, "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
        "the model named by the Bedrock target's `models`"
    );
    assert_eq!(
        overloaded.requests()[0].header("x-api-key"),
        Some("sk-ant"),
        "the Anthropic target got the request as the client sent it"
    );
    // Streamed: the Bedrock event stream comes back as the Anthropic API's SSE.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = send(request(true)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(target_of(&answer), "bedrock");
    assert_eq!(answer.text(), sse(EVENTS));
    assert_eq!(
        overloaded.requests().len(),
        2,
        "tried first again after its cool-down"
    );
    assert!(
        bedrock.requests()[1]
            .path_and_query
            .ends_with("/invoke-with-response-stream")
    );
}

#[tokio::test]
async fn readiness_check_and_env_need_one_target_that_holds_a_credential() {
    let upstream = ok_upstream().await;
    let config = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[credentials.missing]
kind = "api_key"
env = "NOT_SET_ANYWHERE"
[credentials.held]
kind = "api_key"
value = "k"
[credentials.aws]
kind = "aws"
region = "us-east-1"

[[routes]]
prefix = "/"
targets = [
  {{ upstream = "{0}", credential = "missing" }},
  {{ upstream = "{0}", credential = "held" }},
]

[[routes]]
prefix = "/translated"
targets = [
  {{ upstream = "{0}", credential = "held" }},
  {{ upstream = "{0}", credential = "aws", translate = "bedrock" }},
]
"#,
        upstream.url()
    );
    let scratch = Scratch::new();
    let (status, stdout, _) = credproxy(&scratch, &config).run_async("check").await;
    assert!(
        status.success(),
        "one target's credential suffices:\n{stdout}"
    );
    assert!(
        stdout.contains("FAILED"),
        "the failing one is still shown:\n{stdout}"
    );
    let (_, env, _) = credproxy(&scratch, &config).run_async("env").await;
    assert!(
        env.contains("# route /translated -> 2 targets (failover)"),
        "{env}"
    );
    let translated = env.split("# route /translated").nth(1).unwrap();
    assert!(
        translated.contains("export ANTHROPIC_BASE_URL=") && !translated.contains("BEDROCK"),
        "the Anthropic format on a translating route:\n{translated}"
    );
    let proxy = credproxy(&scratch, &config).start();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!((answer.status, target_of(&answer)), (200, "1"));
    let ready = get(&proxy.admin_url("/readyz").await).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
}

#[tokio::test]
async fn a_reload_keeps_the_health_of_targets_that_did_not_change() {
    let limited = answering(429, vec![("retry-after", "60".into())]).await;
    let backup = ok_upstream().await;
    let config = KEYS.to_string() + &route("/", &[(&limited.url(), "a"), (&backup.url(), "b")], "");
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    assert_eq!(target_of(&post(&url, "{}").await), "1");
    // The same targets with another cap, and a credential added that comes first (so
    // every credential's index moves): the cooling target stays cooled down.
    scratch.write(
        "credproxy.toml",
        &(KEYS.to_string()
            + "[credentials.Added]\nkind = \"api_key\"\nvalue = \"z\"\n"
            + &route(
                "/",
                &[(&limited.url(), "a"), (&backup.url(), "b")],
                "max_cooldown = \"30s\"",
            )),
    );
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    proxy.wait_for_output("configuration reloaded").await;
    assert_eq!(target_of(&post(&url, "{}").await), "1");
    assert_eq!(
        limited.requests().len(),
        1,
        "still cooling after the reload"
    );
    let status = get(&proxy.admin_url("/status").await).await.json();
    assert_eq!(
        status["routes"][0]["targets"][0]["state"], "cooling",
        "{status}"
    );
    // A target that changed (another credential) starts healthy.
    scratch.write(
        "credproxy.toml",
        &(KEYS.to_string() + &route("/", &[(&limited.url(), "c"), (&backup.url(), "b")], "")),
    );
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while limited.requests().len() < 2 && std::time::Instant::now() < deadline {
        post(&url, "{}").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(limited.requests().len(), 2, "tried again once it changed");
    assert_eq!(limited.requests()[1].header("x-api-key"), Some("c"));
}

#[tokio::test]
async fn credproxy_status_prints_each_target_with_its_state() {
    let limited = answering(503, vec![]).await;
    let backup = ok_upstream().await;
    let port = Scratch::free_port();
    let config = KEYS.replace("127.0.0.1:0\"\n\n", &format!("127.0.0.1:{port}\"\n\n"))
        + &route(
            "/",
            &[(&limited.url(), "a"), (&backup.url(), "b")],
            "max_cooldown = \"5m\"",
        );
    assert!(config.contains(&format!("admin_listen = \"127.0.0.1:{port}\"")));
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config).start();
    proxy.admin_url("/status").await;
    post(&proxy.url("/v1/messages"), "{}").await;
    let (status, stdout, stderr) = credproxy(&scratch, &config).run_async("status").await;
    assert!(status.success(), "{stdout}{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("/ ") && l.contains(&limited.url()))
        .unwrap_or_else(|| panic!("a row for the first target:\n{stdout}"));
    assert!(
        row.contains("cooling until") && row.contains("503"),
        "{row}"
    );
    assert!(stdout.contains("FAILOVERS"), "{stdout}");
}

#[tokio::test]
async fn config_errors_in_targets_say_where_and_what_to_write() {
    let scratch = Scratch::new();
    let config = r#"listen = "127.0.0.1:0"
[credentials.a]
kind = "api_key"
value = "a"

[[routes]]
prefix = "/"
upstream = "https://api.anthropic.com"
targets = [{ upstream = "https://api.anthropic.com", credential = "a", weight = 0 }, { credential = "nope", upstream = "https://x.example" }]
strategy = "round-robin"
"#;
    let (status, _, stderr) = credproxy(&scratch, config).run("check");
    assert_eq!(status.code(), Some(2), "{stderr}");
    let file = scratch.path("credproxy.toml").display().to_string();
    for expected in [
        format!("{file}:8:12: `upstream` is written on a route that has `targets`"),
        "help: move `upstream` into each target of `targets`".to_string(),
        format!("{file}:9:81: `weight` = 0 is outside the allowed range 1 to 1000"),
        format!("{file}:9:101: route uses credential `nope`, which is not defined"),
        format!("{file}:10:12: `round-robin` is not a choice for `strategy`"),
        "help: write \"failover\"".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected}\n{stderr}");
    }
}

#[tokio::test]
async fn a_bedrock_stream_whose_first_message_is_an_exception_fails_over_to_the_anthropic_api() {
    let exception = Bytes::from(eventstream::encode_frame(
        &[
            (":exception-type", "throttlingException"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        br#"{"message":"Too many requests, please wait before trying again."}"#.to_vec(),
    ));
    let bedrock = FakeUpstream::start(move |_| Reply::Stream {
        headers: vec![("content-type", "application/vnd.amazon.eventstream".into())],
        chunks: vec![exception.clone()],
        gate: None,
    })
    .await;
    let events = sse(EVENTS);
    let anthropic = FakeUpstream::start(move |_| Reply::Stream {
        headers: vec![("content-type", "text/event-stream".into())],
        chunks: vec![Bytes::from(events.clone())],
        gate: None,
    })
    .await;
    let config = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[credentials.anthropic]
kind = "api_key"
value = "sk-ant"
[credentials.aws]
kind = "aws"
region = "us-east-1"

[[routes]]
prefix = "/"
targets = [
  {{ upstream = "{}", credential = "aws", translate = "bedrock" }},
  {{ upstream = "{}", credential = "anthropic" }},
]
"#,
        bedrock.url(),
        anthropic.url()
    );
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config)
        .env("AWS_ACCESS_KEY_ID", AKID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .start();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": true,
        "messages": [{"role": "user", "content": "Hi"}]});
    let answer = post(&proxy.url("/v1/messages"), &body.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(target_of(&answer), "1");
    assert_eq!(
        answer.text(),
        sse(EVENTS),
        "nothing of the exception reached the client"
    );
    assert_eq!(bedrock.requests().len(), 1);
    let status = get(&proxy.admin_url("/status").await).await.json();
    let first = &status["routes"][0]["targets"][0];
    assert_eq!(first["state"], "cooling", "{status}");
    assert_eq!(
        first["last_error"]["message"],
        "an `error` event first in its stream"
    );
}

#[tokio::test]
async fn a_target_speaks_http2_when_it_says_so_while_the_route_speaks_http1() {
    // An h2c upstream (prior knowledge): reachable only by a target with
    // `upstream_http2 = "always"`; the route's own setting is HTTP/1.1 only.
    let h2 = h2_upstream::H2Upstream::start(
        h2_upstream::Plan {
            max_streams: 8,
            hold: Duration::from_millis(10),
            ..Default::default()
        },
        None,
    )
    .await;
    let overloaded = answering(503, vec![]).await;
    let config = format!(
        "{KEYS}\n[[routes]]\nprefix = \"/\"\nupstream_http2 = \"never\"\ntargets = [{{ upstream = \"{}\", credential = \"a\" }}, {{ upstream = \"{}\", credential = \"b\", upstream_http2 = \"always\" }}]\n",
        overloaded.url(),
        h2.url()
    );
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &config).start();
    let answer = post(&proxy.url("/v1/messages"), r#"{"stream":true}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(target_of(&answer), "1");
    assert_eq!(h2.count(|c| &c.streams_answered), 1);
    assert_eq!(overloaded.requests()[0].version, http::Version::HTTP_11);
}
