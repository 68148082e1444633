//! Accepting connections: HTTP/1.1 and HTTP/2 on every listener (over TLS when
//! `tls_cert`/`tls_key` are set — see [`tls`] — else h2c), with limits that keep any
//! one client from pinning credproxy, and graceful shutdown.
//!
//! - Each listener accepts at most `max_connections` at once; at the limit it makes room
//!   by closing a connection with no request in flight, silent ones first ([`room`]), so
//!   sockets that hold a place and say nothing cannot keep new clients in the kernel's
//!   backlog. That is logged once per interval, never per connection.
//! - Each connection has a watchdog ([`connection::Activity`]): the first request must
//!   start within `header_read_timeout` of the opening (the TLS handshake's end), a
//!   request head must arrive within `header_read_timeout` of its first byte, and a
//!   connection with no request in flight is closed after `idle_timeout`. So idle or slow
//!   sockets are reaped, and when file descriptors run out credproxy recovers by itself.
//! - Listeners are accepted on the background runtime; each accepted connection is handed
//!   to one serving worker ([`crate::runtime::Workers`], round robin) and lives there.
//! - [`Server`] takes listeners that are already bound, so `main` binds where it likes
//!   (`127.0.0.1:0` in tests) and learns the port before serving; a reload adds, changes
//!   and closes listeners while the others keep serving.

pub mod connection;
pub mod room;
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
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::Limits;
use crate::proxy::Proxy;
use crate::runtime::Workers;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::ListenerLabels;
use connection::{Activity, Expired, Tracked, Watched};
use room::Connections;

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

/// The accept queue asked of the kernel, which caps it at `net.core.somaxconn` (4,096 on
/// current Linux): a listener making room accepts clients as fast as they come, so a deep
/// queue keeps a burst of connections waiting there instead of dropping their SYNs (which
/// clients resend only after a second or more). tokio's default is 1,024.
const BACKLOG: u32 = 65_535;

/// Binds a proxy listener with a deep accept queue ([`BACKLOG`]).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do on Unix: a restart can bind while old connections linger.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

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
    let made_room = context
        .metrics
        .connections_closed_for_room
        .get_or_create(&ListenerLabels {
            listener: addr.clone(),
        })
        .clone();
    let slots = Arc::new(Semaphore::new(context.limits.max_connections));
    let connections = Arc::new(Connections::default());
    let mut full = Throttled::new();
    let mut failing = Throttled::new();
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(suppressed) = full.due() {
                    tracing::warn!(listener = %addr, max_connections = context.limits.max_connections, suppressed,
                        "connection limit reached; closing connections with no request in flight to make room");
                }
                let (permit, asked) = connections.make_room(&slots).await;
                made_room.inc_by(asked);
                permit
            }
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(suppressed) = failing.due() {
                    tracing::warn!(listener = %addr, %error, suppressed,
                        "accept failed; pausing (out of file descriptors? closing idle connections to make room)");
                }
                // Out of file descriptors and the like: free one and pause instead of
                // spinning.
                if connections.ask_one_to_close() {
                    made_room.inc();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Read once: a reload in between must not make the clocks expect a handshake that
        // does not happen.
        let tls = serving.tls.load_full();
        let activity = Activity::new(tls.is_some());
        let registered = connections.register(Arc::clone(&activity));
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
            match tls {
                None => serve(stream, peer, serving, stopped, &context, activity).await,
                // Boxed: a TLS connection's future (the handshake, the TLS session) is twice
                // a plain one's, and the task of every connection would be that big.
                Some(acceptor) => {
                    let tls =
                        serve_tls(acceptor, stream, peer, serving, stopped, &context, activity);
                    Box::pin(tls).await
                }
            }
            open_here.dec();
            drop(registered);
            drop(permit);
        });
    }
}

/// Serves a TLS connection: the handshake within `header_read_timeout`, then [`serve`]
/// (whose first request has as long again from the handshake's end).
async fn serve_tls(
    acceptor: Arc<TlsAcceptor>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    serving: Arc<Serving>,
    stopped: watch::Receiver<bool>,
    context: &Context,
    activity: Arc<Activity>,
) {
    let handshake =
        tokio::time::timeout(context.limits.header_read_timeout, acceptor.accept(stream));
    let shaken = tokio::select! {
        shaken = handshake => Some(shaken),
        _ = activity.close_requested() => None,
    };
    match shaken {
        Some(Ok(Ok(stream))) => {
            activity.opened();
            serve(stream, peer, serving, stopped, context, activity).await
        }
        Some(Ok(Err(error))) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
        }
        Some(Err(_)) => {
            tracing::debug!(%peer, "TLS handshake too slow; closing the connection")
        }
        None => {
            tracing::debug!(%peer, "closed during its TLS handshake to make room")
        }
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
    activity: Arc<Activity>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = context.open.clone();
    context.count.fetch_add(1, Ordering::AcqRel);
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
    let service = {
        let activity = Arc::clone(&activity);
        service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let in_flight = activity.request_started(request.version() == http::Version::HTTP_2);
            let proxy = serving.proxy.load_full();
            // Boxed: hyper keeps room for the service's future in every connection for the
            // connection's life, and copies the future into it per request. The pipeline's
            // future is kilobytes; a held stream needs none of it once its head is out.
            let handling = Box::pin(async move { proxy.handle(request).await });
            async move {
                let response = handling.await;
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
    // Whether hyper has read what the client sent so far: a close request is honoured only
    // after, so a client whose request is already in the socket is served.
    let mut polled = false;
    loop {
        // Asked to make room: on this task no request can start between the check and the
        // close. One that never served has nothing to finish writing.
        if polled && closing.is_none() && activity.take_close_request() {
            if !activity.served() {
                tracing::debug!(%peer, "closed to make room (no request yet)");
                break;
            }
            tracing::debug!(%peer, "idle connection closed to make room");
            connection.as_mut().graceful_shutdown();
            closing = Some(Instant::now() + CLOSE_GRACE);
        }
        polled = true;
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
            // The connection first: it reads what arrived before a wake-up is acted on.
            biased;
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
                        Expired::NoRequest => tracing::debug!(%peer, "no request within header_read_timeout of opening; closing the connection"),
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
