//! The last phase, for every request however it ended: an error becomes its answer in the
//! Anthropic shape (a caller refused on a Bedrock-mode route gets 401, which Claude Code
//! shows at once), an HTTP/2 request body left unread is drained after the answer (so the
//! client sees the answer, not a reset stream), the request is counted, and its access
//! line is written — now for an answer credproxy made, at the stream's end for one that
//! streams.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::{Proxy, ProxyError, ResponseBody, body, usage_tap};
use crate::callers::CallerError;
use crate::telemetry::AccessLog;
use crate::usage::{Facts, Ticket};

impl Proxy {
    pub(super) fn respond(
        &self,
        outcome: Result<Response<ResponseBody>, ProxyError>,
        mut log: AccessLog<'_>,
        started: Instant,
        version: Version,
        unread: Option<Incoming>,
        ticket: Option<Ticket>,
    ) -> Response<ResponseBody> {
        let mut response = match outcome {
            Ok(response) => response,
            Err(error) => {
                log.error = Some(error.side());
                self.record_refusal(&error, &log);
                let refused = matches!(error, ProxyError::CallerRefused(_));
                let mut response = error.into_response();
                if refused && self.bedrock_clients(log.path()) {
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                }
                response
            }
        };
        if let Some(unread) = unread
            && version == Version::HTTP_2
        {
            body::read_on_after_answer(unread);
        }
        if let Some(ticket) = ticket {
            usage_tap::charge(&mut response, ticket, log.attempts > 1);
        }
        let status = response.status();
        self.shared.metrics.request(
            log.route,
            status.as_u16(),
            log.attempts,
            started.elapsed(),
            log.upstream,
        );
        match response.body_mut() {
            Either::Left(streaming) => streaming.report_at_end(
                log.pending(status, started),
                Arc::clone(&self.shared.metrics),
            ),
            Either::Right(whole) => {
                log.finish(status, started, http_body::Body::size_hint(whole).lower())
            }
        }
        response
    }
}

impl Proxy {
    /// A model request whose caller is refused gets a usage record too, naming the route
    /// from the path (a quota's refusal is recorded where it is decided, with the whole
    /// request's facts).
    fn record_refusal(&self, error: &ProxyError, log: &AccessLog<'_>) {
        let (named, groups) = match error {
            ProxyError::Caller(CallerError::Expired { subject }) => (subject.clone(), Vec::new()),
            ProxyError::Caller(_) => (None, Vec::new()),
            ProxyError::CallerRefused(refusal) => (
                Some(refusal.who.usage_name.clone()),
                refusal.who.groups.clone(),
            ),
            _ => return,
        };
        if *log.method() != http::Method::POST {
            return;
        }
        let Some(route) = self.route_of(log.path()) else {
            return;
        };
        let facts = Facts {
            caller: named.unwrap_or_else(|| "unknown".to_string()),
            groups,
            tag: None,
            route,
            model: None,
        };
        self.shared.usage.refused(
            &facts,
            error.status().as_u16(),
            std::time::SystemTime::now(),
        );
    }
}

/// A JSON answer of credproxy's own making (a translated route's answers).
pub(super) fn json(status: StatusCode, json: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(json.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
