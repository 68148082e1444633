//! HTTP/2 to the upstream, against an h2 fake that allows few streams per connection,
//! refuses streams and says GOAWAY: every request is served, as many connections are
//! opened as the load needs, and a request that finds the connection cap reached waits at
//! most `queue_timeout` for a 503.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::support::h2_upstream::{H2Upstream, Plan};
use crate::support::tls::TestCa;
use crate::support::*;

/// A config for one route to `upstream` over HTTP/2 (`mode`), with `extra` top-level keys.
fn http2_config(upstream: &str, mode: &str, extra: &str) -> String {
    format!(
        "admin_listen = \"127.0.0.1:0\"\n{extra}\n{}upstream_http2 = \"{mode}\"\n",
        config(upstream, r#"value = "k""#)
    )
}

/// Sends a streaming request; returns the time to the first event and the whole body.
async fn timed_stream(url: String) -> (u16, Duration, String) {
    let started = Instant::now();
    let request = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(r#"{"stream":true}"#)))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = String::new();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            first.get_or_insert_with(|| started.elapsed());
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    (status, first.unwrap_or_else(|| started.elapsed()), text)
}

async fn concurrent_streams(url: &str, count: usize) -> Vec<(u16, Duration, String)> {
    let tasks: Vec<_> = (0..count)
        .map(|_| tokio::spawn(timed_stream(url.to_string())))
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_stream_limit_opens_more_connections_instead_of_queueing() {
    let upstream = H2Upstream::start(
        Plan {
            max_streams: 4,
            hold: Duration::from_secs(6),
            ..Plan::default()
        },
        None,
    )
    .await;
    let scratch = Scratch::new();
    let proxy = credproxy(
        &scratch,
        &http2_config(&upstream.url(), "always", "max_in_flight = 4096"),
    )
    .start();
    let results = concurrent_streams(&proxy.url("/v1/messages"), 200).await;
    let slowest_first = results.iter().map(|(_, first, _)| *first).max().unwrap();
    println!(
        "200 streams, 4 per upstream connection: the slowest first event came after {slowest_first:?}"
    );
    for (status, _, text) in &results {
        assert_eq!(*status, 200, "{text}");
        assert!(text.contains("\"n\":2"), "the stream ended early: {text}");
    }
    // Before: one connection per worker, 4 streams each; the rest waited for whole
    // 6-second streams to end (or were refused). The bound leaves room for a slow machine.
    assert!(
        slowest_first < Duration::from_secs(3),
        "a stream waited {slowest_first:?} for its first event"
    );
    assert!(upstream.count(|c| &c.most_open_on_one_connection) <= 4);
    let connections = upstream.count(|c| &c.connections);
    assert!(
        (50..=120).contains(&connections),
        "200 streams at 4 a connection need about 50 connections, not {connections}"
    );
    assert_eq!(upstream.count(|c| &c.streams_refused), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_streams_and_goaway_lose_no_request() {
    let upstream = H2Upstream::start(
        Plan {
            max_streams: 8,
            hold: Duration::from_millis(200),
            refuse_first: 20,
            goaway_after: Some(3),
            ..Plan::default()
        },
        None,
    )
    .await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &http2_config(&upstream.url(), "always", "")).start();
    let results = concurrent_streams(&proxy.url("/v1/messages"), 100).await;
    for (status, _, text) in &results {
        assert_eq!(*status, 200, "{text}");
        assert!(text.contains("\"n\":2"), "{text}");
    }
    assert_eq!(upstream.count(|c| &c.streams_refused), 20);
    assert!(upstream.count(|c| &c.goaways) >= 1);
    assert_eq!(upstream.count(|c| &c.streams_answered), 100);
}

#[tokio::test]
async fn a_full_connection_cap_gets_503_after_queue_timeout() {
    let upstream = H2Upstream::start(
        Plan {
            max_streams: 2,
            hold: Duration::from_secs(6),
            ..Plan::default()
        },
        None,
    )
    .await;
    let scratch = Scratch::new();
    let extra = "workers = 1\npool_max_connections_per_host = 1\nqueue_timeout = \"1s\"";
    // A fixed admin port, so `credproxy status` finds it.
    let config = http2_config(&upstream.url(), "always", extra).replace(
        "admin_listen = \"127.0.0.1:0\"",
        &format!("admin_listen = \"127.0.0.1:{}\"", Scratch::free_port()),
    );
    let proxy = credproxy(&scratch, &config).start();
    let url = proxy.url("/v1/messages");
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(timed_stream(url.clone())))
        .collect();
    // Both streams are open once the upstream counts them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.count(|c| &c.open_streams) < 2 {
        assert!(Instant::now() < deadline, "the two streams never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let refused = post(&url, "{}").await;
    let waited = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.text());
    let (kind, message) = refused.error();
    assert_eq!(kind, "overloaded_error");
    assert!(
        message.contains("pool_max_connections_per_host"),
        "{message}"
    );
    assert!(refused.headers.contains_key("retry-after"));
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert_eq!(upstream.count(|c| &c.connections), 1);

    let status = get(&proxy.admin_url("/status").await).await.json();
    let host = &status["upstreams"][0];
    assert_eq!(host["protocol"], "HTTP/2", "{status}");
    assert_eq!(host["connections"], 1, "{status}");
    assert_eq!(host["streams_in_use"], 2, "{status}");
    assert_eq!(host["stream_limit"], 2, "{status}");
    let (_, stdout, stderr) = credproxy(&scratch, &config).run_async("status").await;
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&upstream.url()))
        .unwrap_or_else(|| panic!("no upstream row: {stdout}{stderr}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..], ["HTTP/2", "1", "2", "2", "0"], "{stdout}");
    let metrics = get(&proxy.admin_url("/metrics").await).await.text();
    // The refused request waited a second for a stream: the wait is in the histogram.
    let waited: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("credproxy_upstream_stream_wait_seconds_sum{route=\"/\"} "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(waited >= 0.9, "{waited} s of waits recorded: {metrics}");
    // The connection count and the streams on it are gauges too.
    let labels = format!(
        "{{upstream=\"{}\",upstream_http2=\"always\",protocol=\"HTTP/2\"}}",
        upstream.url()
    );
    for (gauge, value) in [
        ("credproxy_upstream_connections", 1),
        ("credproxy_upstream_streams_in_use", 2),
        ("credproxy_upstream_streams_waiting", 0),
    ] {
        let line = format!("{gauge}{labels} {value}");
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in {metrics}"
        );
    }
    for task in held {
        let (status, _, text) = task.await.unwrap();
        assert_eq!(status, 200, "{text}");
    }
}

#[tokio::test]
async fn https_upstreams_get_http2_by_alpn_and_share_connections() {
    let ca = TestCa::new();
    let upstream = H2Upstream::start(
        Plan {
            max_streams: 100,
            hold: Duration::from_millis(300),
            ..Plan::default()
        },
        Some(&ca.acceptor),
    )
    .await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let extra = format!("workers = 1\nca_file = \"{}\"", ca_file.display());
    let proxy = credproxy(&scratch, &http2_config(&upstream.url(), "auto", &extra)).start();
    let results = concurrent_streams(&proxy.url("/v1/messages"), 64).await;
    for (status, _, text) in &results {
        assert_eq!(*status, 200, "{text}");
    }
    // 64 requests in flight on one worker fit one connection's 100 streams.
    assert_eq!(upstream.count(|c| &c.connections), 1);
    let status = get(&proxy.admin_url("/status").await).await.json();
    assert_eq!(status["upstreams"][0]["protocol"], "HTTP/2", "{status}");
    assert_eq!(status["routes"][0]["upstream_http2"], "auto", "{status}");
    // ALPN's choice and the one connection, in the metrics too.
    let metrics = get(&proxy.admin_url("/metrics").await).await.text();
    let line = format!(
        "credproxy_upstream_connections{{upstream=\"{}\",upstream_http2=\"auto\",protocol=\"HTTP/2\"}} 1",
        upstream.url()
    );
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in {metrics}"
    );
}

#[tokio::test]
async fn never_keeps_https_upstreams_on_http1() {
    let ca = TestCa::new();
    let upstream = FakeUpstream::start_tls(&ca, |req| {
        Reply::status(200, format!("{{\"version\":\"{:?}\"}}", req.version))
    })
    .await;
    let scratch = Scratch::new();
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let extra = format!("ca_file = \"{}\"", ca_file.display());
    let proxy = credproxy(&scratch, &http2_config(&upstream.url(), "never", &extra)).start();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("HTTP/1.1"), "{}", answer.text());
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_the_upstream_back() {
    const TOTAL: usize = 48 * 1024 * 1024;
    let upstream = H2Upstream::start(
        Plan {
            max_streams: 100,
            body_bytes: Some(TOTAL),
            ..Plan::default()
        },
        None,
    )
    .await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &http2_config(&upstream.url(), "always", "")).start();
    let response = client()
        .request(
            Request::post(proxy.url("/v1/messages"))
                .body(Full::new(Bytes::from("{}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The client reads nothing for a while: the upstream may send what the windows and
    // the sockets' buffers hold, not the whole body.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent_while_paused = upstream.count(|c| &c.bytes_sent);
    println!("sent while the client paused: {sent_while_paused} of {TOTAL} bytes");
    assert!(
        sent_while_paused < TOTAL / 2,
        "{sent_while_paused} bytes went out while the client read nothing"
    );
    let body = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
        .await
        .expect("the answer stalled after the client resumed reading")
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), TOTAL);
    assert!(body.iter().all(|b| *b == b'x'));
}

#[tokio::test]
async fn a_stream_the_upstream_resets_is_cut_short_and_the_next_request_is_served() {
    let upstream = H2Upstream::start(
        Plan {
            max_streams: 100,
            hold: Duration::from_millis(100),
            reset_after_first: true,
            ..Plan::default()
        },
        None,
    )
    .await;
    let scratch = Scratch::new();
    let proxy = credproxy(&scratch, &http2_config(&upstream.url(), "always", "")).start();
    for _ in 0..3 {
        let response = client()
            .request(
                Request::post(proxy.url("/v1/messages"))
                    .body(Full::new(Bytes::from("{}")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("\"n\":1"));
        // The reset reaches the client as a body that ends in an error, never as a clean end.
        let rest = body.collect().await;
        assert!(rest.is_err(), "a reset stream ended as if complete");
    }
    assert_eq!(upstream.count(|c| &c.streams_answered), 0);
}

#[tokio::test]
async fn always_against_an_http1_upstream_fails_at_once_with_why() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An HTTP/1.1-only server: whatever arrives (the HTTP/2 preface) gets a 400 and a close.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let scratch = Scratch::new();
    let upstream = format!("http://127.0.0.1:{}", addr.port());
    let proxy = credproxy(&scratch, &http2_config(&upstream, "always", "")).start();
    let started = Instant::now();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    let (_, message) = answer.error();
    assert!(message.contains("SETTINGS"), "{message}");
    // Before: the pool dialed again and again until `upstream_timeout`.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let dials = accepted.load(Ordering::SeqCst);
    assert!(dials <= 4, "{dials} connections for one request");
    server.abort();
}
