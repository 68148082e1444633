//! The request body, buffered whole (up to a limit) because a signature needs its hash and
//! a replay needs its bytes.
//!
//! A body over the limit is read to its end and thrown away (up to [`DRAIN_CAP`] more bytes)
//! before the 413 goes out: an HTTP/1 client that is still writing when the server closes
//! sees a broken pipe instead of the 413 that explains it.
//!
//! An HTTP/2 request refused before its body was read (401, 403, 404, 503) is answered at
//! once and its body read on and thrown away in the background, within the same bounds:
//! dropping it would reset the stream (`RST_STREAM`), and curl, Node and others then
//! report a stream error instead of the answer.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::error::ProxyError;

/// How much of an oversized body is drained past the limit before giving up on it.
const DRAIN_CAP: u64 = 64 * 1024 * 1024;
/// How long draining an oversized body may take.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads the whole body, refusing more than `limit` bytes (413), a client that sends
/// nothing for `stall`, and a body that takes longer than ten times that in all (408): a
/// trickled upload must not hold its connection and its place among the route's
/// requests in flight for good.
pub async fn read_limited(
    headers: &HeaderMap,
    mut body: Incoming,
    limit: usize,
    stall: Duration,
) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit_u64 = limit as u64;
    if let Some(len) = declared
        && len > limit_u64
    {
        if len <= limit_u64 + DRAIN_CAP {
            drain(body, len).await;
        }
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    let deadline = tokio::time::Instant::now() + stall * 10;
    loop {
        let frame = body.frame();
        tokio::pin!(frame);
        // A small body is usually there with its head: a timer only when it has to wait.
        let next = match ready_now(frame.as_mut()).await {
            Some(next) => next,
            None => {
                let wait =
                    stall.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                let Ok(next) = tokio::time::timeout(wait, frame).await else {
                    return Err(ProxyError::BodyStalled { waited: stall });
                };
                next
            }
        };
        let Some(frame) = next else {
            break;
        };
        let frame = frame.map_err(|e| ProxyError::BodyUnreadable {
            cause: e.to_string(),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > limit_u64 {
            drain(
                body,
                limit_u64 + DRAIN_CAP - total.min(limit_u64 + DRAIN_CAP),
            )
            .await;
            return Err(ProxyError::BodyTooLarge { limit });
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        // The common case for small JSON bodies: no copy at all.
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut whole = BytesMut::with_capacity(total as usize);
            for chunk in chunks {
                whole.extend_from_slice(&chunk);
            }
            whole.freeze()
        }
    })
}

/// The future's output if it is ready at the first poll (its waker is then registered).
async fn ready_now<F: std::future::Future>(mut future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match future.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Reads and discards, on its own task, the rest of an HTTP/2 request body that the answer
/// did not need, so its stream ends cleanly when the client has sent it.
pub fn read_on_after_answer(body: Incoming) {
    if http_body::Body::is_end_stream(&body) {
        return;
    }
    tokio::spawn(drain(body, DRAIN_CAP));
}

/// Reads and discards up to `budget` bytes of what is left of a refused body.
async fn drain(mut body: Incoming, budget: u64) {
    let discard = async {
        let mut left = budget;
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            if len >= left {
                return;
            }
            left -= len;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}
