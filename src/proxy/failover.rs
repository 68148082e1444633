//! Phases 4 to 6 on a route with several targets: the request goes to one target after
//! another until one serves it. Each attempt picks a target by the route's `strategy` and
//! its targets' health ([`super::targets`]), prepares the request for that target (its
//! upstream, its translation and model names) and sends it with the one-target send loop
//! ([`Proxy::send_on_target`], where a 401 is refreshed and replayed inside the target).
//! [`super::retry`] says whether the answer is the target's failure; then nothing of it
//! has reached the client, the target is cooled down and the next one tried — never a
//! target twice, at most `max_attempts` in all. A streamed answer's head is held until its
//! first event, since an `error` event first is a failure too; once an answer is
//! delivered, the request is done whatever follows.
//!
//! The client gets the serving target's answer as it came, with `x-credproxy-target`.
//! When no further target can be tried, it gets the last answer (with the shortest wait
//! until a target is tried again as `retry-after` when all are cooling), or a 503 naming
//! each target's state.

use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Either};

use super::deliver::Answer;
use super::prepare::Prepared;
use super::retry::{Failure, Framing, cooldown};
use super::target::{Several, Target};
use super::targets::{Claim, RouteHealth};
use super::{Exchange, Proxy, ProxyError, ResponseBody, UpstreamResponse, answer_failed};
use crate::config::{ResolvedRoute, ResolvedTarget};
use crate::telemetry::AccessLog;
use crate::telemetry::metrics::{FailoverLabels, TargetLabels};

/// The header naming the target whose answer the client got.
const TARGET_HEADER: &str = "x-credproxy-target";
/// The most of a streamed answer held to see its first event.
const HOLD_LIMIT: usize = 64 * 1024;

/// What one target made of the request.
enum Tried {
    Served(Answer),
    /// An answer that is the target's failure; it reaches the client only if no other
    /// target can be tried.
    Failed(Failure, Answer),
}

impl Proxy {
    /// Phases 4-6 for a route with several targets, once per target tried, from the
    /// request as the client sent it (`head`, `body`); called after phase 3 in place of
    /// `prepare` + `forward`.
    pub(super) async fn fail_over<'a>(
        &'a self,
        head: http::request::Parts,
        body: Bytes,
        several: Several<'a>,
        log: &mut AccessLog<'a>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let Several {
            route,
            health,
            mut slot,
        } = several;
        let (mut tried, mut tries) = (0u64, 0);
        let mut next = health.pick(route, tried, Instant::now());
        loop {
            let Some(mut claim) = next.take() else {
                return Err(none_left(route, health));
            };
            tried |= 1 << claim.index;
            tries += 1;
            let target = &route.targets[claim.index];
            let injector = &self.shared.injectors[target.credential];
            log.credential = Some(injector.cached.name());
            let upstream = target.upstream.as_ref().expect("picked targets can serve");
            let chosen = Target {
                route,
                target,
                injector,
                upstream,
                slot,
            };
            let exchange = match self.prepare(head.clone(), body.clone(), chosen)? {
                Prepared::Answer(response) => return Ok(tagged(response, claim, target, log)),
                Prepared::Send(exchange) => exchange,
            };
            let (failure, answer) = match self.try_target(&exchange, log).await {
                Ok(Tried::Served(answer)) => {
                    claim.succeeded();
                    self.count(&exchange, "served");
                    let response = self.deliver(exchange, answer).await?;
                    return Ok(tagged(response, claim, target, log));
                }
                Ok(Tried::Failed(failure, answer)) => (failure, Ok(answer)),
                Err(error) => match Failure::of_error(&error) {
                    Some(failure) => (failure, Err(error)),
                    None => return Err(error),
                },
            };
            let said = answer.as_ref().ok().map(|a| a.head().1);
            let max_cooldown = route.failover.max_cooldown;
            claim.failed(last_error(failure, &answer), |failures| {
                cooldown(said, failures, max_cooldown, SystemTime::now())
            });
            self.count(&exchange, failure.label());
            if tries < route.failover.max_attempts {
                next = health.pick(route, tried, Instant::now());
            }
            if let Some(to) = &next {
                self.failed_over(&exchange, &claim, to, failure);
                drop(answer);
                slot = exchange.slot;
                continue;
            }
            // Nothing left to try: this answer (or the targets' state) is the client's.
            return match answer {
                Ok(answer) => {
                    let (_, retry_after) = health.describe(route, Instant::now());
                    let mut response = self.deliver(exchange, answer).await?;
                    if let Some(wait) = retry_after {
                        let seconds = super::error::retry_after_seconds(wait);
                        response
                            .headers_mut()
                            .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
                    }
                    Ok(tagged(response, claim, target, log))
                }
                Err(_) => Err(none_left(route, health)),
            };
        }
    }

    /// Sends to one target and judges what came back; a successful stream's head is held
    /// until its first event.
    async fn try_target(
        &self,
        exchange: &Exchange<'_>,
        log: &mut AccessLog<'_>,
    ) -> Result<Tried, ProxyError> {
        let answer = self.send_on_target(exchange, log).await?;
        let (status, headers) = answer.head();
        if let Some(failure) = Failure::of_answer(status, headers) {
            return Ok(Tried::Failed(failure, answer));
        }
        let framing = Framing::of(headers).filter(|_| status.is_success());
        let (response, framing) = match (answer, framing) {
            (Answer::Streaming(response), Some(framing)) => (response, framing),
            (answer, _) => return Ok(Tried::Served(answer)),
        };
        let (response, failed) = self
            .hold_first_event(response, framing)
            .await
            .map_err(|e| {
                answer_failed(
                    exchange,
                    "its stream failed before its first event",
                    e.as_ref(),
                )
            })?;
        Ok(if failed {
            Tried::Failed(Failure::ErrorEvent, Answer::Streaming(response))
        } else {
            Tried::Served(Answer::Streaming(response))
        })
    }

    /// Reads a streamed answer up to its first whole event (at most [`HOLD_LIMIT`], within
    /// `upstream_timeout`) and says whether that event is a failure; the answer goes on
    /// with those bytes first.
    async fn hold_first_event(
        &self,
        response: Response<UpstreamResponse>,
        framing: Framing,
    ) -> Result<(Response<UpstreamResponse>, bool), super::stream::BoxError> {
        let (parts, mut body) = response.into_parts();
        let mut head = BytesMut::new();
        let deadline = tokio::time::Instant::now() + self.shared.upstream_timeout;
        while !framing.first_complete(&head) && head.len() < HOLD_LIMIT {
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .map_err(|_| "no first event within `upstream_timeout`")?;
            match frame {
                Some(frame) => match frame?.into_data() {
                    Ok(data) => head.extend_from_slice(&data),
                    // Trailers before the first event: nothing more to hold.
                    Err(_) => break,
                },
                None => break,
            }
        }
        let failed = framing.first_failed(&head);
        let body = UpstreamResponse::Held(Some(head.freeze()), Box::new(body));
        Ok((Response::from_parts(parts, body), failed))
    }

    fn count(&self, exchange: &Exchange<'_>, outcome: &'static str) {
        self.shared
            .metrics
            .target_requests
            .get_or_create(&TargetLabels {
                route: exchange.route.prefix.clone(),
                target: exchange.target.name.clone(),
                outcome,
            })
            .inc();
    }

    /// The request leaves the exchange's target for `to`'s.
    fn failed_over(&self, exchange: &Exchange<'_>, from: &Claim, to: &Claim, why: Failure) {
        let route = exchange.route;
        let to = &route.targets[to.index].name;
        from.count_failover();
        tracing::info!(route = %route.prefix, from = %exchange.target.name, to = %to,
            reason = why.label(), "target failed before answering; trying the next target");
        self.shared
            .metrics
            .failovers
            .get_or_create(&FailoverLabels {
                route: route.prefix.clone(),
                from: exchange.target.name.clone(),
                to: to.clone(),
                reason: why.label(),
            })
            .inc();
    }
}

/// The 503 when no target can be tried (any longer): each target's state.
fn none_left(route: &ResolvedRoute, health: &RouteHealth) -> ProxyError {
    let (states, retry_after) = health.describe(route, Instant::now());
    ProxyError::TargetsUnavailable {
        route: route.prefix.clone(),
        states,
        retry_after,
    }
}

/// The last error of a target, for `/status` and the 503: the status (and Bedrock's error
/// type), or credproxy's own error.
fn last_error(failure: Failure, answer: &Result<Answer, ProxyError>) -> String {
    match answer {
        Ok(answer) => {
            let (status, headers) = answer.head();
            let kind = headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(|t| format!(" {}", t.split(':').next().unwrap_or(t)))
                .unwrap_or_default();
            match failure {
                Failure::ErrorEvent => "an `error` event first in its stream".to_string(),
                _ => format!("{}{kind}", status.as_u16()),
            }
        }
        Err(error) => error.to_string(),
    }
}

/// The answer as the client gets it from a route with several targets: named by
/// `x-credproxy-target` (and in the access line), its target counted in flight until the
/// answer ends.
fn tagged<'a>(
    mut response: Response<ResponseBody>,
    claim: Claim,
    target: &'a ResolvedTarget,
    log: &mut AccessLog<'a>,
) -> Response<ResponseBody> {
    log.served_by = Some(&target.name);
    // Names are checked to be header-safe when the config is read.
    if let Ok(value) = HeaderValue::from_str(&target.name) {
        response.headers_mut().insert(TARGET_HEADER, value);
    }
    if let Either::Left(streaming) = response.body_mut() {
        streaming.observe(Box::new(claim));
    }
    response
}

impl Answer {
    /// The answer's status and headers.
    pub(super) fn head(&self) -> (StatusCode, &HeaderMap) {
        match self {
            Answer::Streaming(response) => (response.status(), response.headers()),
            Answer::Read(parts, _) => (parts.status, &parts.headers),
        }
    }
}
