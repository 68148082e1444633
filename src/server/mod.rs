//! Accepting connections: HTTP/1.1 and HTTP/2 on every listener (over TLS when
//! `tls_cert`/`tls_key` are set — see [`tls`] — else h2c), with limits that keep any
//! one client from pinning credproxy, and graceful shutdown.
//!
//! - Each listener accepts at most `max_connections` at once; beyond that, new connections
//!   wait in the kernel's backlog (cheap) until one closes, and that is logged once per
//!   interval, never per connection.
//! - Each connection has a watchdog ([`connection::Activity`]): a request head must arrive
//!   within `header_read_timeout` of its first byte, and a connection with no request in
//!   flight is closed after `idle_timeout`. So idle or slow sockets are reaped, and when
//!   file descriptors run out credproxy recovers by itself.
//! - Listeners are accepted on the background runtime; each accepted connection is handed
//!   to one serving worker ([`crate::runtime::Workers`], round robin) and lives there.
//! - [`Server`] takes listeners that are already bound, so `main` binds where it likes
//!   (`127.0.0.1:0` in tests) and learns the port before serving; a reload adds, changes
//!   and closes listeners while the others keep serving.

pub mod connection;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::Limits;
use crate::proxy::Proxy;
use crate::runtime::Workers;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::ListenerLabels;
use connection::{Activity, Expired, Tracked, Watched};

/// A bound listener, what serves it, and its TLS when it has one. Both are swapped by a
/// reload without touching the socket.
pub struct Bound {
    pub listener: TcpListener,
    pub proxy: Arc<Proxy>,
    /// HTTPS when set.
    pub tls: Option<TlsAcceptor>,
}

/// How long a connection told to close (idle, shutdown) may take to do so.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// At most one "limit reached" or "accept failed" line per listener per interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What every connection task shares.
struct Context {
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    /// Held by every connection task; `shutdown` waits for all to be dropped.
    open: mpsc::Sender<()>,
    count: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    workers: Arc<Workers>,
}

/// What one listener serves now; each request reads it, so a reload takes effect at the
/// next request while requests in flight finish on what they started with.
struct Serving {
    proxy: ArcSwap<Proxy>,
    tls: ArcSwapOption<TlsAcceptor>,
}

struct Listening {
    accept: tokio::task::JoinHandle<()>,
    serving: Arc<Serving>,
    /// Tells this listener's connections to finish and close.
    stop: watch::Sender<bool>,
}

/// The listeners being served. Listeners can be added, changed and closed while running
/// (a reload); [`Server::shutdown`] stops them all gracefully.
pub struct Server {
    context: Arc<Context>,
    all_closed: mpsc::Receiver<()>,
    count: Arc<AtomicUsize>,
    listeners: HashMap<SocketAddr, Listening>,
}

impl Server {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>, workers: Arc<Workers>) -> Self {
        let (open, all_closed) = mpsc::channel::<()>(1);
        let count = Arc::new(AtomicUsize::new(0));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The watchdog keeps the clocks (hyper's header timer would also run while idle).
        builder.http1().header_read_timeout(None);
        builder
            .http2()
            .max_concurrent_streams(256)
            .max_header_list_size(64 * 1024)
            .max_pending_accept_reset_streams(32);
        Server {
            context: Arc::new(Context {
                builder,
                limits: limits.clone(),
                open,
                count: Arc::clone(&count),
                metrics,
                workers,
            }),
            all_closed,
            count,
            listeners: HashMap::new(),
        }
    }

    /// Starts serving a bound listener; `key` is the address the config names (the bound
    /// one differs for port 0).
    pub fn serve(&mut self, key: SocketAddr, bound: Bound) {
        let serving = Arc::new(Serving {
            proxy: ArcSwap::new(bound.proxy),
            tls: ArcSwapOption::new(bound.tls.map(Arc::new)),
        });
        let (stop, stopped) = watch::channel(false);
        let accept = tokio::spawn(accept(
            bound.listener,
            Arc::clone(&serving),
            stopped,
            Arc::clone(&self.context),
        ));
        self.listeners.insert(
            key,
            Listening {
                accept,
                serving,
                stop,
            },
        );
    }

    /// What serves `key` now.
    pub fn proxy(&self, key: SocketAddr) -> Option<Arc<Proxy>> {
        self.listeners
            .get(&key)
            .map(|listening| listening.serving.proxy.load_full())
    }

    /// The addresses (as configured) being served.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners.keys().copied().collect()
    }

    /// New requests on `key` are served by `proxy` (and new connections get `tls`).
    pub fn update(&self, key: SocketAddr, proxy: Arc<Proxy>, tls: Option<TlsAcceptor>) {
        if let Some(listening) = self.listeners.get(&key) {
            listening.serving.proxy.store(proxy);
            listening.serving.tls.store(tls.map(Arc::new));
        }
    }

    /// Stops accepting on `key` (the socket closes) and asks its connections to finish
    /// what they are doing and close.
    pub fn close(&mut self, key: SocketAddr) {
        if let Some(listening) = self.listeners.remove(&key) {
            listening.accept.abort();
            let _ = listening.stop.send(true);
        }
    }

    /// Stops accepting everywhere, then gives in-flight requests and streams up to `grace`
    /// to finish before dropping them.
    pub async fn shutdown(mut self, grace: Duration) {
        let keys = self.addresses();
        for key in keys {
            self.close(key);
        }
        drop(self.context);
        let open = self.count.load(Ordering::Acquire);
        if open > 0 {
            tracing::info!(open, grace = %humantime::format_duration(grace), "waiting for open connections to finish");
        }
        tokio::select! {
            _ = self.all_closed.recv() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
        }
    }
}

/// Rate-limits a repeated warning: the first occurrence is logged, the rest are counted
/// and reported with the next line after `LOG_EVERY`.
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            last: None,
            suppressed: 0,
        }
    }

    /// Some(number suppressed since the last line) when a line is due.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|at| now < at + LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

async fn accept(
    listener: TcpListener,
    serving: Arc<Serving>,
    stopped: watch::Receiver<bool>,
    context: Arc<Context>,
) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let open_here = context
        .metrics
        .connections_open
        .get_or_create(&ListenerLabels {
            listener: addr.clone(),
        })
        .clone();
    let slots = Arc::new(Semaphore::new(context.limits.max_connections));
    let mut full = Throttled::new();
    let mut failing = Throttled::new();
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(suppressed) = full.due() {
                    tracing::warn!(listener = %addr, max_connections = context.limits.max_connections, suppressed,
                        "connection limit reached; new connections wait until open ones close");
                }
                Arc::clone(&slots)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(suppressed) = failing.due() {
                    tracing::warn!(listener = %addr, %error, suppressed,
                        "accept failed; pausing (out of file descriptors? open connections are closed by their timeouts)");
                }
                // Out of file descriptors and the like: pause instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The socket moves to the worker's own runtime.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%peer, %error, "could not hand the connection to a worker");
                continue;
            }
        };
        let worker_context = Arc::clone(&context);
        let serving = Arc::clone(&serving);
        let stopped = stopped.clone();
        let open_here = open_here.clone();
        context.workers.spawn(move || async move {
            let context = worker_context;
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%peer, %error, "could not register the connection");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            open_here.inc();
            match serving.tls.load_full() {
                None => serve(stream, peer, serving, stopped, &context).await,
                Some(acceptor) => {
                    // The handshake counts against the time a client has to send its head.
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(context.limits.header_read_timeout, handshake).await
                    {
                        Ok(Ok(stream)) => serve(stream, peer, serving, stopped, &context).await,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake too slow; closing the connection")
                        }
                    }
                }
            }
            open_here.dec();
            drop(permit);
        });
    }
}

/// Serves one connection until it ends, its watchdog closes it, or shutdown asks it to
/// finish.
async fn serve<IO>(
    stream: IO,
    peer: SocketAddr,
    serving: Arc<Serving>,
    mut shutdown: watch::Receiver<bool>,
    context: &Context,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = context.open.clone();
    context.count.fetch_add(1, Ordering::AcqRel);
    let activity = Activity::new();
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
    let service = {
        let activity = Arc::clone(&activity);
        service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let in_flight = activity.request_started(request.version() == http::Version::HTTP_2);
            let proxy = serving.proxy.load_full();
            async move {
                let response = proxy.handle(request).await;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Tracked::new(body, in_flight)),
                )
            }
        })
    };
    let connection = context.builder.serve_connection(io, service);
    tokio::pin!(connection);
    let limits = &context.limits;
    // Once the connection was asked to close: the time by which it must have.
    let mut closing: Option<Instant> = None;
    // One timer for the connection's life, moved only when its deadline does (a request
    // starting or ending moves it; re-arming a fresh timer per request cost ~1% of CPU).
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    // Likewise the two wake-ups, made once (and the second again only after it fired).
    let stop = shutdown.changed();
    tokio::pin!(stop);
    let changed = activity.changed();
    tokio::pin!(changed);
    loop {
        let watchdog = activity.deadline(limits.header_read_timeout, limits.idle_timeout);
        let wake = match (closing, watchdog) {
            (Some(by), _) => Some(by),
            (None, Some((at, _))) => Some(at),
            (None, None) => None,
        };
        if let Some(at) = wake
            && armed != Some(at)
        {
            timer.as_mut().reset(at.into());
            armed = Some(at);
        }
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%peer, error = %error, "connection ended with an error");
                }
                break;
            }
            _ = &mut stop, if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                // The server's grace period bounds this wait, not CLOSE_GRACE.
                closing = Some(Instant::now() + Duration::from_secs(24 * 3600));
            }
            // A request ended or a head began: the deadline moved.
            _ = changed.as_mut(), if closing.is_none() => changed.set(activity.changed()),
            _ = timer.as_mut(), if wake.is_some() => {
                armed = None;
                if let Some(by) = closing {
                    if Instant::now() < by {
                        continue;
                    }
                    if activity.in_flight() > 0 {
                        // A request that slipped in before the close is served to its end.
                        closing = Some(Instant::now() + CLOSE_GRACE);
                        continue;
                    }
                    tracing::debug!(%peer, "connection did not close in time; dropping it");
                    break;
                }
                if let Some((at, why)) = activity.deadline(limits.header_read_timeout, limits.idle_timeout)
                    && Instant::now() >= at
                {
                    match why {
                        Expired::SlowHead => tracing::debug!(%peer, "request head too slow; closing the connection"),
                        Expired::Idle => tracing::debug!(%peer, "connection idle; closing it"),
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
    context.count.fetch_sub(1, Ordering::AcqRel);
}
