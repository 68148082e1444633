//! What an HTTP/2 connection writes during one poll, sent to the socket in one write.
//!
//! h2 writes a DATA frame larger than 256 bytes straight from the request body rather
//! than copying it into its buffer, and holds one such frame at a time: it flushes the
//! socket before it takes the next. So every request with a body cost its own TLS records
//! and its own `writev`, even when tens of requests were handed to the connection in the
//! same turn of the worker (the shared bench at 64 concurrent requests: one upstream
//! `writev` per request). Each write on a loopback or LAN socket costs the sender the
//! receiving side's TCP work and a wake-up of the receiver.
//!
//! [`Corked`] sits between h2 and the socket (TLS or TCP). While the connection's driver
//! [holds](Cork::hold) it, writes are gathered and h2's flushes are deferred; when the
//! poll ends, the driver [releases](Cork::release) it and everything goes out together, as
//! few TLS records and one `writev` (TCP_CORK, in user space, for exactly one poll). Unless
//! the socket is full, no byte waits for more than the rest of the poll that wrote it.
//! Past [`GATHER_LIMIT`] unsent bytes, what was gathered goes out before more is taken,
//! and a socket that stays full pushes back on h2 from there.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered before they are written without waiting for the poll's end.
const GATHER_LIMIT: usize = 64 * 1024;
/// The gathering buffer kept between polls; a larger one (a busy turn's) is given back
/// once written, so that a connection left carrying only held streams stays small.
const KEPT_CAPACITY: usize = 16 * 1024;

struct Inner<T> {
    io: T,
    /// Bytes gathered and not yet written; `pending[sent..]` is what is left.
    pending: Vec<u8>,
    sent: usize,
    held: bool,
    /// A write error met while releasing, for h2's next write to report.
    failed: Option<io::Error>,
}

/// The socket as h2 sees it.
pub struct Corked<T>(Arc<Mutex<Inner<T>>>);

/// The driver's handle on the same socket.
pub struct Cork<T>(Arc<Mutex<Inner<T>>>);

/// Wraps `io`, released (writes pass straight through) until held.
pub fn cork<T>(io: T) -> (Corked<T>, Cork<T>) {
    let inner = Arc::new(Mutex::new(Inner {
        io,
        pending: Vec::new(),
        sent: 0,
        held: false,
        failed: None,
    }));
    (Corked(Arc::clone(&inner)), Cork(inner))
}

fn lock<T>(inner: &Mutex<Inner<T>>) -> MutexGuard<'_, Inner<T>> {
    // Nothing in `Inner` is left half-updated by a panic that matters more than the
    // connection going on.
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T: AsyncWrite + Unpin> Inner<T> {
    /// Writes out what was gathered.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        self.pending.clear();
        self.pending.shrink_to(KEPT_CAPACITY);
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Gathers `bufs` while held; `None` when released (the caller writes through).
    fn gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Option<Poll<io::Result<usize>>> {
        if let Some(error) = self.failed.take() {
            return Some(Poll::Ready(Err(error)));
        }
        if !self.held {
            return None;
        }
        if self.pending.len() - self.sent >= GATHER_LIMIT {
            match self.write_out(cx) {
                Poll::Ready(Ok(())) => {}
                stopped => return Some(stopped.map_ok(|()| 0)),
            }
        }
        if self.sent > 0 {
            // A release left part unsent (a full socket): what went out is dropped, so
            // the buffer holds at most the limit plus one write.
            self.pending.drain(..self.sent);
            self.sent = 0;
        }
        let mut len = 0;
        for buf in bufs {
            self.pending.extend_from_slice(buf);
            len += buf.len();
        }
        Some(Poll::Ready(Ok(len)))
    }
}

impl<T: AsyncWrite + Unpin> Cork<T> {
    /// Gathers writes and defers flushes until [`Self::release`].
    pub fn hold(&self) {
        lock(&self.0).held = true;
    }

    /// Writes out what was gathered and flushes the socket. A full socket leaves the rest
    /// for the next release (the task is woken when it drains); an error is kept for h2's
    /// next write, which ends the connection the way a failed write always did.
    pub fn release(&self, cx: &mut Context<'_>) {
        let mut inner = lock(&self.0);
        inner.held = false;
        let flushed = match inner.write_out(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut inner.io).poll_flush(cx),
            other => other,
        };
        if let Poll::Ready(Err(error)) = flushed {
            inner.failed = Some(error);
            // h2 learns of it at its next write or flush: make that now.
            cx.waker().wake_by_ref();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Corked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = lock(&self.0);
        if let Some(gathered) = inner.gather(cx, &[io::IoSlice::new(buf)]) {
            return gathered;
        }
        ready!(inner.write_out(cx))?;
        Pin::new(&mut inner.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut inner = lock(&self.0);
        if let Some(gathered) = inner.gather(cx, bufs) {
            return gathered;
        }
        ready!(inner.write_out(cx))?;
        Pin::new(&mut inner.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.0);
        if let Some(error) = inner.failed.take() {
            return Poll::Ready(Err(error));
        }
        if inner.held {
            // The release at the end of this poll flushes.
            return Poll::Ready(Ok(()));
        }
        ready!(inner.write_out(cx))?;
        Pin::new(&mut inner.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.0);
        if let Some(error) = inner.failed.take() {
            return Poll::Ready(Err(error));
        }
        ready!(inner.write_out(cx))?;
        Pin::new(&mut inner.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// A socket that records each write call; `room`: how many more bytes it takes;
    /// `broken`: every write fails.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        room: Option<usize>,
        broken: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let n = self.room.map_or(buf.len(), |room| room.min(buf.len()));
            if n == 0 {
                return Poll::Pending;
            }
            if let Some(room) = &mut self.room {
                *room -= n;
            }
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(corked: &mut Corked<Recorder>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(corked).poll_write(&mut cx, bytes)
    }

    fn flush(corked: &mut Corked<Recorder>) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(corked).poll_flush(&mut cx)
    }

    #[test]
    fn writes_and_flushes_of_one_held_poll_go_out_as_one_write_at_release() {
        let (mut corked, cork) = cork(Recorder::default());
        cork.hold();
        for frame in [&b"HEADERS"[..], b"DATA one", b"HEADERS", b"DATA two"] {
            assert!(matches!(write(&mut corked, frame), Poll::Ready(Ok(n)) if n == frame.len()));
            assert!(matches!(flush(&mut corked), Poll::Ready(Ok(()))));
        }
        assert!(
            lock(&cork.0).io.writes.is_empty(),
            "nothing written while held"
        );
        cork.release(&mut Context::from_waker(Waker::noop()));
        let inner = lock(&cork.0);
        assert_eq!(
            inner.io.writes,
            vec![b"HEADERSDATA oneHEADERSDATA two".to_vec()]
        );
        assert_eq!(inner.io.flushes, 1);
    }

    #[test]
    fn released_writes_pass_straight_through() {
        let (mut corked, cork) = cork(Recorder::default());
        assert!(matches!(write(&mut corked, b"preface"), Poll::Ready(Ok(7))));
        assert!(matches!(flush(&mut corked), Poll::Ready(Ok(()))));
        let inner = lock(&cork.0);
        assert_eq!(inner.io.writes, vec![b"preface".to_vec()]);
        assert_eq!(inner.io.flushes, 1);
    }

    #[test]
    fn a_full_socket_keeps_the_rest_for_the_next_release_and_in_order() {
        let (mut corked, cork) = cork(Recorder {
            room: Some(4),
            ..Recorder::default()
        });
        let release = || cork.release(&mut Context::from_waker(Waker::noop()));
        cork.hold();
        let _ = write(&mut corked, b"abcdefghij");
        release();
        assert_eq!(lock(&cork.0).io.writes.concat(), b"abcd".to_vec());
        // The next poll's writes queue behind what was left, and the buffer holds only
        // what is unsent.
        cork.hold();
        let _ = write(&mut corked, b"k");
        assert_eq!(lock(&cork.0).pending, b"efghijk".to_vec());
        lock(&cork.0).io.room = Some(100);
        release();
        assert_eq!(lock(&cork.0).io.writes.concat(), b"abcdefghijk".to_vec());
        // A released write goes behind anything left as well.
        lock(&cork.0).io.room = Some(2);
        cork.hold();
        let _ = write(&mut corked, b"lmn");
        release();
        lock(&cork.0).io.room = Some(100);
        assert!(matches!(write(&mut corked, b"o"), Poll::Ready(Ok(1))));
        assert_eq!(
            lock(&cork.0).io.writes.concat(),
            b"abcdefghijklmno".to_vec()
        );
    }

    #[test]
    fn a_failed_release_is_reported_to_the_next_write_or_flush() {
        let (mut corked, cork) = cork(Recorder {
            broken: true,
            ..Recorder::default()
        });
        cork.hold();
        let _ = write(&mut corked, b"frame");
        cork.release(&mut Context::from_waker(Waker::noop()));
        assert!(
            matches!(flush(&mut corked), Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe)
        );
    }

    #[test]
    fn past_the_limit_the_gathered_bytes_go_out_first() {
        let (mut corked, cork) = cork(Recorder::default());
        cork.hold();
        let big = vec![7u8; GATHER_LIMIT];
        let _ = write(&mut corked, &big);
        assert!(lock(&cork.0).io.writes.is_empty());
        let _ = write(&mut corked, b"more");
        assert_eq!(
            lock(&cork.0).io.writes.concat(),
            big,
            "the gathered bytes went first"
        );
        cork.release(&mut Context::from_waker(Waker::noop()));
        assert_eq!(lock(&cork.0).io.writes.last().unwrap(), b"more");
    }
}
