//! The upstream's response body on its way to the client: passed through frame by frame,
//! holding the route's in-flight slot until it ends, and ended by credproxy when the route
//! has a `stream_idle_timeout` and the upstream sends nothing for that long (an SSE stream
//! gets a final `error` event in the Anthropic shape, so SDKs report why it stopped).
//! When it ends — complete, cut by the upstream, or dropped because the client went
//! away — its access line is written with the bytes sent and who cut it short.
//!
//! This is the answer-side tap: an [`Observer`] is shown every chunk the client is given
//! and told once how the answer ended, without holding or changing a byte. The access
//! line is the first observer; usage counting and others hook in the same way
//! (`UpstreamBody::observe`, where the proxy's deliver phase builds the body).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use crate::telemetry::metrics::TruncatedLabels;
use crate::telemetry::{Cut, Metrics, Pending};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub struct UpstreamBody {
    inner: crate::client::Body,
    _slot: Option<OwnedSemaphorePermit>,
    idle: Option<Idle>,
    ended: bool,
    /// Bedrock's event stream re-emitted as SSE (a translating route).
    events: Option<super::translate::eventstream::EventStreamToSse>,
    /// Told of every chunk and of the end; emptied when the end is reported.
    observers: Vec<Box<dyn Observer>>,
    /// Who cut the answer short, once known (credproxy ending a stalled stream counts as
    /// the upstream).
    cut: Option<Cut>,
}

/// Watches an answer on its way to the client: each chunk the client is given, then once
/// how it ended (`None`: complete). Must not block: it runs inside the body's poll.
pub trait Observer: Send + std::fmt::Debug {
    fn chunk(&mut self, data: &Bytes);
    fn end(self: Box<Self>, cut: Option<Cut>);
}

/// The access line (and the truncation metric), written when the answer ends.
#[derive(Debug)]
struct AccessLine {
    line: Pending,
    metrics: Arc<Metrics>,
    bytes: u64,
}

impl Observer for AccessLine {
    fn chunk(&mut self, data: &Bytes) {
        self.bytes += data.len() as u64;
    }

    fn end(self: Box<Self>, cut: Option<Cut>) {
        if let Some(by) = cut {
            let route = self.line.route.clone().unwrap_or_else(|| "-".to_string());
            self.metrics
                .truncated
                .get_or_create(&TruncatedLabels {
                    route,
                    by: by.as_str(),
                })
                .inc();
        }
        self.line.finish(self.bytes, cut);
    }
}

#[derive(Debug)]
struct Idle {
    after: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether the timer runs: from the first poll that finds nothing, so a client that
    /// stops reading for a while does not make the upstream look stalled.
    waiting: bool,
    sse: bool,
}

/// The upstream went quiet for longer than the route allows.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {}; credproxy ended the response (`stream_idle_timeout`)", humantime::format_duration(*.0))]
pub struct StreamStalled(Duration);

impl UpstreamBody {
    pub fn new(
        inner: crate::client::Body,
        slot: Option<OwnedSemaphorePermit>,
        idle_timeout: Option<Duration>,
        sse: bool,
    ) -> Self {
        UpstreamBody {
            inner,
            _slot: slot,
            idle: idle_timeout.map(|after| Idle {
                after,
                timer: Box::pin(tokio::time::sleep(after)),
                waiting: false,
                sse,
            }),
            ended: false,
            events: None,
            observers: Vec::new(),
            cut: None,
        }
    }

    /// Adds an observer of this answer.
    pub fn observe(&mut self, observer: Box<dyn Observer>) {
        self.observers.push(observer);
    }

    /// Writes `line` (and counts a truncation) when the answer ends.
    pub fn report_at_end(&mut self, line: Pending, metrics: Arc<Metrics>) {
        self.observe(Box::new(AccessLine {
            line,
            metrics,
            bytes: 0,
        }));
    }

    fn report(&mut self, cut: Option<Cut>) {
        let cut = self.cut.or(cut);
        for observer in std::mem::take(&mut self.observers) {
            observer.end(cut);
        }
    }

    /// The body's bytes are Bedrock event-stream frames, to be sent on as SSE.
    pub fn with_event_stream(mut self) -> Self {
        self.events = Some(super::translate::eventstream::EventStreamToSse::new());
        if let Some(idle) = &mut self.idle {
            idle.sse = true;
        }
        self
    }
}

impl Drop for UpstreamBody {
    /// Dropped before its end: the client went away (the connection closed, or its HTTP/2
    /// stream was reset).
    fn drop(&mut self) {
        let cut = (!self.is_end_stream()).then_some(Cut::Client);
        self.report(cut);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.as_mut().poll_body(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    for observer in &mut self.observers {
                        observer.chunk(data);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => self.report(Some(Cut::Upstream)),
            Poll::Ready(None) => self.report(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.events.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.events.is_some() {
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

impl UpstreamBody {
    /// The next frame as the client gets it (translated, or an idle-timeout ending);
    /// [`Body::poll_frame`] counts it for the access line.
    fn poll_body(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(frame)) => {
                if let Some(idle) = &mut self.idle {
                    idle.waiting = false;
                }
                let this = &mut *self;
                let (Some(events), Ok(frame)) = (&mut this.events, &frame) else {
                    return Poll::Ready(Some(frame));
                };
                let Some(data) = frame.data_ref() else {
                    // Trailers of a translated stream are not the client's.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                };
                let sse = events.feed(data);
                if events.finished {
                    this.ended = true;
                }
                if sse.is_empty() {
                    // No frame completed yet: read on.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(Frame::data(sse))))
            }
            Poll::Ready(None) => {
                let rest = self.events.as_mut().map(|e| e.finish()).unwrap_or_default();
                self.ended = true;
                if rest.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(rest))))
                }
            }
            Poll::Pending => {
                let Some(idle) = &mut self.idle else {
                    return Poll::Pending;
                };
                if !idle.waiting {
                    idle.waiting = true;
                    let deadline = tokio::time::Instant::now() + idle.after;
                    idle.timer.as_mut().reset(deadline);
                }
                if idle.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let stalled = StreamStalled(idle.after);
                let sse = idle.sse;
                self.ended = true;
                self.cut = Some(Cut::Upstream);
                if sse {
                    let event = serde_json::json!({
                        "type": "error",
                        "error": {"type": "timeout_error", "message": format!("credproxy: {stalled}")},
                    });
                    let frame = format!("event: error\ndata: {event}\n\n");
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(frame)))))
                } else {
                    Poll::Ready(Some(Err(Box::new(stalled))))
                }
            }
        }
    }
}
