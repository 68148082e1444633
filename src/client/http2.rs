//! HTTP/2 to upstreams with as many connections per host as the load needs.
//!
//! hyper's pooled client keeps one HTTP/2 connection per host and, once the upstream's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` is reached, queues further requests inside that
//! connection without limit or word; before the upstream's SETTINGS arrive it opens streams
//! beyond the limit, which the upstream refuses. This pool, one per serving worker, instead:
//!
//! - packs requests onto the oldest connection with a free stream (so extra connections
//!   fall idle and are closed after `pool_idle_timeout`), counting a stream as in use until
//!   its response body ends;
//! - opens a new connection when every open one is full, counting a connection being set
//!   up as the streams the host's connections usually allow, so a cold burst opens a few
//!   connections, not one per request; sends nothing on a connection before its SETTINGS
//!   have arrived, and follows the limit when the upstream changes it;
//! - caps the connections to one host across all workers (`pool_max_connections_per_host`);
//!   a request that finds the cap reached and every stream busy waits up to
//!   `queue_timeout`, then fails with [`Busy`];
//! - replays (at most three times) a request the upstream never processed: a stream it refused
//!   (`REFUSED_STREAM`) or one above a GOAWAY's last stream id.
//!
//! With `upstream_http2 = "auto"`, an upstream whose ALPN picks HTTP/1.1 is remembered
//! and its requests go back to the caller for the HTTP/1.1 pool.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use super::corked::{Cork, Corked};
use super::{BoxError, Connector};
use crate::config::Http2;

/// Streams opened on one connection at most, whatever the upstream allows (it may
/// advertise no limit at all).
const MAX_STREAMS_PER_CONNECTION: usize = 256;
/// What a host's connections are assumed to allow until one has said (RFC 9113 asks
/// servers to allow at least 100).
const ASSUMED_STREAMS: usize = 100;
/// The stream limit h2 reports until the upstream's SETTINGS arrive: a value no upstream
/// sends (h2 replaces it with the advertised limit, or `usize::MAX` when there is none).
const UNSETTLED: usize = usize::MAX - 1;
/// How often a waiting request looks again without being woken: connections to its host
/// may have closed on other workers, freeing room under the cap.
const RECHECK: Duration = Duration::from_millis(100);
/// Times a request the upstream never processed is sent again (a refused stream, then a
/// connection that went away before it was sent, is two).
const MAX_REPLAYS: usize = 3;
/// Flow-control windows: a stream's is small enough that a few clients that stop reading
/// do not exhaust the connection's.
const STREAM_WINDOW: u32 = 512 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Every stream of every allowed connection to the host stayed busy for `queue_timeout`.
#[derive(Debug, thiserror::Error)]
#[error(
    "all {connections} HTTP/2 connections to it (`pool_max_connections_per_host`) had every stream in use for {}",
    humantime::format_duration(*.waited)
)]
pub struct Busy {
    pub connections: usize,
    pub waited: Duration,
}

/// What [`Pool::send`] did with a request.
pub enum Routed {
    /// Answered over HTTP/2, after waiting this long for a stream.
    Answered(Response<H2Body>, Duration),
    /// The upstream speaks HTTP/1.1 (ALPN chose it): the request, for the HTTP/1.1 pool.
    Http1(Request<Full<Bytes>>),
}

/// The HTTP/2 connections of one serving worker.
pub struct Pool {
    hosts: Mutex<HashMap<HostKey, Arc<Host>>>,
    dial: Arc<Dial>,
    parked: Parked,
}

/// A TLS connection on which ALPN chose HTTP/1.1.
pub type Http1Stream = tokio_rustls::client::TlsStream<TokioIo<TokioIo<tokio::net::TcpStream>>>;

/// HTTP/1.1 connections the HTTP/2 pool opened while finding out what a host speaks, left
/// for the worker's HTTP/1.1 pool (one per host at most).
#[derive(Clone, Default)]
pub struct Parked(Arc<Mutex<HashMap<String, (Instant, Http1Stream)>>>);

/// How long a parked connection is offered: the request that found out the host speaks
/// HTTP/1.1 takes it at once; a later one could find it closed by the upstream.
const PARKED_FOR: Duration = Duration::from_secs(2);

impl Parked {
    fn park(&self, origin: &str, stream: Http1Stream) {
        self.0
            .lock()
            .expect("pool lock")
            .insert(origin.to_string(), (Instant::now(), stream));
    }

    /// The connection parked for `uri`'s origin, if any and still fresh.
    pub fn take(&self, uri: &Uri) -> Option<Http1Stream> {
        let mut parked = self.0.lock().expect("pool lock");
        if parked.is_empty() {
            return None;
        }
        parked
            .remove(&origin(uri))
            .filter(|(at, _)| at.elapsed() < PARKED_FOR)
            .map(|(_, stream)| stream)
    }
}

/// `scheme://authority`, as the pools key hosts.
fn origin(uri: &Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map_or("", |a| a.as_str())
    )
}

/// How connections are opened, and what the workers' pools share.
pub struct Dial {
    pub connector: Connector,
    /// ALPN offers h2 and http/1.1 (`auto`).
    pub tls_auto: Arc<rustls::ClientConfig>,
    /// ALPN offers h2 only (`always`).
    pub tls_h2: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections_per_host: usize,
    /// Connections open (or being opened) per host, all workers together.
    open: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl Dial {
    pub fn new(
        connector: Connector,
        tls: &rustls::ClientConfig,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_connections_per_host: usize,
    ) -> Self {
        let with_alpn = |protocols: &[&[u8]]| {
            let mut tls = tls.clone();
            tls.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            Arc::new(tls)
        };
        Dial {
            connector,
            tls_auto: with_alpn(&[b"h2", b"http/1.1"]),
            tls_h2: with_alpn(&[b"h2"]),
            connect_timeout,
            idle_timeout,
            max_connections_per_host: max_connections_per_host.max(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn open_count(&self, origin: &str) -> Arc<AtomicUsize> {
        let mut open = self.open.lock().expect("pool lock");
        Arc::clone(open.entry(origin.to_string()).or_default())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HostKey {
    /// `scheme://authority`.
    origin: String,
    mode: Http2,
}

/// One upstream host as seen by one worker.
struct Host {
    key: HostKey,
    uri: Uri,
    /// Connections to this host from every worker.
    open: Arc<AtomicUsize>,
    state: Mutex<HostState>,
    /// Woken when a stream frees, a connection settles, opens, fails or closes.
    changed: Notify,
}

#[derive(Default)]
struct HostState {
    connections: Vec<Arc<Connection>>,
    /// Connections being opened by this worker.
    dialing: usize,
    /// Requests waiting for a stream.
    waiting: usize,
    /// The stream limit this host's connections last advertised.
    typical_limit: Option<usize>,
    /// ALPN chose HTTP/1.1 (`auto`): requests go to the HTTP/1.1 pool.
    http1: bool,
    /// Failed connection attempts, and the last one's reason: requests that were waiting
    /// on an attempt get its error rather than waiting on.
    failures: u64,
    last_failure: Option<Arc<str>>,
}

impl HostState {
    fn typical(&self) -> usize {
        // An upstream that allows 0 streams for now is expected to allow some later.
        self.typical_limit.unwrap_or(ASSUMED_STREAMS).max(1)
    }
}

/// One HTTP/2 connection.
struct Connection {
    send: h2::client::SendRequest<Bytes>,
    /// Streams the upstream allows now (capped); [`UNSETTLED`] until its SETTINGS arrive.
    limit: AtomicUsize,
    in_use: AtomicUsize,
    /// Closed, going away, or reaped: no new stream goes on it.
    closed: AtomicBool,
    idle_since: Mutex<Instant>,
}

impl Connection {
    fn settled(&self) -> bool {
        self.limit.load(Ordering::Acquire) != UNSETTLED
    }

    fn has_room(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.settled()
            && self.in_use.load(Ordering::Acquire) < self.limit.load(Ordering::Acquire)
    }
}

/// A stream in use; frees it (and wakes waiters) when dropped.
struct Lease {
    connection: Arc<Connection>,
    host: Arc<Host>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.connection.in_use.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.connection.idle_since.lock().expect("pool lock") = Instant::now();
        }
        self.host.changed.notify_waiters();
    }
}

/// What a request should do next.
enum Next {
    Stream(Lease),
    /// Open a connection (this request was counted as dialing).
    Dial,
    /// A connection being opened or settling will have room.
    WaitForCapacity,
    /// Every allowed connection is open and full.
    WaitCapped(usize),
    Http1,
    Failed(Arc<str>),
}

impl Pool {
    pub fn new(dial: Arc<Dial>, parked: Parked) -> Self {
        Pool {
            hosts: Mutex::new(HashMap::new()),
            dial,
            parked,
        }
    }

    /// Sends `request` (an absolute URI) over HTTP/2 (`mode` is `Auto` or `Always`).
    /// `queue_timeout` bounds the wait for a stream once the connection cap is reached.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        mode: Http2,
        queue_timeout: Duration,
    ) -> Result<Routed, BoxError> {
        let host = self.host(request.uri(), mode);
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let mut replays = 0;
        let mut avoid: Option<Arc<Connection>> = None;
        loop {
            let lease = match self.stream(&host, queue_timeout, avoid.take()).await? {
                Some(lease) => lease,
                None => {
                    return Ok(Routed::Http1(Request::from_parts(parts, Full::new(body))));
                }
            };
            let waited = started.elapsed();
            match exchange(&lease, &parts, &body).await {
                Ok(response) => {
                    let response = response.map(|recv| H2Body {
                        recv,
                        lease: Some(lease),
                    });
                    return Ok(Routed::Answered(response, waited));
                }
                Err(failed) if replays < MAX_REPLAYS && failed.never_processed() => {
                    if failed.error.is_go_away() || failed.error.is_io() {
                        lease.connection.closed.store(true, Ordering::Release);
                    }
                    tracing::debug!(upstream = %host.key.origin, error = %failed.error,
                        "the upstream did not process the request; sending it again on another stream");
                    replays += 1;
                    avoid = Some(Arc::clone(&lease.connection));
                }
                Err(failed) => return Err(Box::new(failed.error)),
            }
        }
    }

    fn host(&self, uri: &Uri, mode: Http2) -> Arc<Host> {
        let key = HostKey {
            origin: origin(uri),
            mode,
        };
        let mut hosts = self.hosts.lock().expect("pool lock");
        if let Some(host) = hosts.get(&key) {
            return Arc::clone(host);
        }
        let mut base = uri.clone().into_parts();
        base.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        let host = Arc::new(Host {
            open: self.dial.open_count(&key.origin),
            uri: Uri::from_parts(base).unwrap_or_else(|_| uri.clone()),
            key: key.clone(),
            state: Mutex::new(HostState::default()),
            changed: Notify::new(),
        });
        hosts.insert(key, Arc::clone(&host));
        host
    }

    /// A free stream on `host`, opening connections as needed; `None` when the host speaks
    /// HTTP/1.1.
    async fn stream(
        &self,
        host: &Arc<Host>,
        queue_timeout: Duration,
        avoid: Option<Arc<Connection>>,
    ) -> Result<Option<Lease>, BoxError> {
        let mut waiting = None;
        let mut capped_since: Option<Instant> = None;
        let failures_before = host.state.lock().expect("pool lock").failures;
        loop {
            let changed = host.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = self.next(host, failures_before, &mut waiting, avoid.as_ref());
            match next {
                Next::Stream(lease) => return Ok(Some(lease)),
                Next::Http1 => return Ok(None),
                Next::Failed(reason) => return Err(reason.to_string().into()),
                Next::Dial => {
                    // Opened in the background: a stream that frees meanwhile serves this
                    // request, and the connection joins the pool for the next ones.
                    let dialing = Dialing {
                        host: Arc::clone(host),
                        done: false,
                    };
                    tokio::spawn(open_connection(
                        Arc::clone(&self.dial),
                        dialing,
                        self.parked.clone(),
                    ));
                    capped_since = None;
                }
                Next::WaitForCapacity => capped_since = None,
                Next::WaitCapped(connections) => {
                    let since = *capped_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= queue_timeout {
                        return Err(Box::new(Busy {
                            connections,
                            waited: since.elapsed(),
                        }));
                    }
                }
            }
            let wake = match capped_since {
                Some(since) => (since + queue_timeout).min(Instant::now() + RECHECK),
                None => Instant::now() + RECHECK,
            };
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Decides under the host's lock; counts this request among the waiting (`waiting`
    /// holds the guard once it is).
    fn next(
        &self,
        host: &Arc<Host>,
        failures_before: u64,
        waiting: &mut Option<Waiting>,
        avoid: Option<&Arc<Connection>>,
    ) -> Next {
        let mut state = host.state.lock().expect("pool lock");
        if state.http1 {
            return Next::Http1;
        }
        state
            .connections
            .retain(|c| !c.closed.load(Ordering::Acquire));
        // A replay goes to another connection than the one that turned it away.
        let usable =
            |c: &&Arc<Connection>| c.has_room() && avoid.is_none_or(|a| !Arc::ptr_eq(a, c));
        if let Some(connection) = state.connections.iter().find(usable) {
            connection.in_use.fetch_add(1, Ordering::AcqRel);
            return Next::Stream(Lease {
                connection: Arc::clone(connection),
                host: Arc::clone(host),
            });
        }
        if state.failures > failures_before
            && let Some(reason) = &state.last_failure
        {
            return Next::Failed(Arc::clone(reason));
        }
        if waiting.is_none() {
            state.waiting += 1;
            *waiting = Some(Waiting(Arc::clone(host)));
        }
        let settling = state.connections.iter().filter(|c| !c.settled()).count();
        let coming = (state.dialing + settling) * state.typical();
        if state.waiting <= coming {
            return Next::WaitForCapacity;
        }
        let dialed = host
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.dial.max_connections_per_host).then_some(open + 1)
            })
            .is_ok();
        if dialed {
            state.dialing += 1;
            return Next::Dial;
        }
        // No other connection can be opened: the one that turned a replay away is better
        // than a wait.
        if let Some(avoided) = avoid.filter(|c| c.has_room()) {
            avoided.in_use.fetch_add(1, Ordering::AcqRel);
            return Next::Stream(Lease {
                connection: Arc::clone(avoided),
                host: Arc::clone(host),
            });
        }
        if state.dialing + settling > 0 {
            return Next::WaitForCapacity;
        }
        Next::WaitCapped(self.dial.max_connections_per_host)
    }

    /// Connections, streams in use, stream limit and waiting requests per upstream host.
    pub fn status(&self) -> Vec<HostStatus> {
        let hosts = self.hosts.lock().expect("pool lock");
        hosts
            .values()
            .map(|host| {
                let state = host.state.lock().expect("pool lock");
                let live: Vec<_> = state
                    .connections
                    .iter()
                    .filter(|c| !c.closed.load(Ordering::Acquire))
                    .collect();
                HostStatus {
                    origin: host.key.origin.clone(),
                    mode: host.key.mode,
                    http1: state.http1,
                    connections: live.len(),
                    streams_in_use: live.iter().map(|c| c.in_use.load(Ordering::Acquire)).sum(),
                    stream_limit: state.typical_limit,
                    waiting: state.waiting,
                }
            })
            .collect()
    }
}

/// One worker's view of one host's HTTP/2 connections.
#[derive(Debug, Clone)]
pub struct HostStatus {
    pub origin: String,
    pub mode: Http2,
    pub http1: bool,
    pub connections: usize,
    pub streams_in_use: usize,
    pub stream_limit: Option<usize>,
    pub waiting: usize,
}

/// A request counted among its host's waiting ones.
struct Waiting(Arc<Host>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.state.lock().expect("pool lock").waiting -= 1;
    }
}

/// A connection being opened; uncounts itself if the attempt is dropped midway.
struct Dialing {
    host: Arc<Host>,
    done: bool,
}

impl Dialing {
    fn finish(
        mut self,
        opened: Result<Opened, BoxError>,
        dial: &Dial,
        parked: &Parked,
    ) -> Result<(), BoxError> {
        self.done = true;
        let host = &self.host;
        let mut state = host.state.lock().expect("pool lock");
        state.dialing -= 1;
        let result = match opened {
            Ok(Opened::Http2(send, driven, cork)) => {
                let connection = Arc::new(Connection {
                    send,
                    limit: AtomicUsize::new(UNSETTLED),
                    in_use: AtomicUsize::new(0),
                    closed: AtomicBool::new(false),
                    idle_since: Mutex::new(Instant::now()),
                });
                state.connections.push(Arc::clone(&connection));
                tokio::spawn(drive(
                    driven,
                    cork,
                    connection,
                    Arc::downgrade(host),
                    dial.idle_timeout,
                    dial.connect_timeout,
                ));
                Ok(())
            }
            Ok(Opened::Http1(stream)) => {
                host.open.fetch_sub(1, Ordering::AcqRel);
                parked.park(&host.key.origin, stream);
                state.http1 = true;
                Ok(())
            }
            Err(error) => {
                host.open.fetch_sub(1, Ordering::AcqRel);
                let reason: Arc<str> = crate::failure::chain(error.as_ref()).into();
                state.failures += 1;
                state.last_failure = Some(Arc::clone(&reason));
                Err(reason.to_string().into())
            }
        };
        drop(state);
        host.changed.notify_waiters();
        result
    }
}

impl Drop for Dialing {
    fn drop(&mut self) {
        if !self.done {
            self.host.state.lock().expect("pool lock").dialing -= 1;
            self.host.open.fetch_sub(1, Ordering::AcqRel);
            self.host.changed.notify_waiters();
        }
    }
}

/// Opens one connection to `host` (already counted in `dialing` and the host's open
/// connections) and adds it to the pool; its driver marks it settled.
async fn open_connection(dial: Arc<Dial>, dialing: Dialing, parked: Parked) {
    let host = Arc::clone(&dialing.host);
    let opened = tokio::time::timeout(
        dial.connect_timeout * 2,
        connect(&dial, &host.uri, host.key.mode),
    )
    .await
    .unwrap_or_else(|_| Err("connecting (TCP, TLS and HTTP/2 set-up) took too long".into()));
    if let Err(error) = dialing.finish(opened, &dial, &parked) {
        tracing::debug!(upstream = %host.key.origin, %error, "could not open an HTTP/2 connection");
    }
}

/// The connection's socket: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

type Driven = h2::client::Connection<Corked<Box<dyn Io>>, Bytes>;

enum Opened {
    Http2(h2::client::SendRequest<Bytes>, Driven, Cork<Box<dyn Io>>),
    /// ALPN chose HTTP/1.1 (only with `auto`): the connection, for the HTTP/1.1 pool.
    Http1(Http1Stream),
}

/// TCP (through the egress proxy when one applies), TLS with ALPN on `https`, then the
/// HTTP/2 preface. `http://` is h2c with prior knowledge (only with `always`).
async fn connect(dial: &Dial, uri: &Uri, mode: Http2) -> Result<Opened, BoxError> {
    let tcp = tower_service::Service::call(&mut dial.connector.clone(), uri.clone()).await?;
    let io: Box<dyn Io> = if uri.scheme_str() == Some("https") {
        let host = uri.host().unwrap_or_default();
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| format!("`{host}` is not a name TLS can check: {e}"))?
            .to_owned();
        let tls = match mode {
            Http2::Always => &dial.tls_h2,
            _ => &dial.tls_auto,
        };
        let stream = TlsConnector::from(Arc::clone(tls))
            .connect(name, TokioIo::new(tcp))
            .await?;
        let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        if !alpn_h2 {
            if mode == Http2::Always {
                return Err("the upstream did not agree to HTTP/2 (TLS ALPN); set `upstream_http2 = \"auto\"` on the route".into());
            }
            return Ok(Opened::Http1(stream));
        }
        Box::new(stream)
    } else {
        Box::new(TokioIo::new(tcp))
    };
    let (io, cork) = super::corked::cork(io);
    let (send, driven) = h2::client::Builder::new()
        .initial_max_send_streams(UNSETTLED)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(64 * 1024)
        .enable_push(false)
        .handshake::<Corked<Box<dyn Io>>, Bytes>(io)
        .await?;
    Ok(Opened::Http2(send, driven, cork))
}

/// Drives one connection until it ends: notes the upstream's stream limit as its SETTINGS
/// arrive and change, closes the connection when it has had no stream for the idle
/// timeout, or when its SETTINGS never come.
async fn drive(
    mut driven: Driven,
    cork: Cork<Box<dyn Io>>,
    connection: Arc<Connection>,
    host: Weak<Host>,
    idle_timeout: Duration,
    settle_timeout: Duration,
) {
    let opened = Instant::now();
    let tick = (idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut ticks = tokio::time::interval_at((opened + tick).into(), tick);
    // A handle of our own to ask whether the upstream said GOAWAY: h2 refuses new
    // streams from then on, so no request should be given this connection again.
    let mut probe = connection.send.clone();
    let polled = std::future::poll_fn(|cx| {
        // What h2 writes during this poll (the frames of every request handed to it since
        // the last) goes out together when the poll ends.
        cork.hold();
        let polled = Pin::new(&mut driven).poll(cx);
        cork.release(cx);
        note_limit(&driven, &connection, &host);
        if !connection.closed.load(Ordering::Acquire)
            && matches!(probe.poll_ready(cx), Poll::Ready(Err(_)))
        {
            connection.closed.store(true, Ordering::Release);
            if let Some(host) = host.upgrade() {
                host.changed.notify_waiters();
            }
        }
        polled
    });
    tokio::pin!(polled);
    let ended: Option<String> = loop {
        tokio::select! {
            result = &mut polled => break result.err().map(|e| e.to_string()),
            _ = ticks.tick() => {
                if !connection.settled() && opened.elapsed() > settle_timeout {
                    break Some("the upstream sent no HTTP/2 SETTINGS in time".to_string());
                }
                // Gone away, or reaped: closed once its last stream has ended.
                if connection.closed.load(Ordering::Acquire)
                    && connection.in_use.load(Ordering::Acquire) == 0
                {
                    break None;
                }
                if reap_if_idle(&connection, &host, idle_timeout) {
                    break None;
                }
            }
        }
    };
    if let Some(error) = &ended {
        tracing::debug!(%error, "upstream HTTP/2 connection ended");
    }
    connection.closed.store(true, Ordering::Release);
    if let Some(host) = host.upgrade() {
        host.open.fetch_sub(1, Ordering::AcqRel);
        let mut state = host.state.lock().expect("pool lock");
        state.connections.retain(|c| !Arc::ptr_eq(c, &connection));
        // A connection that ended before its SETTINGS (an HTTP/1.1 server answering the
        // preface, one that closes at once) is a failed connection attempt: the requests
        // waiting on it get why, rather than dialing again and again.
        if !connection.settled() {
            let reason = ended.unwrap_or_else(|| "the connection closed".to_string());
            state.failures += 1;
            state.last_failure = Some(
                format!("the upstream ended the HTTP/2 connection before its SETTINGS: {reason}")
                    .into(),
            );
        }
        drop(state);
        host.changed.notify_waiters();
    }
}

/// Takes the upstream's current stream limit from its SETTINGS (capped); wakes waiters
/// when it changed.
fn note_limit(driven: &Driven, connection: &Connection, host: &Weak<Host>) {
    let advertised = driven.max_concurrent_send_streams();
    let limit = match advertised {
        UNSETTLED => UNSETTLED,
        n => n.min(MAX_STREAMS_PER_CONNECTION),
    };
    if connection.limit.swap(limit, Ordering::AcqRel) == limit {
        return;
    }
    if let Some(host) = host.upgrade() {
        if limit != UNSETTLED {
            host.state.lock().expect("pool lock").typical_limit = Some(limit);
        }
        host.changed.notify_waiters();
    }
}

/// Marks the connection closed when it has had no stream for `idle_timeout` (or its pool
/// is gone and it has none). Checked under the host's lock, where streams are taken.
fn reap_if_idle(connection: &Connection, host: &Weak<Host>, idle_timeout: Duration) -> bool {
    let idle = || {
        connection.in_use.load(Ordering::Acquire) == 0
            && connection.idle_since.lock().expect("pool lock").elapsed() >= idle_timeout
    };
    let Some(host) = host.upgrade() else {
        return connection.in_use.load(Ordering::Acquire) == 0;
    };
    let _state = host.state.lock().expect("pool lock");
    if idle() {
        connection.closed.store(true, Ordering::Release);
        return true;
    }
    false
}

/// Why a request failed on HTTP/2, and whether the upstream can have seen it.
struct Failed {
    error: h2::Error,
    /// The request was handed to the connection (its stream may have been processed).
    sent: bool,
}

/// Opens a stream on the leased connection and sends the request; the response head.
async fn exchange(
    lease: &Lease,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Result<Response<h2::RecvStream>, Failed> {
    let unsent = |error| Failed { error, sent: false };
    let mut send = lease
        .connection
        .send
        .clone()
        .ready()
        .await
        .map_err(unsent)?;
    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.headers_mut() = http2_headers(&parts.headers, body.len());
    let (response, mut stream) = send.send_request(head, body.is_empty()).map_err(unsent)?;
    let sent = |error| Failed { error, sent: true };
    if !body.is_empty() {
        // The body is whole already (at most `max_body`); h2 sends it as the window allows.
        stream.send_data(body.clone(), true).map_err(sent)?;
    }
    response.await.map_err(sent)
}

impl Failed {
    /// The upstream cannot have processed the request: it never left, the stream was
    /// refused, or it was above a GOAWAY's last stream id. Safe to send again.
    fn never_processed(&self) -> bool {
        // Not sent because the connection is gone (a mistake of ours in the request, such
        // as a header HTTP/2 forbids, would fail again: it is not replayed).
        (!self.sent && (self.error.is_go_away() || self.error.is_io()))
            || self.error.reason() == Some(h2::Reason::REFUSED_STREAM)
            || (self.error.is_go_away() && self.error.is_remote())
    }
}

/// The request's headers as HTTP/2 allows them: no connection-specific fields, no `Host`
/// (the URI's authority becomes `:authority`), the body's true length.
fn http2_headers(headers: &HeaderMap, body_len: usize) -> HeaderMap {
    let mut headers = headers.clone();
    for name in [
        http::header::CONNECTION,
        http::header::HOST,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if headers
        .get(http::header::TE)
        .is_some_and(|te| te != "trailers")
    {
        headers.remove(http::header::TE);
    }
    if body_len > 0 || headers.contains_key(http::header::CONTENT_LENGTH) {
        headers.insert(http::header::CONTENT_LENGTH, body_len.into());
    }
    headers
}

/// An HTTP/2 response body: frees its stream when it ends or is dropped, and returns
/// flow-control credit as the client takes the data (a client that stops reading holds
/// the upstream back, not credproxy's memory).
pub struct H2Body {
    recv: h2::RecvStream,
    lease: Option<Lease>,
}

impl std::fmt::Debug for H2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body")
            .field("ended", &self.lease.is_none())
            .finish()
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.lease.is_none() {
            return Poll::Ready(None);
        }
        let frame = match this.recv.poll_data(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                let _ = this.recv.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Poll::Ready(Some(Err(error))) => Some(Err(error)),
            Poll::Ready(None) => match this.recv.poll_trailers(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(trailers))) => Some(Ok(Frame::trailers(trailers))),
                Poll::Ready(Ok(None)) => None,
                Poll::Ready(Err(error)) => Some(Err(error)),
            },
        };
        this.lease = None;
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.lease.is_none() || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
