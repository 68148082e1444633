//! The per-request pipeline. [`Proxy::handle`] runs once per request:
//!
//! 1. [`guard`]: refuse foreign `Host` names and cross-site browser requests.
//! 2. `HEAD` on any path is answered at once (Claude Code warms connections that way);
//!    `CONNECT` and `TRACE` are refused.
//! 3. [`route`]: longest prefix → upstream and credential, or 404.
//! 4. [`body`]: buffer the request body up to `max_body`, or 413.
//! 5. [`headers`]: strip client credentials and hop-by-hop headers.
//! 6. Attempt: get the credential from the cache, apply the scheme, send. If the scheme's
//!    classifier calls the answer an auth failure, drop it unseen, invalidate that value,
//!    and replay once with a fresh one; the second answer goes back whatever it is.
//! 7. Stream the response back frame by frame; nothing is buffered.

pub mod body;
pub mod client;
pub mod error;
pub mod guard;
pub mod headers;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

use crate::config::{Config, Route};
use crate::credentials::CredentialCache;
use crate::schemes::{Scheme, Verdict};
use crate::telemetry::AccessLog;
pub use client::UpstreamClient;
pub use error::ProxyError;
use guard::Guard;
use route::RouteTable;

/// What the client receives: the upstream's body as it streams, or one of ours.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

/// State shared by every listener.
#[derive(Debug)]
pub struct Shared {
    pub client: UpstreamClient,
    pub credentials: CredentialCache,
    pub max_body: usize,
    pub upstream_timeout: Duration,
}

impl Shared {
    pub fn new(config: &Config, client: UpstreamClient, credentials: CredentialCache) -> Self {
        Shared {
            client,
            credentials,
            max_body: config.max_body,
            upstream_timeout: config.upstream_timeout,
        }
    }
}

/// The proxy as one listener serves it: shared state plus that listener's routes.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    routes: RouteTable,
    guard: Guard,
}

impl Proxy {
    pub fn new(
        shared: Arc<Shared>,
        config: &Config,
        listener: &crate::config::Listener,
        bound: SocketAddr,
    ) -> Self {
        Proxy {
            shared,
            routes: RouteTable::new(listener.routes.clone()),
            guard: Guard::new(config.guard.clone(), bound),
        }
    }

    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let mut log = AccessLog::start(request.method(), request.uri());
        let response = match self.serve(request, &mut log).await {
            Ok(response) => response,
            Err(error) => {
                log.error = Some(error.side());
                error.into_response()
            }
        };
        log.finish(response.status(), started);
        response
    }

    async fn serve<'a>(
        &'a self,
        request: Request<Incoming>,
        log: &mut AccessLog<'a>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (mut parts, body) = request.into_parts();
        self.guard.check(&parts)?;
        if parts.method == Method::HEAD {
            return Ok(Response::new(Either::Right(Full::new(Bytes::new()))));
        }
        // CONNECT would turn credproxy into a tunnel; TRACE would echo the request back.
        if parts.method == Method::CONNECT || parts.method == Method::TRACE {
            return Err(ProxyError::MethodNotAllowed {
                method: parts.method.to_string(),
            });
        }
        let route = self
            .routes
            .find(parts.uri.path())
            .ok_or_else(|| ProxyError::NoRoute {
                path: parts.uri.path().chars().take(200).collect(),
                prefixes: self.routes.prefixes().to_string(),
            })?;
        log.route = Some(&route.prefix);
        log.credential = Some(&self.shared.credentials.slot(route.credential).name);
        if let Some(reason) = &route.disabled {
            return Err(ProxyError::RouteDisabled {
                route: route.prefix.clone(),
                reason: reason.clone(),
            });
        }
        let body = body::read_limited(&parts.headers, body, self.shared.max_body).await?;
        headers::strip_request(&mut parts.headers);
        self.forward(route, parts, body, log).await
    }

    /// Sends the request, and once more if the first answer was an auth failure.
    async fn forward(
        &self,
        route: &Route,
        parts: http::request::Parts,
        body: Bytes,
        log: &mut AccessLog<'_>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let shared = &*self.shared;
        let scheme = &shared.credentials.slot(route.credential).scheme;
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let uri = route::upstream_uri(route, &path_and_query).map_err(|e| {
            ProxyError::UpstreamUnreachable {
                route: route.prefix.clone(),
                upstream: route.upstream.to_string(),
                cause: format!("the upstream URI could not be formed: {e}"),
            }
        })?;
        let credential_error = |cause| {
            let slot = shared.credentials.slot(route.credential);
            ProxyError::Credential {
                route: route.prefix.clone(),
                credential: slot.name.clone(),
                source_name: slot.source.describe(),
                cause,
            }
        };
        for attempt in 1..=2u32 {
            log.attempts = attempt;
            let credential = shared
                .credentials
                .get(route.credential)
                .await
                .map_err(credential_error)?;
            let mut upstream_request = Request::new(Full::new(body.clone()));
            *upstream_request.method_mut() = parts.method.clone();
            *upstream_request.uri_mut() = uri.clone();
            *upstream_request.headers_mut() = parts.headers.clone();
            scheme
                .apply(&mut upstream_request, &body, &credential)
                .map_err(|e| ProxyError::Apply {
                    route: route.prefix.clone(),
                    credential: shared.credentials.slot(route.credential).name.clone(),
                    cause: e.0,
                })?;
            let sent = Instant::now();
            let response = self.send(route, upstream_request).await?;
            log.upstream = Some(sent.elapsed());
            if attempt == 2 {
                return Ok(deliver(response));
            }
            let (response, verdict) =
                classify(scheme, response)
                    .await
                    .map_err(|e| ProxyError::UpstreamUnreachable {
                        route: route.prefix.clone(),
                        upstream: route.upstream.to_string(),
                        cause: format!("its answer could not be read: {}", error_chain(&e)),
                    })?;
            match verdict {
                Verdict::Deliver | Verdict::Inspect { .. } => return Ok(response),
                Verdict::Resign => {
                    tracing::debug!(route = %route.prefix, "upstream rejected the signature; signing again");
                }
                Verdict::Refresh => {
                    tracing::info!(route = %route.prefix, credential = %shared.credentials.slot(route.credential).name,
                        status = response.status().as_u16(), "upstream rejected the credential; refreshing and replaying once");
                    shared
                        .credentials
                        .invalidate(route.credential, &credential)
                        .await;
                }
            }
        }
        unreachable!("the second attempt always returns")
    }

    async fn send(
        &self,
        route: &Route,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let waited = self.shared.upstream_timeout;
        match tokio::time::timeout(waited, self.shared.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if is_timeout(&error) => Err(ProxyError::UpstreamTimeout {
                route: route.prefix.clone(),
                upstream: route.upstream.to_string(),
                waited,
            }),
            Ok(Err(error)) => Err(ProxyError::UpstreamUnreachable {
                route: route.prefix.clone(),
                upstream: route.upstream.to_string(),
                cause: error_chain(&error),
            }),
            Err(_) => Err(ProxyError::UpstreamTimeout {
                route: route.prefix.clone(),
                upstream: route.upstream.to_string(),
                waited,
            }),
        }
    }
}

/// Applies the scheme's classifier to a first answer. When it asks to see the body and the
/// body is small and of known length (auth errors are), reads it; the returned response
/// then carries exactly those bytes. Anything larger streams on untouched.
async fn classify(
    scheme: &Scheme,
    response: Response<Incoming>,
) -> Result<(Response<ResponseBody>, Verdict), hyper::Error> {
    let verdict = scheme.classify(response.status(), response.headers());
    let Verdict::Inspect { max_bytes } = verdict else {
        return Ok((deliver(response), verdict));
    };
    let small = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|len| len <= max_bytes);
    if !small {
        return Ok((deliver(response), Verdict::Deliver));
    }
    let (mut parts, body) = response.into_parts();
    let bytes = body.collect().await?.to_bytes();
    let verdict = match scheme.classify_body(parts.status, &parts.headers, &bytes) {
        Verdict::Inspect { .. } => Verdict::Deliver,
        verdict => verdict,
    };
    headers::strip_response(&mut parts.headers);
    Ok((
        Response::from_parts(parts, Either::Right(Full::new(bytes))),
        verdict,
    ))
}

fn deliver(response: Response<Incoming>) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_response(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
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

/// `client error (Connect): tcp connect error: Connection refused (os error 111)`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        current = e.source();
    }
    text
}
