//! What the benches share: a fast mock Anthropic-style upstream (in the bench process), a
//! closed-loop HTTP/1.1 load generator, and the credproxy release binary started against
//! the mock with its CPU and memory readable from /proc.
#![allow(dead_code)] // each bench uses its own part

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const KEY: &str = "sk-ant-bench-real-key";
pub const SSE_DELTAS: usize = 10;
pub const SSE_DELAY: Duration = Duration::from_millis(5);

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

pub fn request_body(size: usize) -> Vec<u8> {
    let head =
        br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":""#;
    let tail = br#""}]}"#;
    let mut body = head.to_vec();
    body.resize(size.saturating_sub(tail.len()).max(head.len()), b'a');
    body.extend_from_slice(tail);
    body
}

// ── Mock upstream ────────────────────────────────────────────────────────────

/// Connections the mock accepted: direct runs open one per load connection, so anything
/// beyond that came from credproxy's pool (which should reuse its connections).
pub static MOCK_CONNECTIONS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The key the mock accepts; [`rotate`] changes it (the soak bench does, every few seconds).
static ACCEPTED: RwLock<String> = RwLock::new(String::new());

/// From now on the mock accepts `key` only.
pub fn rotate(key: &str) {
    *ACCEPTED.write().unwrap() = key.to_string();
}

pub async fn start_mock() -> SocketAddr {
    if ACCEPTED.read().unwrap().is_empty() {
        rotate(KEY);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let message = Bytes::from(format!(
        r#"{{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{{"type":"text","text":"{}"}}],"stop_reason":"end_turn","usage":{{"input_tokens":10,"output_tokens":20}}}}"#,
        "x".repeat(800)
    ));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            MOCK_CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let message = message.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let message = message.clone();
                    async move { Ok::<_, Infallible>(mock_answer(req, message).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn mock_answer(
    req: Request<Incoming>,
    message: Bytes,
) -> Response<BoxBody<Bytes, Infallible>> {
    let authorized = req
        .headers()
        .get("x-api-key")
        .is_some_and(|k| k.as_bytes() == ACCEPTED.read().unwrap().as_bytes());
    let sse = req.uri().path() == "/sse";
    let _ = req.into_body().collect().await;
    if !authorized {
        let mut response = Response::new(
            Full::new(Bytes::from_static(
                br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            ))
            .boxed(),
        );
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    if !sse {
        let mut response = Response::new(Full::new(message).boxed());
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return response;
    }
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
    tokio::spawn(async move {
        let event =
            |name: &str, data: &str| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
        let _ = tx
            .send_data(event("message_start", r#"{"type":"message_start"}"#))
            .await;
        for _ in 0..SSE_DELTAS {
            tokio::time::sleep(SSE_DELAY).await;
            let _ = tx
                .send_data(event(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","delta":{"text":"hi"}}"#,
                ))
                .await;
        }
        let _ = tx
            .send_data(event("message_stop", r#"{"type":"message_stop"}"#))
            .await;
    });
    let mut response = Response::new(body.boxed());
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    response
}

// ── Load generator ───────────────────────────────────────────────────────────

pub struct Run {
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
}

/// `connections` keep-alive HTTP/1.1 connections, each sending requests back to back for
/// `duration`. Direct requests carry the real key; proxied ones a dummy.
pub async fn load(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    body: &Bytes,
    direct: bool,
) -> Run {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let request = Request::post("/v1/messages")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .header("anthropic-version", "2023-06-01")
                    .header("x-api-key", if direct { KEY } else { "dummy" })
                    .body(Full::new(body.clone()))
                    .unwrap();
                match sender.send_request(request).await {
                    Ok(response) if response.status() == StatusCode::OK => {
                        let _ = response.into_body().collect().await;
                        latencies.push(sent.elapsed().as_micros() as u32);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut run = Run {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (latencies, errors) = task.await.unwrap();
        run.requests += latencies.len();
        run.errors += errors;
        run.latencies_us.extend(latencies);
    }
    run.elapsed = started.elapsed();
    if run.errors > 0 {
        eprintln!(
            "warning: {} failed requests ({} via credproxy)",
            run.errors,
            if direct { "not" } else { "all" }
        );
    }
    run
}

/// Time from sending a streaming request to receiving its first `content_block_delta`.
pub async fn first_delta(addr: SocketAddr, direct: bool) -> Duration {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::post("/sse")
        .header("host", "127.0.0.1")
        .header("x-api-key", if direct { KEY } else { "dummy" })
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let sent = Instant::now();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    let mut seen = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
            if seen.windows(19).any(|w| w == b"content_block_delta") {
                let at = sent.elapsed();
                while body.frame().await.is_some() {}
                return at;
            }
        }
    }
    panic!("no delta in the stream: {}", String::from_utf8_lossy(&seen));
}

// ── The proxy process ────────────────────────────────────────────────────────

pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// credproxy with the key from `$BENCH_KEY`, or from a helper with `helper_ttl`.
    pub fn start(upstream: SocketAddr, access_log: bool, helper_ttl: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("helper-runs");
        let source = match helper_ttl {
            None => "env = \"BENCH_KEY\"".to_string(),
            Some(ttl) => format!(
                "helper = \"echo run >> {}; printf %s \\\"$BENCH_KEY\\\"\"\nttl = \"{ttl}\"",
                runs.display()
            ),
        };
        let workers = std::env::var("E2E_PROXY_WORKERS")
            .map(|n| format!("workers = {n}"))
            .unwrap_or_default();
        Self::with_source(dir, upstream, access_log, &source, &workers)
    }

    /// credproxy whose credential takes its key as `source` says (`helper = ...`), with
    /// `extra` top-level settings.
    pub fn with_source(
        dir: tempfile::TempDir,
        upstream: SocketAddr,
        access_log: bool,
        source: &str,
        extra: &str,
    ) -> Self {
        let config = dir.path().join("credproxy.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\n{extra}\n[credentials.bench]\nkind = \"api_key\"\n{source}\n[[routes]]\nprefix = \"/\"\nupstream = \"http://{upstream}\"\ncredential = \"bench\"\n"
            ),
        )
        .unwrap();
        let filter = if access_log {
            "info"
        } else {
            "info,credproxy::access=off"
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_credproxy"));
        command
            .arg("--config")
            .arg(&config)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        let mut child = command
            .env("BENCH_KEY", KEY)
            .env("CREDPROXY_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        std::thread::spawn(move || {
            // Keep draining so the proxy never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    && let Some(tx) = tx.lock().unwrap().take()
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("credproxy did not start");
        Proxy { child, addr, dir }
    }

    pub fn helper_runs(&self) -> std::path::PathBuf {
        self.dir.path().join("helper-runs")
    }

    /// User + system CPU time used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // Linux reports these in USER_HZ, 100 on every common configuration.
        Duration::from_millis(ticks * 10)
    }

    /// (current RSS, peak RSS) in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
