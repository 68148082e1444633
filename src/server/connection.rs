//! What one client connection is doing, for its watchdog: requests in flight, since when
//! it has been idle, and since when a request head has been arriving. hyper's own header
//! timer also runs while a keep-alive connection waits, so credproxy keeps the clocks
//! itself: a slow request head gets `header_read_timeout` from its first byte, an idle
//! connection `idle_timeout` from its last response, whatever the protocol (HTTP/1.1,
//! h2c, or a connection that never says which).

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
    /// Milliseconds after `origin` when the last request finished (or the connection opened).
    idle_since: AtomicU64,
    /// Milliseconds after `origin` when bytes first arrived with no request in flight.
    head_since: AtomicU64,
    http2: AtomicBool,
    /// Whether any bytes arrived yet (the first read tells an HTTP/2 preface).
    heard: AtomicBool,
    /// Wakes the watchdog when its deadline may have moved: a request ended, or a head
    /// began.
    changed: Notify,
}

/// What starts every HTTP/2 connection (prior knowledge, as h2c clients send it).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head (or TLS handshake) took longer than `header_read_timeout`.
    SlowHead,
    /// No request for `idle_timeout`.
    Idle,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            http2: AtomicBool::new(false),
            heard: AtomicBool::new(false),
            changed: Notify::new(),
        })
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
        let idle = (
            self.at(self.idle_since.load(Ordering::Acquire)) + idle_timeout,
            Expired::Idle,
        );
        let head = self.head_since.load(Ordering::Acquire);
        // HTTP/2 pings and window updates arrive while idle; they are not a request head.
        if head == NONE || self.http2.load(Ordering::Relaxed) {
            return Some(idle);
        }
        let slow = (self.at(head) + header_read_timeout, Expired::SlowHead);
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
        let activity = Activity::new();
        let head = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let (_, why) = activity.deadline(head, idle).unwrap();
        assert_eq!(
            why,
            Expired::Idle,
            "a fresh silent connection waits for idle"
        );
        activity.bytes_arrived(b"GET / HTTP/1.1\r\n");
        let (_, why) = activity.deadline(head, idle).unwrap();
        assert_eq!(
            why,
            Expired::SlowHead,
            "bytes without a request: a head is coming"
        );
        let request = activity.request_started(false);
        assert!(activity.deadline(head, idle).is_none(), "busy");
        activity.bytes_arrived(b"{}");
        assert!(
            activity.deadline(head, idle).is_none(),
            "a body is not a head"
        );
        drop(request);
        let (_, why) = activity.deadline(head, idle).unwrap();
        assert_eq!(why, Expired::Idle);
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
}
