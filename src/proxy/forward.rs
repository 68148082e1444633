//! Phase 5: the send loop. Each attempt takes a current value from the credential's cache,
//! applies the scheme to a fresh copy of the request (so a replay is signed anew) and
//! sends it on this worker's upstream client; [`super::retry`] decides whether the first
//! answer is replayed; the answer goes on to [`super::deliver`]. On a route with several
//! targets, [`super::failover`] runs this loop once per target it tries.

use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

use super::deliver::Answer;
use super::retry::{Decision, classify};
use super::{Exchange, Proxy, ProxyError, ResponseBody, UpstreamResponse, answer_failed};
use crate::client::http2::Busy;
use crate::credentials::SharedCredential;
use crate::telemetry::AccessLog;

/// One upstream answer, with the credential value that was applied to its request.
struct Attempt {
    response: Response<UpstreamResponse>,
    credential: SharedCredential,
}

impl Proxy {
    /// Sends the request and delivers its answer (a route with one target).
    pub(super) async fn forward(
        &self,
        exchange: Exchange<'_>,
        log: &mut AccessLog<'_>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let answer = self.send_on_target(&exchange, log).await?;
        self.deliver(exchange, answer).await
    }

    /// Sends the request to the exchange's target; when the answer says the credential
    /// (or its signature) went bad, renews it and sends once more. The second answer is
    /// returned whatever it is. `log.attempts` counts the sends of the whole request.
    pub(super) async fn send_on_target(
        &self,
        exchange: &Exchange<'_>,
        log: &mut AccessLog<'_>,
    ) -> Result<Answer, ProxyError> {
        log.attempts += 1;
        let first = self.attempt(exchange, log).await?;
        let status = first.response.status();
        let scheme = &exchange.injector.scheme;
        let (answer, verdict) = classify(scheme, first.response, self.shared.upstream_timeout)
            .await
            .map_err(|e| answer_failed(exchange, "its answer could not be read", e.as_ref()))?;
        Ok(
            match self.decide(exchange, verdict, status, &first.credential) {
                Decision::Deliver => answer,
                Decision::Replay => {
                    drop(answer);
                    log.attempts += 1;
                    Answer::Streaming(self.attempt(exchange, log).await?.response)
                }
            },
        )
    }

    /// One try: a current credential value, applied afresh, and the upstream's answer.
    async fn attempt(
        &self,
        exchange: &Exchange<'_>,
        log: &mut AccessLog<'_>,
    ) -> Result<Attempt, ProxyError> {
        let (route, injector) = (exchange.route, exchange.injector);
        let value = injector
            .cached
            .get()
            .await
            .map_err(|cause| ProxyError::Credential {
                route: route.prefix.clone(),
                credential: injector.cached.name().to_string(),
                source_name: injector.cached.source().describe(),
                cause,
            })?;
        let body: &Bytes = &exchange.body;
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = exchange.head.method.clone();
        *request.uri_mut() = exchange.head.uri.clone();
        *request.headers_mut() = exchange.head.headers.clone();
        injector
            .scheme
            .apply(&mut request, body, &value)
            .map_err(|cause| ProxyError::Apply {
                route: route.prefix.clone(),
                credential: injector.cached.name().to_string(),
                cause,
            })?;
        let sent = Instant::now();
        let response = self.send(exchange, request).await?;
        log.upstream = Some(sent.elapsed());
        Ok(Attempt {
            response,
            credential: value,
        })
    }

    /// The request on this worker's client for the target (its own for a target with a
    /// client certificate), within `upstream_timeout`.
    async fn send(
        &self,
        exchange: &Exchange<'_>,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamResponse>, ProxyError> {
        let (route, target) = (exchange.route, exchange.target);
        let waited = self.shared.upstream_timeout;
        let timeout = || ProxyError::UpstreamTimeout {
            route: route.prefix.clone(),
            upstream: target.upstream_text(),
            waited,
        };
        let client = match &target.identity {
            None => self.shared.client.here(),
            // Built with the generation for every route that names one.
            Some(files) => self
                .shared
                .identity_clients
                .get(files)
                .expect("a client for every route's client certificate")
                .here(),
        };
        // Built where it is awaited: a future first bound to a local, then moved, is
        // stored twice in this one (1.8 KiB more to copy per request).
        let sent = tokio::time::timeout(
            waited,
            client.send(request, target.http2, self.shared.queue_timeout),
        )
        .await;
        match sent {
            Ok(Ok(sent)) => {
                if let Some(wait) = sent.stream_wait {
                    self.shared.metrics.stream_wait(&route.prefix, wait);
                }
                Ok(sent.response)
            }
            Ok(Err(error)) if is_timeout(error.as_ref()) => Err(timeout()),
            Ok(Err(error)) => match error.downcast::<Busy>() {
                Ok(busy) => {
                    // A wait that ended in a 503 is a wait too.
                    self.shared.metrics.stream_wait(&route.prefix, busy.waited);
                    Err(ProxyError::UpstreamBusy {
                        route: route.prefix.clone(),
                        upstream: target.upstream_text(),
                        busy: *busy,
                    })
                }
                Err(error) => Err(ProxyError::UpstreamUnreachable {
                    route: route.prefix.clone(),
                    upstream: target.upstream_text(),
                    cause: error,
                }),
            },
            Err(_) => Err(timeout()),
        }
    }
}

fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        current = e.source();
    }
    false
}
