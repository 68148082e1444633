//! The running process: builds a [`Generation`] from the resolved config, binds the
//! listeners, serves the admin endpoints ([`admin`]), and reloads the config on SIGHUP or
//! when the file changes (`watch_config`), until SIGINT/SIGTERM.
//!
//! A reload parses and validates the whole file first; anything wrong and the old config
//! keeps serving, with every problem logged. A good file becomes the next generation,
//! swapped in atomically: requests in flight finish on the generation they started with;
//! listeners added are bound (all of them before anything is swapped), listeners removed
//! stop accepting and their connections finish what they are doing.

pub mod admin;
mod generation;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::mpsc;

pub use generation::Generation;

use crate::config::{Config, Resolved};
use crate::kinds::Environment;
use crate::runtime::Workers;
use crate::server::{Bound, Server};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::ResultLabels;

/// How often the config file is checked when `watch_config = true`.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The generation requests and the admin endpoints see now.
pub type Current = Arc<ArcSwap<Generation>>;

/// Serves `resolved` until SIGINT/SIGTERM. `config_path` is what `--config` named: a
/// reload reads the config from the same place.
pub async fn run(resolved: Resolved, config_path: Option<PathBuf>) -> ExitCode {
    // Every handler is in place before the first listener is bound: a signal that arrives
    // just after `listening` must reach its handler, not the default action (exit).
    watch_user_signals();
    let stops = StopSignals::register();
    let hangups = register(
        SignalKind::hangup(),
        "SIGHUP",
        "the configuration is reloaded only when `watch_config` sees the file change",
    );
    check_fd_limit(&resolved);
    let metrics = Arc::new(Metrics::new());
    let limits = resolved.config.limits.clone();
    let grace = resolved.config.shutdown_grace;
    let admin_listen = resolved.config.admin;
    let generation = match Generation::build(resolved, None, &metrics) {
        Ok(generation) => generation,
        Err(error) => {
            eprintln!("credproxy: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(Some(egress)) = &generation.resolved.egress {
        tracing::info!(target: "credproxy::server", egress = %egress.describe(),
            "upstream connections go through the egress proxy");
    }
    let workers = match Workers::start(
        crate::runtime::worker_count(generation.resolved.config.workers),
        tokio::runtime::Handle::current(),
    ) {
        Ok(workers) => Arc::new(workers),
        Err(error) => {
            eprintln!("credproxy: cannot start the serving threads: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::debug!(target: "credproxy::server", workers = workers.count(), "serving threads started");
    let mut server = Server::new(&limits, Arc::clone(&metrics), workers);
    let mut bound: HashMap<SocketAddr, SocketAddr> = HashMap::new();
    let addrs: Vec<SocketAddr> = generation
        .resolved
        .listeners
        .iter()
        .map(|l| l.addr)
        .collect();
    for addr in addrs {
        let listener = match crate::server::bind(addr) {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("credproxy: cannot listen on {addr}: {error}");
                return ExitCode::FAILURE;
            }
        };
        start_listener(&mut server, &mut bound, &generation, addr, listener);
    }
    metrics.set_credentials(cells(&generation));
    metrics.set_upstream_pools(pools(&generation));
    let current: Current = Arc::new(ArcSwap::from_pointee(generation));
    // Before any credential fetch starts: a start-up that fails here leaves nothing running.
    let admin = match admin::start(admin_listen, Arc::clone(&current), Arc::clone(&metrics)).await {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("credproxy: {error}");
            return ExitCode::FAILURE;
        }
    };
    warm_up(&current.load(), |_| true);

    keep_fetching(Arc::clone(&current));
    let (reload_tx, mut reload_rx) = mpsc::channel::<&'static str>(4);
    watch_hangup(hangups, reload_tx.clone());
    if let Some(path) = Config::file(config_path.as_deref()) {
        watch_file(path, Arc::clone(&current), reload_tx);
    }
    let shutdown = stops.received();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(why) = reload_rx.recv() => {
                reload(why, config_path.as_deref(), &current, &mut server, &mut bound, &metrics).await;
            }
        }
    }
    if let Some(admin) = admin {
        admin.abort();
    }
    server.shutdown(grace).await;
    // Answers that ended during the grace period are in the state file (or the store).
    current.load().shared.usage.flush().await;
    ExitCode::SUCCESS
}

fn cells(generation: &Generation) -> Vec<Arc<crate::credentials::Cached>> {
    generation
        .resolved
        .credentials
        .iter()
        .map(|c| Arc::clone(&c.cached))
        .collect()
}

/// The upstream pools whose connections the metrics report.
fn pools(generation: &Generation) -> Vec<Arc<dyn crate::telemetry::UpstreamPools>> {
    generation
        .shared
        .clients()
        .map(|clients| Arc::new(clients.clone()) as Arc<dyn crate::telemetry::UpstreamPools>)
        .collect()
}

/// Serves a freshly bound listener with `generation`'s proxy for it.
fn start_listener(
    server: &mut Server,
    bound: &mut HashMap<SocketAddr, SocketAddr>,
    generation: &Generation,
    addr: SocketAddr,
    listener: TcpListener,
) {
    let local = listener.local_addr().unwrap_or(addr);
    let Some(proxy) = generation.proxy(addr, local, None) else {
        return;
    };
    let tls = generation.acceptor();
    let routes: Vec<String> = generation
        .resolved
        .listeners
        .iter()
        .filter(|l| l.addr == addr)
        .flat_map(|l| &l.routes)
        .map(|r| match &r.upstream {
            _ if r.targets.len() > 1 => format!("{} -> {} targets", r.prefix, r.targets.len()),
            Ok(upstream) => format!("{} -> {upstream}", r.prefix),
            Err(_) => format!("{} (disabled)", r.prefix),
        })
        .collect();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(target: "credproxy::server", addr = %local, scheme, routes = %routes.join(", "), "listening");
    warn_if_exposed(&generation.resolved, local, tls.is_some());
    bound.insert(addr, local);
    server.serve(
        addr,
        Bound {
            listener,
            proxy,
            tls,
        },
    );
}

/// Reads, validates and applies the config again; on any problem the old one stays.
async fn reload(
    why: &str,
    config_path: Option<&std::path::Path>,
    current: &Current,
    server: &mut Server,
    bound: &mut HashMap<SocketAddr, SocketAddr>,
    metrics: &Arc<Metrics>,
) {
    let rejected = |problem: &str| {
        tracing::error!(target: "credproxy::reload", trigger = why,
            "configuration not reloaded; still serving the previous one:\n{problem}");
        metrics
            .reloads
            .get_or_create(&ResultLabels { result: "rejected" })
            .inc();
    };
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => return rejected(&error.to_string()),
    };
    let resolved = config.resolve(&Environment::from_process()).await;
    let previous = current.load_full();
    let next = match Generation::build(resolved, Some(&previous), metrics) {
        Ok(next) => next,
        Err(error) => return rejected(&error),
    };
    // Bind every new listener before changing anything, so a taken port rejects the
    // reload as a whole.
    let mut fresh = Vec::new();
    for listener in &next.resolved.listeners {
        if bound.contains_key(&listener.addr) {
            continue;
        }
        match crate::server::bind(listener.addr) {
            Ok(socket) => fresh.push((listener.addr, socket)),
            Err(error) => {
                return rejected(&format!("cannot listen on {}: {error}", listener.addr));
            }
        }
    }
    warn_restart_only(&previous.resolved, &next.resolved);
    let changes = previous.changes(&next);
    let wanted: Vec<SocketAddr> = next.resolved.listeners.iter().map(|l| l.addr).collect();
    for (configured, local) in bound.clone() {
        if wanted.contains(&configured) {
            let previous = server.proxy(configured);
            if let Some(proxy) = next.proxy(configured, local, previous.as_deref()) {
                server.update(configured, proxy, next.acceptor());
            }
        } else {
            server.close(configured);
            bound.remove(&configured);
            tracing::info!(target: "credproxy::reload", addr = %local,
                "listener removed: no longer accepting; its connections finish and close");
        }
    }
    for (addr, socket) in fresh {
        start_listener(server, bound, &next, addr, socket);
    }
    let kept = next.kept.clone();
    // New and changed credentials, and kept ones that never got a value (a route that
    // uses them may just have been enabled).
    warm_up(&next, |credential| {
        !kept.contains(&credential.name) || credential.cached.peek().is_none()
    });
    metrics.set_credentials(cells(&next));
    metrics.set_upstream_pools(pools(&next));
    next.shared.usage.configure(Arc::clone(&next.usage_rules));
    current.store(Arc::new(next));
    metrics
        .reloads
        .get_or_create(&ResultLabels { result: "applied" })
        .inc();
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_string()
        } else {
            names.join(", ")
        }
    };
    tracing::info!(target: "credproxy::reload", trigger = why,
        credentials_added = %list(&changes.credentials_added),
        credentials_changed = %list(&changes.credentials_changed),
        credentials_removed = %list(&changes.credentials_removed),
        credentials_kept = %kept.len(),
        routes_before = changes.routes_before, routes_after = changes.routes_after,
        "configuration reloaded");
}

/// Settings read once at start; a reload that changes them says so.
fn warn_restart_only(before: &Resolved, after: &Resolved) {
    let (a, b) = (&before.config, &after.config);
    let mut changed = Vec::new();
    if a.limits.header_read_timeout != b.limits.header_read_timeout
        || a.limits.idle_timeout != b.limits.idle_timeout
        || a.limits.max_connections != b.limits.max_connections
    {
        changed.push("header_read_timeout / idle_timeout / max_connections");
    }
    if a.shutdown_grace != b.shutdown_grace {
        changed.push("shutdown_grace");
    }
    if a.admin != b.admin {
        changed.push("admin_listen");
    }
    if a.workers != b.workers {
        changed.push("workers");
    }
    if a.usage.store != b.usage.store || before.usage_state_dir != after.usage_state_dir {
        changed.push("[usage] store / state_dir");
    }
    if !changed.is_empty() {
        tracing::warn!(target: "credproxy::reload", settings = %changed.join(", "),
            "these settings changed but apply only after a restart; everything else is in effect");
    }
}

fn watch_hangup(hangups: Option<Signal>, reloads: mpsc::Sender<&'static str>) {
    let Some(mut hangups) = hangups else {
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!(target: "credproxy::reload", "SIGHUP received: reloading the configuration");
            let _ = reloads.send("SIGHUP").await;
        }
    });
}

/// Installs the handler for `kind` now, so the signal is caught (and queued) from here on;
/// when it cannot be, says what that means (`without`).
fn register(kind: SignalKind, name: &'static str, without: &str) -> Option<Signal> {
    match tokio::signal::unix::signal(kind) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(signal = name, %error, "cannot watch {name}: {without}");
            None
        }
    }
}

/// Polls the config file (size, modification time, inode: editors that replace the file
/// and Kubernetes' symlink swaps are both seen) while `watch_config` is on in the current
/// generation; a change is acted on once the file has stopped changing.
fn watch_file(path: PathBuf, current: Current, reloads: mpsc::Sender<&'static str>) {
    tokio::spawn(async move {
        let stamp = |path: &PathBuf| crate::files::stamp(path);
        let mut seen = stamp(&path);
        let mut changing = None;
        let mut ticker = tokio::time::interval(WATCH_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            // Wait until the file stays the same for one tick: an editor that truncates
            // and then writes must not cause a reload of the half-written file.
            if changing != Some(now) {
                changing = Some(now);
                continue;
            }
            seen = now;
            changing = None;
            if current.load().resolved.config.watch_config {
                tracing::info!(target: "credproxy::reload", file = %path.display(),
                    "the config file changed: reloading");
                let _ = reloads.send("watch_config").await;
            }
        }
    });
}

/// Says at start what serving other machines means without callers or without TLS.
fn warn_if_exposed(resolved: &Resolved, addr: SocketAddr, tls: bool) {
    if addr.ip().is_loopback() {
        return;
    }
    if resolved.config.callers.is_none() {
        tracing::warn!(target: "credproxy::server", %addr,
            "this listener serves other machines and has no [callers]: anyone who can reach it spends the credentials");
    } else if !tls {
        tracing::warn!(target: "credproxy::server", %addr,
            "this listener serves other machines without TLS: caller tokens cross the network in clear text; set tls_cert and tls_key");
    }
}

/// Fetches the credentials `fetch` names in the background so the first request does not
/// wait, and says which routes cannot work yet and why; also the identity provider's keys.
fn warm_up(generation: &Generation, fetch: impl Fn(&crate::config::ResolvedCredential) -> bool) {
    let resolved = &generation.resolved;
    for (_, route) in resolved.routes() {
        if let Some(reason) = route.disabled() {
            tracing::warn!(route = %route.prefix, "route disabled: {reason}");
        }
    }
    for (index, credential) in resolved.credentials.iter().enumerate() {
        if resolved.unused_reason(index).is_some() || !fetch(credential) {
            continue;
        }
        let cached = Arc::clone(&credential.cached);
        if cached.source().is_literal() {
            tracing::warn!(credential = %cached.name(),
                "the key is written in the config file; prefer `env`, `file` or `helper` so the file can be shared");
        }
        let routes: Vec<String> = resolved
            .routes()
            .filter(|(_, r)| r.disabled().is_none())
            .filter(|(_, r)| r.targets.iter().any(|t| t.credential == index))
            .map(|(l, r)| resolved.base_url(l.addr, &r.prefix))
            .collect();
        tokio::spawn(async move {
            let source = cached.source().describe();
            match cached.get().await {
                Ok(_) => tracing::info!(credential = %cached.name(), %source, "credential ready"),
                Err(error) => {
                    tracing::warn!(credential = %cached.name(), %source, routes = %routes.join(", "), %error,
                    "credential not available yet; its routes answer 502 with this reason until it is")
                }
            }
        });
    }
    if let Some(callers) = generation.shared.callers.clone() {
        tokio::spawn(async move {
            match callers.prefetch_keys().await {
                Some((issuer, Ok(keys))) => {
                    tracing::info!(target: "credproxy::callers", %issuer, keys, "identity provider keys ready")
                }
                Some((issuer, Err(error))) => {
                    tracing::warn!(target: "credproxy::callers", %issuer, %error,
                        "identity provider keys not available yet; callers with JWTs get 503 until they are")
                }
                None => {}
            }
        });
    }
}

/// Fetches, in the background, every credential an enabled route uses that holds no value
/// (its first fetch failed, or a rejection emptied it and the refetch failed), and the
/// callers' key set until one is held, so that a
/// replica kept out of a load balancer by `/readyz` becomes ready by itself once the
/// source recovers, without a request having to arrive first. Backs off from 5 s to 60 s
/// while something is missing.
fn keep_fetching(current: Current) {
    tokio::spawn(async move {
        let mut pause = Duration::from_secs(5);
        loop {
            tokio::time::sleep(pause).await;
            let generation = current.load_full();
            let resolved = &generation.resolved;
            let missing: Vec<_> = resolved
                .credentials
                .iter()
                .enumerate()
                .filter(|(i, c)| resolved.unused_reason(*i).is_none() && c.cached.peek().is_none())
                .map(|(_, c)| Arc::clone(&c.cached))
                .collect();
            let callers = (generation.shared.callers.as_ref())
                .filter(|callers| callers.keys_missing().is_some());
            if missing.is_empty() && callers.is_none() {
                pause = Duration::from_secs(5);
                continue;
            }
            for cached in missing {
                if cached.get().await.is_ok() {
                    tracing::info!(credential = %cached.name(), "credential ready");
                }
            }
            if let Some(callers) = callers
                && let Some((issuer, Ok(keys))) = callers.prefetch_keys().await
            {
                tracing::info!(target: "credproxy::callers", %issuer, keys, "identity provider keys ready");
            }
            pause = (pause * 2).min(Duration::from_secs(60));
        }
    });
}

/// The user signals would otherwise kill the process mid-stream; they are logged instead.
fn watch_user_signals() {
    for (kind, name) in [
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
    ] {
        if let Some(mut received) = register(kind, name, "it would stop credproxy") {
            tokio::spawn(async move {
                while received.recv().await.is_some() {
                    tracing::info!(signal = name, "{name} received: ignored");
                }
            });
        }
    }
}

/// Raises the soft limit on open files to the hard limit (as Go and nginx do): each client
/// connection and each upstream request holds a descriptor, and the usual soft limit of
/// 1,024 is reached by a modest burst. Warns when the connection limits could still reach it.
fn check_fd_limit(resolved: &Resolved) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let per_listener = resolved.config.limits.max_connections as u64;
    // A client connection, and an upstream connection for each, plus some to spare.
    let wanted = per_listener * resolved.listeners.len() as u64 * 2 + 64;
    if wanted > limit {
        tracing::warn!(
            open_files = limit,
            max_connections = per_listener,
            "the open-file limit is below what `max_connections` allows; lower it or raise the limit (ulimit -n)"
        );
    }
}

/// SIGINT and SIGTERM, caught from start-up on; either stops credproxy gracefully.
struct StopSignals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl StopSignals {
    fn register() -> Self {
        StopSignals {
            interrupt: register(
                SignalKind::interrupt(),
                "SIGINT",
                "Ctrl-C stops credproxy without finishing the open requests",
            ),
            terminate: register(
                SignalKind::terminate(),
                "SIGTERM",
                "SIGTERM stops credproxy without finishing the open requests",
            ),
        }
    }

    /// Completes at the first of them (never, when neither could be watched).
    async fn received(mut self) {
        async fn next(signal: Option<&mut Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(self.interrupt.as_mut()) => {},
            _ = next(self.terminate.as_mut()) => {},
        }
        tracing::info!("shutting down: no new connections; finishing the open ones");
    }
}
