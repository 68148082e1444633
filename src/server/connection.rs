//! What one client connection is doing, for its watchdog: requests in flight, since when
//! it has been idle, and since when a request head has been arriving. hyper's own header
//! timer also runs while a keep-alive connection waits, so credproxy keeps the clocks
//! itself: a slow request head gets `header_read_timeout` from its first byte, an idle
//! connection `idle_timeout` from its last response, whatever the protocol (HTTP/1.1,
//! h2c, or a connection that never says which). A connection that has not made its first
//! request gets `header_read_timeout` from its opening (the end of its TLS handshake) to
//! start one: a silent socket, or an HTTP/2 preface and then nothing, is not idle but
//! holding a place.
//!
//! When its listener is full, a connection with no request in flight can be asked to close
//! ([`Activity::ask_to_close`], see [`super::room`]); its watchdog decides, on the
//! connection's own task, so a request that began meanwhile is never cut.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

const NONE: u64 = u64::MAX;

/// The clocks of one connection, shared by its IO, its service and its watchdog.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `origin` when the last request finished (or the connection
    /// opened: accepted, or its TLS handshake ended).
    idle_since: AtomicU64,
    /// Milliseconds after `origin` when bytes first arrived with no request in flight.
    head_since: AtomicU64,
    http2: AtomicBool,
    /// Whether any bytes arrived yet (the first read tells an HTTP/2 preface); set during
    /// a TLS handshake too (a ClientHello is not silence).
    heard: AtomicBool,
    /// Whether a request ever started on this connection.
    served: AtomicBool,
    /// Asked to close to make room for a new connection.
    close_asked: AtomicBool,
    /// Wakes the watchdog when its deadline may have moved (a request ended, or a head
    /// began) or it was asked to close.
    changed: Notify,
}

/// What starts every HTTP/2 connection (prior knowledge, as h2c clients send it).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head (or TLS handshake) took longer than `header_read_timeout`.
    SlowHead,
    /// No first request began within `header_read_timeout` of the connection's opening.
    NoRequest,
    /// No request for `idle_timeout`.
    Idle,
}

/// How close a connection is to being worth keeping, for [`Activity::quiet`]: the lowest
/// goes first when room must be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Open (TLS: handshaken) and has said nothing since.
    Silent,
    /// In its TLS handshake, or its first request head (or HTTP/2 preface) began.
    Opening,
    /// Served a request and now waits for the next (keep-alive).
    Idle,
}

impl Activity {
    /// At accept; `handshake`: a TLS handshake comes first ([`Self::opened`] at its end).
    pub fn new(handshake: bool) -> Arc<Self> {
        Arc::new(Activity {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            http2: AtomicBool::new(false),
            heard: AtomicBool::new(handshake),
            served: AtomicBool::new(false),
            close_asked: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    /// The TLS handshake ended: the clocks start now, as on a cleartext connection at accept.
    pub fn opened(&self) {
        self.idle_since.store(self.now_ms(), Ordering::Release);
        self.heard.store(false, Ordering::Release);
    }

    /// Where the connection stands and since when, or `None` when it must not be closed
    /// to make room (a request in flight) or was already asked to.
    pub fn quiet(&self) -> Option<(Stage, Instant)> {
        if self.in_flight.load(Ordering::Acquire) > 0 || self.close_asked.load(Ordering::Acquire) {
            return None;
        }
        let stage = if self.served.load(Ordering::Acquire) {
            Stage::Idle
        } else if self.heard.load(Ordering::Acquire) {
            Stage::Opening
        } else {
            Stage::Silent
        };
        Some((stage, self.at(self.idle_since.load(Ordering::Acquire))))
    }

    /// Asks the connection's watchdog to close it if it has no request in flight when it
    /// looks (see [`Self::take_close_request`]).
    pub fn ask_to_close(&self) {
        self.close_asked.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// For the watchdog: whether the connection was asked to close and may be, on the
    /// connection's own task (no request can start meanwhile). A connection that became
    /// busy forgets the request: the listener asks another.
    pub fn take_close_request(&self) -> bool {
        if !self.close_asked.load(Ordering::Acquire) {
            return false;
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            self.close_asked.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Whether a request ever started here: a connection that never served one has no
    /// answer to finish writing and can be dropped at once.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    /// Resolves once the connection is asked to close (while no watchdog runs yet: during
    /// a TLS handshake).
    pub async fn close_requested(&self) {
        while !self.close_asked.load(Ordering::Acquire) {
            self.changed().await;
        }
    }

    /// Resolves when the deadline may have moved.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    /// A request reached the service; the returned guard ends it when dropped (with the
    /// response body, or with the request if it never got one).
    pub fn request_started(self: &Arc<Self>, http2: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Release);
        }
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        InFlight(Arc::clone(self))
    }

    fn bytes_arrived(&self, first: &[u8]) {
        if !self.heard.swap(true, Ordering::AcqRel) && first.starts_with(H2_PREFACE) {
            self.http2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NONE
        {
            self.head_since.store(self.now_ms(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When the connection expires if nothing changes, and why; `None` while a request is
    /// in flight.
    pub fn deadline(
        &self,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<(Instant, Expired)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.at(self.idle_since.load(Ordering::Acquire));
        let idle = (since + idle_timeout, Expired::Idle);
        let head = self.head_since.load(Ordering::Acquire);
        let http2 = self.http2.load(Ordering::Relaxed);
        let slow = if !self.served.load(Ordering::Acquire) && (head == NONE || http2) {
            // Nothing yet, or only HTTP/2's preface and settings: the first request is due
            // `header_read_timeout` after the opening.
            (since + header_read_timeout, Expired::NoRequest)
        } else if head == NONE || http2 {
            // HTTP/2 pings and window updates arrive while idle; they are not a request head.
            return Some(idle);
        } else {
            (self.at(head) + header_read_timeout, Expired::SlowHead)
        };
        Some(if slow.0 < idle.0 { slow } else { idle })
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since
            .store(activity.now_ms(), Ordering::Release);
        activity.head_since.store(NONE, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.changed.notify_one();
    }
}

/// The connection's socket (or TLS stream), noting when bytes arrive.
#[derive(Debug)]
pub struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> Watched<IO> {
    pub fn new(io: IO, activity: Arc<Activity>) -> Self {
        Watched { io, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_arrived(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A response body that keeps its request counted as in flight until it ends.
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_follow_requests_and_bytes() {
        let activity = Activity::new(false);
        let head = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let (_, why) = activity.deadline(head, idle).unwrap();
        assert_eq!(
            why,
            Expired::NoRequest,
            "a fresh silent connection has header_read_timeout to start a request"
        );
        assert_eq!(activity.quiet().unwrap().0, Stage::Silent);
        activity.bytes_arrived(b"GET / HTTP/1.1\r\n");
        assert_eq!(activity.quiet().unwrap().0, Stage::Opening);
        let (_, why) = activity.deadline(head, idle).unwrap();
        assert_eq!(
            why,
            Expired::SlowHead,
            "bytes without a request: a head is coming"
        );
        let request = activity.request_started(false);
        assert!(activity.deadline(head, idle).is_none(), "busy");
        assert!(
            activity.quiet().is_none(),
            "busy: never closed to make room"
        );
        activity.bytes_arrived(b"{}");
        assert!(
            activity.deadline(head, idle).is_none(),
            "a body is not a head"
        );
        drop(request);
        let (_, why) = activity.deadline(head, idle).unwrap();
        assert_eq!(why, Expired::Idle);
        assert_eq!(activity.quiet().unwrap().0, Stage::Idle);
        let _h2 = activity.request_started(true);
        drop(_h2);
        activity.bytes_arrived(b"\0\0\0\x04");
        let (_, why) = activity.deadline(head, idle).unwrap();
        assert_eq!(
            why,
            Expired::Idle,
            "HTTP/2 frames while idle are not a head"
        );
    }

    #[test]
    fn an_http2_preface_without_a_request_is_not_idle() {
        let activity = Activity::new(true);
        assert_eq!(activity.quiet().unwrap().0, Stage::Opening, "handshaking");
        activity.opened();
        assert_eq!(activity.quiet().unwrap().0, Stage::Silent);
        activity.bytes_arrived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let (_, why) = activity
            .deadline(Duration::from_secs(10), Duration::from_secs(60))
            .unwrap();
        assert_eq!(why, Expired::NoRequest);
    }

    #[test]
    fn a_close_request_is_forgotten_by_a_busy_connection() {
        let activity = Activity::new(false);
        activity.ask_to_close();
        assert!(activity.quiet().is_none(), "asked once");
        let request = activity.request_started(false);
        assert!(!activity.take_close_request(), "busy: kept");
        drop(request);
        assert!(!activity.take_close_request(), "forgotten");
        assert!(activity.quiet().is_some(), "may be asked again");
        activity.ask_to_close();
        assert!(activity.take_close_request());
    }
}
