//! Soak: credproxy under steady load while its credential rotates, and its memory after a
//! burst. A benchmark, not a test: it reports figures, it asserts nothing.
//!
//! `cargo bench --bench soak` starts the mock upstream (in this process) and the credproxy
//! release binary, then:
//!
//! 1. **Burst**: SOAK_BURST requests (default 5,000) at once, each on its own connection;
//!    credproxy's RSS before, at its peak, and over the following SOAK_SETTLE seconds
//!    (default 40: the upstream pool's idle connections close after 30 s).
//! 2. **Soak**: SOAK_CONNECTIONS keep-alive connections (default 64) sending back to back
//!    for SOAK_SECONDS (default 60), while the upstream key rotates every SOAK_ROTATE
//!    seconds (default 2): the mock accepts only the newest key, and credproxy learns it
//!    the way users' set-ups do, by re-running its helper after the upstream's 401. Every
//!    SOAK_WINDOW seconds (default 5): requests, client-visible 401s (must be 0), other
//!    errors, p50/p99 latency and RSS.
//!
//! Knobs: the variables above; SOAK_ACCESS_LOG=off drops the access log.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

#[derive(Default)]
struct Window {
    ok: usize,
    rejected: usize,
    errors: usize,
    latencies_us: Vec<u32>,
}

fn main() {
    if std::env::args().skip(1).any(|a| !a.starts_with("--")) {
        return;
    }
    let burst: usize = env_or("SOAK_BURST", 5000);
    let settle: u64 = env_or("SOAK_SETTLE", 40);
    let seconds: u64 = env_or("SOAK_SECONDS", 60);
    let connections: usize = env_or("SOAK_CONNECTIONS", 64);
    let rotate_every: f64 = env_or("SOAK_ROTATE", 2.0);
    let window: u64 = env_or("SOAK_WINDOW", 5);
    let access_log = std::env::var("SOAK_ACCESS_LOG").map_or(true, |v| v != "off");
    raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mock = start_mock().await;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        let runs = dir.path().join("runs");
        std::fs::write(&key_file, "key-0").unwrap();
        rotate("key-0");
        let source = format!(
            "helper = \"echo run >> {}; cat {}\"\nttl = \"1h\"",
            runs.display(),
            key_file.display()
        );
        let proxy = Proxy::with_source(dir, mock, access_log, &source, "");
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!("# credproxy soak ({} CPUs, access log {})", std::thread::available_parallelism().map_or(0, |n| n.get()), if access_log { "on" } else { "off" });
        println!();

        if burst > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let idle = proxy.rss_kib().0;
            let started = Instant::now();
            let failed = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..burst)
                .map(|_| {
                    let failed = Arc::clone(&failed);
                    let addr = proxy.addr;
                    tokio::spawn(async move {
                        if one_request(addr).await != Some(StatusCode::OK) {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            let mut peak = 0;
            for task in tasks {
                task.await.unwrap();
                peak = peak.max(proxy.rss_kib().0);
            }
            let took = started.elapsed();
            peak = peak.max(proxy.rss_kib().1);
            println!("## Burst: {burst} requests at once, each on its own connection");
            println!();
            println!(
                "{burst} requests in {:.2} s, {} failed; RSS idle {:.1} MiB, peak {:.1} MiB (VmHWM)",
                took.as_secs_f64(),
                failed.load(Ordering::Relaxed),
                mib(idle),
                mib(peak)
            );
            println!();
            println!("| seconds after the burst | RSS MiB | x idle |");
            println!("|---|---|---|");
            let after = Instant::now();
            for at in [0u64, 1, 5, 10, 20, 30, 35, 40, 60].into_iter().filter(|s| *s <= settle) {
                let wait = Duration::from_secs(at).saturating_sub(after.elapsed());
                tokio::time::sleep(wait).await;
                let rss = proxy.rss_kib().0;
                println!("| {at} | {:.1} | {:.2} |", mib(rss), rss as f64 / idle.max(1) as f64);
            }
            println!();
        }

        // Soak with rotation.
        let stop = Instant::now() + Duration::from_secs(seconds);
        let current = Arc::new(Mutex::new(Window::default()));
        let rotations = Arc::new(AtomicUsize::new(0));
        let rotator = {
            let rotations = Arc::clone(&rotations);
            let key_file = key_file.clone();
            tokio::spawn(async move {
                let mut n = 0;
                loop {
                    tokio::time::sleep(Duration::from_secs_f64(rotate_every)).await;
                    n += 1;
                    let key = format!("key-{n}");
                    // The new key is where the helper reads it before the old one stops
                    // working, as with a real rotation.
                    let tmp = key_file.with_extension("new");
                    std::fs::write(&tmp, &key).unwrap();
                    std::fs::rename(&tmp, &key_file).unwrap();
                    rotate(&key);
                    rotations.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let body = Bytes::from(request_body(8 * 1024));
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                let current = Arc::clone(&current);
                let body = body.clone();
                let addr = proxy.addr;
                tokio::spawn(async move { soak_connection(addr, body, stop, current).await })
            })
            .collect();
        println!("## Soak: {connections} connections for {seconds} s, the key rotating every {rotate_every} s");
        println!();
        println!("| window end s | requests | client-visible 401 | other errors | p50 µs | p99 µs | RSS MiB |");
        println!("|---|---|---|---|---|---|---|");
        let started = Instant::now();
        let mut totals = Window::default();
        let mut all_latencies = Vec::new();
        while Instant::now() < stop {
            tokio::time::sleep(Duration::from_secs(window).min(stop.saturating_duration_since(Instant::now()))).await;
            let mut w = std::mem::take(&mut *current.lock().await);
            w.latencies_us.sort_unstable();
            let pct = |q: f64| w.latencies_us.get(((w.latencies_us.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
            println!(
                "| {:.0} | {} | {} | {} | {} | {} | {:.1} |",
                started.elapsed().as_secs_f64(),
                w.ok + w.rejected + w.errors,
                w.rejected,
                w.errors,
                pct(0.5),
                pct(0.99),
                mib(proxy.rss_kib().0)
            );
            totals.ok += w.ok;
            totals.rejected += w.rejected;
            totals.errors += w.errors;
            all_latencies.extend(w.latencies_us);
        }
        for worker in workers {
            let _ = worker.await;
        }
        rotator.abort();
        all_latencies.sort_unstable();
        let p99 = all_latencies.get(((all_latencies.len() as f64 - 1.0) * 0.99) as usize).copied().unwrap_or(0);
        let helper_runs = std::fs::read_to_string(&runs).map_or(0, |t| t.lines().count());
        println!();
        println!(
            "Total: {} requests, {} client-visible 401s, {} other errors, p99 {p99} µs; {} key rotations, {helper_runs} helper runs (one at start, then one per rotation); peak RSS {:.1} MiB",
            totals.ok + totals.rejected + totals.errors,
            totals.rejected,
            totals.errors,
            rotations.load(Ordering::Relaxed),
            mib(proxy.rss_kib().1),
        );
    });
}

/// One request on a fresh connection; the status, or None when it failed on the wire.
async fn one_request(addr: std::net::SocketAddr) -> Option<StatusCode> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = Request::post("/v1/messages")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("x-api-key", "dummy")
        .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
        .unwrap();
    let response = sender.send_request(request).await.ok()?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    Some(status)
}

async fn soak_connection(
    addr: std::net::SocketAddr,
    body: Bytes,
    stop: Instant,
    current: Arc<Mutex<Window>>,
) {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        current.lock().await.errors += 1;
        return;
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        current.lock().await.errors += 1;
        return;
    };
    tokio::spawn(connection);
    while Instant::now() < stop {
        let sent = Instant::now();
        let request = Request::post("/v1/messages")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("x-api-key", "dummy")
            .body(Full::new(body.clone()))
            .unwrap();
        let outcome = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let _ = response.into_body().collect().await;
                Some(status)
            }
            Err(_) => None,
        };
        let mut w = current.lock().await;
        match outcome {
            Some(StatusCode::OK) => {
                w.ok += 1;
                w.latencies_us.push(sent.elapsed().as_micros() as u32);
            }
            Some(StatusCode::UNAUTHORIZED) => w.rejected += 1,
            _ => {
                w.errors += 1;
                drop(w);
                return; // the connection is gone
            }
        }
    }
}

/// The burst holds thousands of sockets in this process (clients and the mock's side).
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
