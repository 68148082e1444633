//! The usage tap, in the respond phase: an admitted model request's answer is metered as
//! the client gets it — a streamed one by an [`Observer`] that charges at the stream's end
//! (complete, or cut short: counted up to where it stopped), a whole one at once — and
//! its ticket finished with what it used.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::Either;

use super::ResponseBody;
use super::stream::Observer;
use crate::telemetry::Cut;
use crate::usage::meter::Meter;
use crate::usage::{Outcome, Ticket};

/// Answer headers that carry the upstream's id for a request, by provider.
/// Looked for in one pass over the answer's headers (a lookup by name per entry would
/// hash each name on every answer).
const REQUEST_ID_HEADERS: [&str; 5] = [
    "request-id",
    "x-amzn-requestid",
    "apim-request-id",
    "x-request-id",
    "x-goog-request-id",
];

#[derive(Debug)]
struct Tap {
    meter: Meter,
    ticket: Ticket,
    outcome: Outcome,
}

impl Observer for Tap {
    fn chunk(&mut self, data: &Bytes) {
        self.meter.feed(data);
    }

    fn end(self: Box<Self>, cut: Option<Cut>) {
        let Tap {
            meter,
            ticket,
            mut outcome,
        } = *self;
        outcome.tokens = meter.finish();
        outcome.cut = cut.map(Cut::as_str);
        ticket.finish(outcome);
    }
}

/// Meters `response` for `ticket`: now for a whole body, at its end for a streamed one.
pub(super) fn charge(response: &mut Response<ResponseBody>, ticket: Ticket, retried: bool) {
    let mut meter = Meter::new(response.headers());
    let outcome = Outcome {
        status: response.status().as_u16(),
        tokens: None,
        retried,
        upstream_request_id: response
            .headers()
            .iter()
            .find(|(name, _)| REQUEST_ID_HEADERS.contains(&name.as_str()))
            .and_then(|(_, id)| id.to_str().ok())
            .map(|id| id.chars().take(200).collect()),
        cut: None,
    };
    match response.body_mut() {
        Either::Left(streaming) => streaming.observe(Box::new(Tap {
            meter,
            ticket,
            outcome,
        })),
        Either::Right(whole) => {
            // A `Full` body is ready at once: its one frame is read from a copy.
            let mut copy = whole.clone();
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut copy).poll_frame(&mut cx)
                && let Some(data) = frame.data_ref()
            {
                meter.feed(data);
            }
            ticket.finish(Outcome {
                tokens: meter.finish(),
                ..outcome
            });
        }
    }
}
