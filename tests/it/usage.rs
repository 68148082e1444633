//! Usage, spend and quotas from outside (issue 23): records for every answer shape
//! (JSON, SSE, compressed, abandoned), totals by tag for a benchmark run, 429s at exactly
//! the configured quota, a reload and a restart that keep the counters, and two
//! instances sharing a budget through a real `redis-server` that is stopped and restarted
//! mid-run.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::support::*;

const MODEL: &str = "claude-sonnet-4-5";

/// An Anthropic Messages answer with every kind of token.
fn message_json() -> String {
    format!(
        r#"{{"id":"msg_1","type":"message","role":"assistant","model":"{MODEL}","content":[{{"type":"text","text":"hi"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":100,"cache_creation_input_tokens":20,"cache_read_input_tokens":50,"output_tokens":10}}}}"#
    )
}

fn sse_start() -> String {
    format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{MODEL}\",\"content\":[],\"stop_reason\":null,\"usage\":{{\"input_tokens\":100,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}}}}\n\n"
    )
}

fn sse_rest() -> String {
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"usage is not here\"}}\n\n\
     event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":42}}\n\n\
     event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        .to_string()
}

/// $3 / $15 / $0.30 / $3.75 per million: `message_json` costs $0.00054.
const PRICES: &str = r#"
[prices."claude-sonnet-4-*"]
input = 3
output = 15
cache_read = 0.3
cache_write = 3.75
"#;
const MESSAGE_COST: f64 = 0.00054;

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

/// A fake Anthropic API: `/json`, `/gzip`, `/sse` and `/nousage` by the path's end.
async fn anthropic() -> FakeUpstream {
    FakeUpstream::start(|request| {
        let path = request.path_and_query.as_str();
        let json_headers = |extra: Vec<(&'static str, String)>| {
            let mut headers = vec![
                ("content-type", "application/json".to_string()),
                ("request-id", "req_test_1".to_string()),
            ];
            headers.extend(extra);
            headers
        };
        if path.ends_with("/gzip") {
            Reply::Full {
                status: 200,
                headers: json_headers(vec![("content-encoding", "gzip".into())]),
                body: Bytes::from(gzip(&message_json())),
            }
        } else if path.ends_with("/sse") {
            Reply::Stream {
                headers: vec![("content-type", "text/event-stream".into())],
                chunks: vec![Bytes::from(sse_start()), Bytes::from(sse_rest())],
                gate: None,
            }
        } else if path.ends_with("/nousage") {
            Reply::status(200, r#"{"input_tokens": 7}"#)
        } else {
            Reply::Full {
                status: 200,
                headers: json_headers(vec![]),
                body: Bytes::from(message_json()),
            }
        }
    })
    .await
}

/// One route `/` to `upstream`, the admin listener on a free port, and `extra`.
fn usage_config(upstream: &str, extra: &str) -> String {
    format!(
        "admin_listen = \"127.0.0.1:0\"\n{}\n{extra}\n{PRICES}",
        route_config("/", upstream)
    )
}

async fn post_model(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = format!(r#"{{"model":"{MODEL}","max_tokens":100,"messages":[]}}"#);
    send(request.body(Full::new(Bytes::from(body))).unwrap()).await
}

/// The usage log's records once it holds `count` of them.
async fn records(scratch: &Scratch, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(scratch.path("usage.jsonl")).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{count} records expected, the log holds:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin_json(proxy: &Running, path: &str) -> Value {
    get(&proxy.admin_url(path).await).await.json()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[tokio::test]
async fn every_answer_shape_gets_one_record_with_tokens_cost_and_who() {
    let upstream = anthropic().await;
    let scratch = Scratch::new();
    let config = usage_config(&upstream.url(), "[usage]\nlog = \"usage.jsonl\"\n");
    let proxy = credproxy(&scratch, &config).start();
    let tag = [("x-credproxy-tag", "bench-run-7")];
    for path in ["/v1/json", "/v1/gzip", "/v1/sse", "/v1/nousage"] {
        let answer = post_model(&proxy.url(path), &tag).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    }
    // The gzip answer reaches the client compressed, byte for byte.
    let gz = post_model(&proxy.url("/v1/gzip"), &[]).await;
    assert_eq!(gz.body.as_ref(), gzip(&message_json()).as_slice());
    // The tag never reaches the upstream.
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.header("x-credproxy-tag").is_none())
    );
    let records = records(&scratch, 5).await;
    let json = &records[0];
    assert_eq!(json["caller"], "local");
    assert_eq!(json["route"], "/");
    assert_eq!(json["model"], MODEL);
    assert_eq!(json["tag"], "bench-run-7");
    assert_eq!(json["status"], 200);
    assert_eq!(json["input_tokens"], 100);
    assert_eq!(json["output_tokens"], 10);
    assert_eq!(json["cache_creation_input_tokens"], 20);
    assert_eq!(json["cache_read_input_tokens"], 50);
    assert!(
        close(json["cost_usd"].as_f64().unwrap(), MESSAGE_COST),
        "{json}"
    );
    assert_eq!(json["upstream_request_id"], "req_test_1");
    assert_eq!(json["retried"], false);
    assert!(
        json["duration_ms"].is_u64() && json["time"].is_string(),
        "{json}"
    );
    let gzipped = &records[1];
    assert_eq!(gzipped["input_tokens"], 100, "{gzipped}");
    assert_eq!(gzipped["output_tokens"], 10, "{gzipped}");
    let sse = &records[2];
    assert_eq!(sse["input_tokens"], 100, "{sse}");
    assert_eq!(sse["output_tokens"], 42, "{sse}");
    let none = &records[3];
    assert_eq!(none["tokens_unknown"], true, "{none}");
    assert_eq!(none["input_tokens"], Value::Null, "{none}");
    // Totals for the run, by tag, and the metrics.
    let run = admin_json(&proxy, "/usage?tag=bench-run-7").await;
    assert_eq!(run["total"]["requests"], 4, "{run}");
    assert_eq!(run["total"]["input_tokens"], 300, "{run}");
    assert_eq!(run["total"]["unknown_tokens"], 1, "{run}");
    // The answer without usage names no model (a model name is the client's to choose;
    // only those that answered are named).
    assert_eq!(run["by"]["model"][MODEL]["requests"], 3, "{run}");
    assert_eq!(run["by"]["model"]["unknown"]["requests"], 1, "{run}");
    let all = admin_json(&proxy, "/usage").await;
    assert_eq!(all["total"]["requests"], 5, "{all}");
    assert_eq!(all["by"]["tag"]["bench-run-7"]["requests"], 4, "{all}");
    assert_eq!(all["by"]["caller"]["local"]["requests"], 5, "{all}");
    let metrics = get(&proxy.admin_url("/metrics").await).await.text();
    let input =
        format!("credproxy_tokens_total{{route=\"/\",model=\"{MODEL}\",type=\"input\"}} 400");
    assert!(metrics.contains(&input), "{metrics}");
    assert!(
        metrics.contains("credproxy_spend_usd_total{route=\"/\",model=\"claude-sonnet-4-5\"}"),
        "{metrics}"
    );
    // `credproxy usage --tag` prints the run's table.
    let admin = proxy.admin_url("").await;
    let port = admin.rsplit(':').next().unwrap();
    let cli_config = config.replace(
        "admin_listen = \"127.0.0.1:0\"",
        &format!("admin_listen = \"127.0.0.1:{port}\""),
    );
    let (status, out, err) = credproxy(&scratch, &cli_config).run_async("usage").await;
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("local"), "{out}");
    let (status, out, err) = credproxy(&scratch, &cli_config)
        .arg("usage")
        .arg("--by")
        .arg("model")
        .arg("--tag")
        .run_async("bench-run-7")
        .await;
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("tag bench-run-7") && out.contains(MODEL),
        "{out}"
    );
}

#[tokio::test]
async fn an_abandoned_stream_is_counted_up_to_where_the_client_left() {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = FakeUpstream::gated_stream(
        &gate,
        vec![Bytes::from(sse_start()), Bytes::from(sse_rest())],
    )
    .await;
    let scratch = Scratch::new();
    let config = usage_config(&upstream.url(), "[usage]\nlog = \"usage.jsonl\"\n");
    let proxy = credproxy(&scratch, &config).start();
    let response = client()
        .request(
            Request::post(proxy.url("/v1/messages"))
                .body(Full::new(Bytes::from(format!(r#"{{"model":"{MODEL}"}}"#))))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"event: message_start"));
    drop(body);
    let records = records(&scratch, 1).await;
    assert_eq!(records[0]["cut"], "client", "{}", records[0]);
    assert_eq!(records[0]["input_tokens"], 100, "{}", records[0]);
    assert_eq!(records[0]["output_tokens"], 1, "{}", records[0]);
}

#[tokio::test]
async fn a_quota_refuses_at_exactly_its_limit_and_nothing_reaches_the_upstream() {
    let upstream = anthropic().await;
    let scratch = Scratch::new();
    // Each answer is 130 tokens (input + output + cache write): the requests find 0, 130
    // and 260 used, below 390, and are admitted; the fourth finds 390, exactly the limit.
    let quotas = r#"
[usage]
log = "usage.jsonl"

[[quotas]]
name = "per-minute"
requests_per_minute = 6

[[quotas]]
name = "tokens-today"
tokens_per_day = 390
"#;
    let proxy = credproxy(&scratch, &usage_config(&upstream.url(), quotas)).start();
    for n in 1..=3 {
        let answer = post_model(&proxy.url("/v1/json"), &[]).await;
        assert_eq!(answer.status, 200, "request {n}: {}", answer.text());
    }
    let refused = post_model(&proxy.url("/v1/json"), &[]).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    let (kind, message) = refused.error();
    assert_eq!(kind, "rate_limit_error");
    assert!(
        message.contains("tokens-today") && message.contains("390 tokens per day"),
        "{message}"
    );
    assert_eq!(refused.headers["x-credproxy-quota"], "tokens-today");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.headers["x-should-retry"], "false", "a day's quota");
    assert_eq!(
        upstream.count(),
        3,
        "the refused request never reached the upstream"
    );
    let records = records(&scratch, 4).await;
    assert_eq!(records[3]["status"], 429);
    assert_eq!(records[3]["quota"], "tokens-today");
    let metrics = get(&proxy.admin_url("/metrics").await).await.text();
    assert!(
        metrics.contains("credproxy_quota_rejections_total{quota=\"tokens-today\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn requests_per_minute_admits_exactly_the_limit_even_at_once() {
    let upstream = FakeUpstream::start(|_| Reply::After {
        delay: Duration::from_millis(300),
        reply: Box::new(Reply::status(200, message_json())),
    })
    .await;
    let scratch = Scratch::new();
    let quotas = "[[quotas]]\nname = \"burst\"\nrequests_per_minute = 5\n";
    let proxy = credproxy(&scratch, &usage_config(&upstream.url(), quotas)).start();
    let url = proxy.url("/v1/messages");
    let answers = futures_join(20, &url).await;
    let ok = answers.iter().filter(|s| **s == 200).count();
    let limited = answers.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, limited), (5, 15), "{answers:?}");
    assert_eq!(upstream.count(), 5);
}

/// Sends `n` model requests at once; their statuses.
async fn futures_join(n: usize, url: &str) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { post_model(&url, &[]).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn concurrent_requests_of_one_caller_do_not_multiply_the_overshoot() {
    // Each answer is 130 tokens; the limit 500. One answer teaches the estimate, then 30
    // requests at once: their reservations fill the window, so at most the ones that fit
    // (plus one) are admitted, not all 30.
    let upstream = FakeUpstream::start(|_| Reply::After {
        delay: Duration::from_millis(300),
        reply: Box::new(Reply::status(200, message_json())),
    })
    .await;
    let scratch = Scratch::new();
    let quotas = "[[quotas]]\nname = \"tpm\"\ntokens_per_minute = 500\n";
    let proxy = credproxy(&scratch, &usage_config(&upstream.url(), quotas)).start();
    let url = proxy.url("/v1/messages");
    assert_eq!(post_model(&url, &[]).await.status, 200);
    let answers = futures_join(30, &url).await;
    let ok = answers.iter().filter(|s| **s == 200).count();
    // 130 used; each in flight reserves ~130: 130 + 130k < 500 admits k = 0, 1, 2.
    assert!((1..=3).contains(&ok), "{ok} admitted of 30: {answers:?}");
    let usage = admin_json(&proxy, "/usage?window=minute").await;
    let used = usage["total"]["input_tokens"].as_u64().unwrap()
        + usage["total"]["output_tokens"].as_u64().unwrap()
        + usage["total"]["cache_creation_input_tokens"]
            .as_u64()
            .unwrap();
    assert!(used <= 500 + 130, "overshoot beyond one request: {used}");
}

#[tokio::test]
async fn a_reload_keeps_the_counters_and_applies_the_new_limit() {
    let upstream = anthropic().await;
    let scratch = Scratch::new();
    let quota = |n: u32| format!("[[quotas]]\nname = \"rpm\"\nrequests_per_minute = {n}\n");
    let proxy = credproxy(&scratch, &usage_config(&upstream.url(), &quota(10))).start();
    for _ in 0..3 {
        assert_eq!(post_model(&proxy.url("/v1/json"), &[]).await.status, 200);
    }
    scratch.write("credproxy.toml", &usage_config(&upstream.url(), &quota(3)));
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    proxy.wait_for_output("configuration reloaded").await;
    let refused = post_model(&proxy.url("/v1/json"), &[]).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.headers["x-credproxy-quota"], "rpm");
}

#[tokio::test]
async fn a_restart_keeps_the_day_and_a_corrupt_state_file_is_named() {
    let upstream = anthropic().await;
    let scratch = Scratch::new();
    let extra =
        "[usage]\nstate_dir = \"state\"\n\n[[quotas]]\nname = \"daily\"\nspend_per_day = 0.001\n";
    let config = usage_config(&upstream.url(), extra);
    let mut proxy = credproxy(&scratch, &config).start();
    assert_eq!(post_model(&proxy.url("/v1/json"), &[]).await.status, 200);
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proxy.exit_status().await.success());
    let proxy = credproxy(&scratch, &config).start();
    let usage = admin_json(&proxy, "/usage").await;
    assert!(
        close(usage["total"]["cost_usd"].as_f64().unwrap(), MESSAGE_COST),
        "{usage}"
    );
    // $0.00054 of $0.001: one more is admitted, then the day is spent.
    assert_eq!(post_model(&proxy.url("/v1/json"), &[]).await.status, 200);
    let refused = post_model(&proxy.url("/v1/json"), &[]).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(refused.error().1.contains("per day"), "{}", refused.text());
    let (status, out, err) = credproxy(&scratch, &config).run_async("check").await;
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("state/usage.json") && out.contains("counters)"),
        "{out}"
    );
    drop(proxy);
    scratch.write("state/usage.json", "{ not json");
    let (status, out, _) = credproxy(&scratch, &config).run_async("check").await;
    assert_eq!(status.code(), Some(1));
    assert!(
        out.contains("usage: FAILED") && out.contains("corrupt"),
        "{out}"
    );
    let (status, out, err) = credproxy(&scratch, &config).run_async("run").await;
    assert!(!status.success());
    assert!(
        err.contains("state/usage.json") && err.contains("corrupt") && err.contains("move it away"),
        "{out}{err}"
    );
}

#[tokio::test]
async fn a_bad_tag_is_refused_with_what_to_write() {
    let upstream = anthropic().await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &usage_config(&upstream.url(), "")).start();
    let answer = post_model(
        &proxy.url("/v1/json"),
        &[("x-credproxy-tag", "run 7; drop")],
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.error().1.contains("x-credproxy-tag"),
        "{}",
        answer.text()
    );
    assert_eq!(upstream.count(), 0);
}

/// The test server's password: it must appear in no output of credproxy's.
const REDIS_PASSWORD: &str = "s3cret-redis-pass";

/// A `redis-server` of its own on a free loopback port, stopped when dropped.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// `None` (with a visible message) where `redis-server` cannot be started.
    fn start() -> Option<RedisServer> {
        let mut server = RedisServer {
            child: None,
            port: Scratch::free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        server.run().then_some(server)
    }

    fn run(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", REDIS_PASSWORD])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!(
                "SKIPPED: redis-server cannot be started here (install Debian's redis-server; .ci/run does)"
            );
            return false;
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn url(&self) -> String {
        format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn two_instances_share_a_budget_through_redis_and_survive_its_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let upstream = anthropic().await;
    let (one, two) = (Scratch::new(), Scratch::new());
    let extra = format!(
        "[usage]\nstore = \"{}\"\n\n[[quotas]]\nname = \"team\"\nper = \"all\"\nrequests_per_minute = 4\n",
        redis.url()
    );
    let config = usage_config(&upstream.url(), &extra);
    let a = credproxy(&one, &config).arg("--log-level=trace").start();
    let b = credproxy(&two, &config).start();
    for _ in 0..3 {
        assert_eq!(post_model(&a.url("/v1/json"), &[]).await.status, 200);
    }
    // Within a second, B sees A's three: one more is admitted there, then none.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(post_model(&b.url("/v1/json"), &[]).await.status, 200);
    let full = post_model(&b.url("/v1/json"), &[]).await;
    assert_eq!(full.status, 429, "B must count A's three: {}", full.text());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let refused = post_model(&a.url("/v1/json"), &[]).await;
    assert_eq!(
        refused.status,
        429,
        "A must see B's request: {}",
        refused.text()
    );
    let shared = admin_json(&b, "/usage").await;
    assert_eq!(shared["store"], "redis");
    let (status, out, err) = credproxy(&Scratch::new(), &config).run_async("check").await;
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("usage: store redis://**@127.0.0.1:"), "{out}");
    assert!(
        !format!("{out}{err}").contains(REDIS_PASSWORD),
        "{out}{err}"
    );
    assert_eq!(shared["total"]["requests"], 4, "{shared}");
    // Redis stops: `on_store_error = "allow"` serves and counts locally (a third
    // instance, with room in its quota).
    redis.stop();
    let roomy = extra.replace("requests_per_minute = 4", "requests_per_minute = 100");
    let scratch = Scratch::new();
    let c = credproxy(&scratch, &usage_config(&upstream.url(), &roomy)).start();
    assert_eq!(post_model(&c.url("/v1/json"), &[]).await.status, 200);
    c.wait_for_output("cannot be reached").await;
    assert_eq!(post_model(&c.url("/v1/json"), &[]).await.status, 200);
    let ready = get(&c.admin_url("/readyz").await).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    // Back (empty): what C counted meanwhile is sent.
    assert!(redis.run(), "redis-server restarts");
    c.wait_for_output("reachable again").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = admin_json(&c, "/usage").await;
    assert_eq!(after["total"]["requests"], 2, "{after}");
    for (name, output) in [("A", a.output()), ("B", b.output()), ("C", c.output())] {
        assert!(
            !output.contains(REDIS_PASSWORD),
            "{name} printed the store's password:\n{output}"
        );
    }
}

#[tokio::test]
async fn bedrock_answers_are_counted_native_and_translated_streamed_and_not() {
    use credproxy::proxy::translate::eventstream;
    let events = [
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":9,"output_tokens":1}}}"#.to_string(),
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#.to_string(),
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":9,"outputTokenCount":2,"invocationLatency":410,"firstByteLatency":200,"cacheReadInputTokenCount":3,"cacheWriteInputTokenCount":4}}"#.to_string(),
    ];
    let frames: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::from(eventstream::encode_chunk(e)))
        .collect();
    let upstream = FakeUpstream::start(move |request| {
        if request.path_and_query.ends_with("/invoke-with-response-stream") {
            Reply::Stream {
                headers: vec![("content-type", "application/vnd.amazon.eventstream".into())],
                chunks: frames.clone(),
                gate: None,
            }
        } else {
            Reply::Full {
                status: 200,
                headers: vec![
                    ("content-type", "application/json".into()),
                    ("x-amzn-requestid", "bedrock-req-1".into()),
                    ("x-amzn-bedrock-input-token-count", "11".into()),
                    ("x-amzn-bedrock-output-token-count", "3".into()),
                ],
                body: Bytes::from(
                    r#"{"id":"msg_2","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":11,"output_tokens":3}}"#,
                ),
            }
        }
    })
    .await;
    let scratch = Scratch::new();
    let config = format!(
        r#"listen = "127.0.0.1:0"
[usage]
log = "usage.jsonl"

[credentials.aws]
kind = "aws"
region = "us-east-1"

[[routes]]
prefix = "/anthropic-on-bedrock"
upstream = "{upstream}"
credential = "aws"
translate = "bedrock"
models = {{ "claude-sonnet-4-5" = "us.anthropic.claude-sonnet-4-5-20250929-v1:0" }}

[[routes]]
prefix = "/bedrock"
upstream = "{upstream}"
credential = "aws"
"#,
        upstream = upstream.url()
    );
    let proxy = credproxy(&scratch, &config)
        .env("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        )
        .start();
    let anthropic_request = |stream: bool| {
        serde_json::json!({
            "model": "claude-sonnet-4-5", "max_tokens": 10, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]
        })
    };
    let base = proxy.url("/anthropic-on-bedrock/v1/messages");
    let streamed = send(json_post(&base, &anthropic_request(true))).await;
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    assert!(
        streamed.text().contains("event: message_stop"),
        "{}",
        streamed.text()
    );
    let whole = send(json_post(&base, &anthropic_request(false))).await;
    assert_eq!(whole.status, 200, "{}", whole.text());
    let native = proxy.url("/bedrock/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke");
    let body = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}"#;
    assert_eq!(post(&native, body).await.status, 200);
    let records = records(&scratch, 3).await;
    let streamed = &records[0];
    assert_eq!(streamed["model"], "claude-sonnet-4-5", "{streamed}");
    assert_eq!(streamed["input_tokens"], 9, "{streamed}");
    assert_eq!(streamed["output_tokens"], 2, "{streamed}");
    assert_eq!(streamed["cache_read_input_tokens"], 3, "{streamed}");
    assert_eq!(streamed["cache_creation_input_tokens"], 4, "{streamed}");
    let translated = &records[1];
    assert_eq!(translated["input_tokens"], 11, "{translated}");
    assert_eq!(translated["output_tokens"], 3, "{translated}");
    let native = &records[2];
    assert_eq!(native["route"], "/bedrock");
    assert_eq!(
        native["model"], "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "{native}"
    );
    assert_eq!(native["input_tokens"], 11, "{native}");
    assert_eq!(native["upstream_request_id"], "bedrock-req-1", "{native}");
}

/// A JSON `POST` of `body` to `url`.
fn json_post(url: &str, body: &Value) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn deny_answers_503_naming_the_store_while_it_cannot_be_reached() {
    let upstream = anthropic().await;
    let scratch = Scratch::new();
    let nobody = Scratch::free_port();
    let extra = format!(
        "[usage]\nstore = \"redis://127.0.0.1:{nobody}/0\"\non_store_error = \"deny\"\n\n[[quotas]]\nname = \"any\"\nrequests_per_minute = 100\n"
    );
    let proxy = credproxy(&scratch, &usage_config(&upstream.url(), &extra)).start();
    proxy.wait_for_output("cannot be reached").await;
    let answer = post_model(&proxy.url("/v1/json"), &[]).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    let (kind, message) = answer.error();
    assert_eq!(kind, "overloaded_error");
    assert!(
        message.contains("usage store") && message.contains("deny"),
        "{message}"
    );
    assert!(
        !message.contains("127.0.0.1"),
        "the store's address is not the caller's business"
    );
    let ready = get(&proxy.admin_url("/readyz").await).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("usage store"), "{}", ready.text());
    assert_eq!(upstream.count(), 0);
    let status = admin_json(&proxy, "/status").await;
    assert_eq!(status["usage"]["store"], "redis", "{status}");
    assert_eq!(status["usage"]["store_reachable"], false, "{status}");
    // `credproxy check` says so too, and fails.
    let (status, out, err) = credproxy(&scratch, &usage_config(&upstream.url(), &extra))
        .run_async("check")
        .await;
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains(&format!(
            "usage: FAILED: store redis://127.0.0.1:{nobody}/0 does not answer"
        )),
        "{out}{err}"
    );
}

fn brotli(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
    writer.write_all(text.as_bytes()).unwrap();
    drop(writer);
    out
}

fn deflate(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn openai_converse_and_compressed_shapes_are_counted_through_the_proxy() {
    use credproxy::eventstream::encode_frame;
    let converse_stream: Vec<u8> = [
        encode_frame(
            &[(":message-type", "event"), (":event-type", "messageStart"), (":content-type", "application/json")],
            br#"{"role":"assistant"}"#.to_vec(),
        ),
        encode_frame(
            &[(":message-type", "event"), (":event-type", "metadata"), (":content-type", "application/json")],
            br#"{"usage":{"inputTokens":21,"outputTokens":8,"totalTokens":29,"cacheReadInputTokens":2,"cacheWriteInputTokens":1},"metrics":{"latencyMs":120}}"#.to_vec(),
        ),
    ]
    .concat();
    let sse = format!("{}{}", sse_start(), sse_rest());
    let upstream = FakeUpstream::start(move |request| {
        let path = request.path_and_query.as_str();
        let body = |ct: &str, encoding: Option<&str>, bytes: Vec<u8>| {
            let mut headers = vec![("content-type", ct.to_string())];
            if let Some(e) = encoding {
                headers.push(("content-encoding", e.to_string()));
            }
            Reply::Full { status: 200, headers, body: Bytes::from(bytes) }
        };
        if path.contains("/openai/") {
            body("application/json", None, br#"{"id":"c1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":40,"completion_tokens":6,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":10}}}"#.to_vec())
        } else if path.ends_with("/converse") {
            body("application/json", None, br#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":12,"outputTokens":4,"totalTokens":16}}"#.to_vec())
        } else if path.ends_with("/converse-stream") {
            body("application/vnd.amazon.eventstream", None, converse_stream.clone())
        } else if path.ends_with("/br") {
            body("text/event-stream", Some("br"), brotli(&sse))
        } else {
            body("application/json", Some("deflate"), deflate(&message_json()))
        }
    })
    .await;
    let scratch = Scratch::new();
    let proxy = credproxy(
        &scratch,
        &usage_config(&upstream.url(), "[usage]\nlog = \"usage.jsonl\"\n"),
    )
    .start();
    let paths = [
        "/openai/deployments/gpt-4o/chat/completions",
        "/model/amazon.nova-pro-v1:0/converse",
        "/model/amazon.nova-pro-v1:0/converse-stream",
        "/v1/messages/br",
        "/v1/messages/deflate",
    ];
    for path in paths {
        let answer = post(&proxy.url(path), "{}").await;
        assert_eq!(answer.status, 200, "{path}");
    }
    let records = records(&scratch, paths.len()).await;
    let tokens = |r: &Value| {
        [
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ]
        .map(|k| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}")))
    };
    assert_eq!(records[0]["model"], "gpt-4o");
    assert_eq!(
        tokens(&records[0]),
        [30, 6, 0, 10],
        "OpenAI: {}",
        records[0]
    );
    assert_eq!(records[1]["model"], "amazon.nova-pro-v1:0");
    assert_eq!(
        tokens(&records[1]),
        [12, 4, 0, 0],
        "Converse: {}",
        records[1]
    );
    assert_eq!(
        tokens(&records[2]),
        [21, 8, 1, 2],
        "ConverseStream: {}",
        records[2]
    );
    assert_eq!(
        tokens(&records[3]),
        [100, 42, 0, 0],
        "brotli SSE: {}",
        records[3]
    );
    assert_eq!(
        tokens(&records[4]),
        [100, 10, 20, 50],
        "deflate JSON: {}",
        records[4]
    );
}
