//! End-to-end overhead of credproxy, measured against a direct connection in the same run.
//!
//! `cargo bench --bench e2e` starts a fast mock upstream (hyper, in this process), the
//! credproxy release binary in front of it, and a closed-loop load generator (also in this
//! process). For each concurrency it alternates direct and proxied runs, several times, and
//! reports the median and the spread, so the machine's noise is visible. Then: the added
//! time to the first SSE delta, and credproxy's CPU per request and peak RSS.
//!
//! Knobs (environment): E2E_SECONDS (per run, default 3), E2E_REPS (default 3),
//! E2E_CONCURRENCY (default 1,16,64), E2E_BODY_KIB (request body, default 8),
//! E2E_CONNECTIONS_FOR_RSS (default 256), E2E_ACCESS_LOG (on|off, default on),
//! E2E_PROXY_WORKERS (credproxy's worker threads, default: one per CPU),
//! E2E_HELPER_TTL (e.g. `2s`: the key comes from a helper command with that TTL, so it is
//! refreshed ahead of expiry throughout the runs; the helper's run count is reported).
//!
//! Load generator, mock and proxy share the machine's cores: compare the two columns of one
//! run, not absolute figures across machines.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
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

const KEY: &str = "sk-ant-bench-real-key";
const SSE_DELTAS: usize = 10;
const SSE_DELAY: Duration = Duration::from_millis(5);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours means another bench
    // was selected.
    if std::env::args().skip(1).any(|a| !a.starts_with("--")) {
        return;
    }
    let seconds: f64 = env_or("E2E_SECONDS", 3.0);
    let reps: usize = env_or("E2E_REPS", 3);
    let body_kib: usize = env_or("E2E_BODY_KIB", 8);
    let rss_connections: usize = env_or("E2E_CONNECTIONS_FOR_RSS", 256);
    let access_log = std::env::var("E2E_ACCESS_LOG").map_or(true, |v| v != "off");
    let concurrency: Vec<usize> = std::env::var("E2E_CONCURRENCY")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mock = start_mock().await;
        let helper_ttl = std::env::var("E2E_HELPER_TTL").ok();
        let proxy = Proxy::start(mock, access_log, helper_ttl.as_deref());
        let started = Instant::now();
        let proxy_idle_rss = proxy.rss_kib();
        let body = Bytes::from(request_body(body_kib * 1024));
        let duration = Duration::from_secs_f64(seconds);
        println!("# credproxy end-to-end overhead ({} CPUs, {body_kib} KiB requests, 1 KiB responses, {seconds} s x {reps} reps, access log {})",
            std::thread::available_parallelism().map_or(0, |n| n.get()), if access_log { "on" } else { "off" });
        println!();
        println!("| concurrency | direct req/s (min-max) | credproxy req/s (min-max) | ratio | p50 direct / proxied µs | p99 direct / proxied µs | credproxy CPU µs/req |");
        println!("|---|---|---|---|---|---|---|");
        let mut errors = 0;
        let mut upstream_connections = 0;
        for &c in &concurrency {
            let mut direct = Vec::new();
            let mut proxied = Vec::new();
            let mut cpu_per_request = Vec::new();
            for rep in 0..reps {
                // Alternate which goes first so drift hits both alike.
                let order = if rep % 2 == 0 { [false, true] } else { [true, false] };
                for through_proxy in order {
                    if through_proxy {
                        let cpu_before = proxy.cpu_time();
                        let opened_before = MOCK_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed);
                        let run = load(proxy.addr, c, duration, &body, false).await;
                        let opened = MOCK_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed) - opened_before;
                        upstream_connections = upstream_connections.max(opened);
                        let cpu = proxy.cpu_time() - cpu_before;
                        cpu_per_request.push(cpu.as_secs_f64() * 1e6 / run.requests.max(1) as f64);
                        proxied.push(run);
                    } else {
                        direct.push(load(mock, c, duration, &body, true).await);
                    }
                }
            }
            let rate = |runs: &[Run]| {
                let mut r: Vec<f64> = runs.iter().map(|r| r.requests as f64 / r.elapsed.as_secs_f64()).collect();
                r.sort_by(|a, b| a.total_cmp(b));
                r
            };
            let (d, p) = (rate(&direct), rate(&proxied));
            let pct = |runs: &[Run], q: f64| {
                let mut all: Vec<u32> = runs.iter().flat_map(|r| r.latencies_us.iter().copied()).collect();
                all.sort_unstable();
                all.get(((all.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0)
            };
            cpu_per_request.sort_by(|a, b| a.total_cmp(b));
            errors += direct.iter().chain(proxied.iter()).map(|r| r.errors).sum::<usize>();
            println!(
                "| {c} | {:.0} ({:.0}-{:.0}) | {:.0} ({:.0}-{:.0}) | {:.2} | {} / {} | {} / {} | {:.1} |",
                median(&d), d[0], d[d.len() - 1],
                median(&p), p[0], p[p.len() - 1],
                median(&p) / median(&d),
                pct(&direct, 0.5), pct(&proxied, 0.5),
                pct(&direct, 0.99), pct(&proxied, 0.99),
                median(&cpu_per_request),
            );
        }
        println!();
        println!("Most upstream connections credproxy opened in one run: {upstream_connections} (pooled connections are reused across runs)");
        println!();

        // SSE: time to the first content_block_delta, alternating direct and proxied.
        let mut direct_first = Vec::new();
        let mut proxied_first = Vec::new();
        for i in 0..40 {
            if i % 2 == 0 {
                direct_first.push(first_delta(mock, true).await);
            } else {
                proxied_first.push(first_delta(proxy.addr, false).await);
            }
        }
        direct_first.sort();
        proxied_first.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "SSE first delta (upstream waits {} ms before it): direct p50 {:.2} ms, credproxy p50 {:.2} ms, added {:+.3} ms (p90 added {:+.3} ms)",
            ms(SSE_DELAY),
            ms(direct_first[direct_first.len() / 2]),
            ms(proxied_first[proxied_first.len() / 2]),
            ms(proxied_first[proxied_first.len() / 2]) - ms(direct_first[direct_first.len() / 2]),
            ms(proxied_first[proxied_first.len() * 9 / 10]) - ms(direct_first[direct_first.len() * 9 / 10]),
        );

        // Memory: many keep-alive connections through credproxy at once.
        let idle = proxy_idle_rss;
        let run = load(proxy.addr, rss_connections, duration, &body, false).await;
        println!(
            "Memory: credproxy RSS at start {:.1} MiB, peak {:.1} MiB (VmHWM) after {rss_connections} keep-alive connections ({} requests)",
            idle.0 as f64 / 1024.0,
            proxy.rss_kib().1 as f64 / 1024.0,
            run.requests
        );
        if let Some(ttl) = &helper_ttl {
            let runs = std::fs::read_to_string(proxy.helper_runs()).map_or(0, |t| t.lines().count());
            let ttl_s = humantime::parse_duration(ttl).unwrap().as_secs_f64();
            println!(
                "Helper credential (ttl {ttl}): {runs} helper runs in {:.0} s of load, about one per {:.1} s (refresh-ahead at 3/4 of the ttl would be one per {:.1} s)",
                started.elapsed().as_secs_f64(),
                started.elapsed().as_secs_f64() / runs.max(1) as f64,
                ttl_s * 0.75
            );
        }
        if run.errors + errors > 0 {
            println!("Errors during the runs: see above; figures with errors are not comparable.");
        }
    });
}

fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

fn request_body(size: usize) -> Vec<u8> {
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
static MOCK_CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn start_mock() -> SocketAddr {
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
    let authorized = req.headers().get("x-api-key").is_some_and(|k| k == KEY);
    let sse = req.uri().path() == "/sse";
    let _ = req.into_body().collect().await;
    if !authorized {
        let mut response = Response::new(Full::new(Bytes::from_static(b"{}")).boxed());
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

struct Run {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

/// `connections` keep-alive HTTP/1.1 connections, each sending requests back to back for
/// `duration`. Direct requests carry the real key; proxied ones a dummy.
async fn load(
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
async fn first_delta(addr: SocketAddr, direct: bool) -> Duration {
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

struct Proxy {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Proxy {
    fn start(upstream: SocketAddr, access_log: bool, helper_ttl: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("helper-runs");
        let source = match helper_ttl {
            None => "env = \"BENCH_KEY\"".to_string(),
            Some(ttl) => format!(
                "helper = \"echo run >> {}; printf %s \\\"$BENCH_KEY\\\"\"\nttl = \"{ttl}\"",
                runs.display()
            ),
        };
        let config = dir.path().join("credproxy.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\n[credentials.bench]\nkind = \"api_key\"\n{source}\n[[routes]]\nprefix = \"/\"\nupstream = \"http://{upstream}\"\ncredential = \"bench\"\n"
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
        if let Ok(workers) = std::env::var("E2E_PROXY_WORKERS") {
            command.env("TOKIO_WORKER_THREADS", workers);
        }
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

    fn helper_runs(&self) -> std::path::PathBuf {
        self.dir.path().join("helper-runs")
    }

    /// User + system CPU time used so far.
    fn cpu_time(&self) -> Duration {
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
    fn rss_kib(&self) -> (u64, u64) {
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
