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

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

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
                "Helper credential (ttl {ttl}): {runs} helper runs in {:.0} s of load, about one per {:.1} s (at most one per ttl, {:.1} s, while traffic flows)",
                started.elapsed().as_secs_f64(),
                started.elapsed().as_secs_f64() / runs.max(1) as f64,
                ttl_s
            );
        }
        if run.errors + errors > 0 {
            println!("Errors during the runs: see above; figures with errors are not comparable.");
        }
    });
}
