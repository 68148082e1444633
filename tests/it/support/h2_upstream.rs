//! An HTTP/2 upstream written on the h2 crate, so a test can set what hyper's server hides:
//! a small `SETTINGS_MAX_CONCURRENT_STREAMS`, streams refused with `REFUSED_STREAM`, a
//! GOAWAY after a few streams. h2c (prior knowledge) on plain TCP, or TLS with ALPN h2.
//! Every stream is answered with a short SSE stream: a first event at once, a last one
//! after `hold`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How the fake behaves.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Advertised `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_streams: u32,
    /// Time between a stream's first and last event.
    pub hold: Duration,
    /// This many streams (counted over all connections) are refused with `REFUSED_STREAM`.
    pub refuse_first: usize,
    /// After this many streams on one connection, the server says GOAWAY with the last
    /// stream it processed and serves no newer one.
    pub goaway_after: Option<usize>,
    /// After the first event, the stream is reset (`INTERNAL_ERROR`) instead of ended.
    pub reset_after_first: bool,
    /// Instead of the SSE stream: this many bytes of body, sent only as the client's
    /// flow-control window allows.
    pub body_bytes: Option<usize>,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub connections: AtomicUsize,
    pub streams_answered: AtomicUsize,
    pub streams_refused: AtomicUsize,
    pub open_streams: AtomicUsize,
    pub most_open_on_one_connection: AtomicUsize,
    pub goaways: AtomicUsize,
    /// Body bytes handed to the connection (within the window the client granted).
    pub bytes_sent: AtomicUsize,
}

pub struct H2Upstream {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    tls: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Upstream {
    /// `tls`: an acceptor (its config gets ALPN h2), else h2c.
    pub async fn start(plan: Plan, tls: Option<&TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let acceptor = tls.map(|acceptor| {
            let mut config = (*acceptor.config()).as_ref().clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            TlsAcceptor::from(Arc::new(config))
        });
        let task = {
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    counts.connections.fetch_add(1, Ordering::SeqCst);
                    let (plan, counts, acceptor) =
                        (plan.clone(), Arc::clone(&counts), acceptor.clone());
                    tokio::spawn(async move {
                        match acceptor {
                            None => serve(tcp, plan, counts).await,
                            Some(acceptor) => {
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    serve(tls, plan, counts).await;
                                }
                            }
                        }
                    });
                }
            })
        };
        H2Upstream {
            addr,
            counts,
            tls: tls.is_some(),
            task,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.tls { "localhost" } else { "127.0.0.1" };
        format!("{scheme}://{host}:{}", self.addr.port())
    }

    pub fn count(&self, which: fn(&Counts) -> &AtomicUsize) -> usize {
        which(&self.counts).load(Ordering::SeqCst)
    }
}

async fn serve<IO>(io: IO, plan: Plan, counts: Arc<Counts>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut connection) = h2::server::Builder::new()
        .max_concurrent_streams(plan.max_streams)
        .handshake::<_, Bytes>(io)
        .await
    else {
        return;
    };
    let open_here = Arc::new(AtomicUsize::new(0));
    let mut streams = 0;
    let mut going_away = false;
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        streams += 1;
        if counts.streams_refused.load(Ordering::SeqCst) < plan.refuse_first
            && counts.streams_refused.fetch_add(1, Ordering::SeqCst) < plan.refuse_first
        {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        let now_open = open_here.fetch_add(1, Ordering::SeqCst) + 1;
        counts
            .most_open_on_one_connection
            .fetch_max(now_open, Ordering::SeqCst);
        counts.open_streams.fetch_add(1, Ordering::SeqCst);
        let (stream_counts, open_here, plan) =
            (Arc::clone(&counts), Arc::clone(&open_here), plan.clone());
        tokio::spawn(async move {
            let mut body = request.into_body();
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
            }
            let head = Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(())
                .unwrap();
            if let Ok(mut send) = respond.send_response(head, false) {
                let finished = match plan.body_bytes {
                    Some(total) => send_within_window(&mut send, total, &stream_counts).await,
                    None => {
                        let first = Bytes::from("event: ping\ndata: {\"n\":1}\n\n");
                        let _ = send.send_data(first, false);
                        tokio::time::sleep(plan.hold).await;
                        if plan.reset_after_first {
                            send.send_reset(h2::Reason::INTERNAL_ERROR);
                            false
                        } else {
                            let last = Bytes::from("event: done\ndata: {\"n\":2}\n\n");
                            send.send_data(last, true).is_ok()
                        }
                    }
                };
                if finished {
                    stream_counts
                        .streams_answered
                        .fetch_add(1, Ordering::SeqCst);
                }
            }
            open_here.fetch_sub(1, Ordering::SeqCst);
            stream_counts.open_streams.fetch_sub(1, Ordering::SeqCst);
        });
        if !going_away && plan.goaway_after.is_some_and(|after| streams >= after) {
            going_away = true;
            counts.goaways.fetch_add(1, Ordering::SeqCst);
            // GOAWAY, then (after a PING's round trip) GOAWAY naming the last stream
            // processed: streams above it are never served, the accepted ones run to
            // their end.
            connection.graceful_shutdown();
        }
    }
}

/// Sends `total` bytes of `x`, 16 KiB at a time, each only once the client's window has
/// room for it (so `bytes_sent` shows how far flow control let the body go).
async fn send_within_window(
    send: &mut h2::SendStream<Bytes>,
    total: usize,
    counts: &Counts,
) -> bool {
    const CHUNK: usize = 16 * 1024;
    let mut left = total;
    while left > 0 {
        let want = left.min(CHUNK);
        send.reserve_capacity(want);
        let granted = loop {
            match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => break n.min(want),
                _ => return false,
            }
        };
        if send
            .send_data(Bytes::from(vec![b'x'; granted]), granted == left)
            .is_err()
        {
            return false;
        }
        counts.bytes_sent.fetch_add(granted, Ordering::SeqCst);
        left -= granted;
    }
    true
}
