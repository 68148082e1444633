//! The per-request pipeline. [`Proxy::handle`] runs once per request:
//!
//! 1. [`guard`]: refuse foreign `Host` names and cross-site browser requests; with
//!    `[callers]`, the caller's token is checked (401) and `email_domains` applied (403).
//! 2. `HEAD` on any path is answered at once (Claude Code warms connections that way);
//!    `CONNECT` and `TRACE` are refused.
//! 3. [`route`]: longest prefix → upstream and credential, or 404; the route's `groups`
//!    decide whether this caller may use it (403).
//! 4. [`body`]: buffer the request body up to `max_body`, or 413.
//! 5. `headers`: strip client credentials and hop-by-hop headers.
//! 6. Forward: one attempt — get the credential from its cache, apply the scheme, send.
//!    If the scheme's classifier calls the answer an auth failure, it is dropped unseen,
//!    the value invalidated (or only the signature renewed), and the request replayed
//!    once; the second answer goes back whatever it is.
//! 7. Stream the response back frame by frame; nothing is buffered.

pub mod body;
pub mod error;
pub mod guard;
pub mod route;
pub mod stream;
pub mod translate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

use crate::callers::Callers;
use crate::client::Body as UpstreamResponse;
pub use crate::client::{Clients, UpstreamClient};
use crate::config::{Resolved, ResolvedRoute};
use crate::credentials::{Cached, SharedCredential};
use crate::headers;
use crate::schemes::{Scheme, Verdict};
use crate::telemetry::{AccessLog, Metrics};
pub use error::ProxyError;
use guard::Guard;
use route::RouteTable;
use stream::UpstreamBody;
use tokio::sync::OwnedSemaphorePermit;

/// What the client receives: the upstream's body as it streams, or one of ours.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// A credential as requests use it: its cached value and how it goes onto a request.
#[derive(Debug)]
pub struct Credential {
    pub cached: Arc<Cached>,
    pub scheme: Scheme,
}

/// State shared by every listener.
#[derive(Debug)]
pub struct Shared {
    /// One upstream client per serving worker.
    pub client: Clients,
    /// Same order as the config's credentials; routes refer to them by index.
    pub credentials: Vec<Credential>,
    pub max_body: usize,
    pub upstream_timeout: Duration,
    pub body_read_timeout: Duration,
    pub queue_timeout: Duration,
    /// `[callers]`: who may use the proxy listeners (`None`: whoever reaches them).
    pub callers: Option<Arc<Callers>>,
    pub metrics: Arc<Metrics>,
    /// Clients that present a route's `client_cert` (upstream mTLS), by certificate files.
    pub identity_clients: std::collections::HashMap<crate::config::TlsFiles, Clients>,
}

impl Shared {
    /// `callers` is built by the caller of this so that a reload can keep the identity
    /// provider's keys and the validated tokens when `[callers]` did not change.
    pub fn new(
        resolved: &Resolved,
        client: Clients,
        callers: Option<Arc<Callers>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Shared {
            callers,
            metrics,
            identity_clients: Default::default(),
            client,
            credentials: resolved
                .credentials
                .iter()
                .map(|c| Credential {
                    cached: Arc::clone(&c.cached),
                    scheme: c.scheme.clone(),
                })
                .collect(),
            max_body: resolved.config.max_body,
            upstream_timeout: resolved.config.upstream_timeout,
            body_read_timeout: resolved.config.limits.body_read_timeout,
            queue_timeout: resolved.config.limits.queue_timeout,
        }
    }
}

/// The proxy as one listener serves it: shared state plus that listener's routes.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    routes: RouteTable,
    guard: Guard,
    /// Prefixes of the routes whose clients are Claude Code in Bedrock mode, which takes
    /// any 403 for an expired AWS credential and retries it for minutes; a caller refused
    /// there gets 401 with `x-should-retry: false` instead, which it shows at once
    /// (docs/research/claude-code-refusals.md).
    bedrock_routes: Vec<String>,
}

/// One upstream answer, with the credential value that was applied to its request.
struct Attempt {
    response: Response<UpstreamResponse>,
    credential: SharedCredential,
}

impl Proxy {
    /// `previous`: the proxy this one replaces on a reload, whose routes' in-flight slots
    /// carry over.
    pub fn new(
        shared: Arc<Shared>,
        resolved: &Resolved,
        routes: Vec<ResolvedRoute>,
        bound: SocketAddr,
        previous: Option<&Proxy>,
    ) -> Self {
        let bedrock_routes = routes
            .iter()
            .filter(|r| {
                matches!(
                    resolved.client_env(r),
                    Some(crate::kinds::ClientEnv::Bedrock { .. })
                )
            })
            .map(|r| r.prefix.clone())
            .collect();
        Proxy {
            shared,
            routes: RouteTable::inheriting(routes, previous.map(|p| &p.routes)),
            guard: Guard::new(resolved.config.guard.clone(), bound),
            bedrock_routes,
        }
    }

    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let mut log = AccessLog::start(request.method(), request.uri());
        let version = request.version();
        let (parts, request_body) = request.into_parts();
        let mut request_body = Some(request_body);
        let mut response = match self.serve(parts, &mut request_body, &mut log).await {
            Ok(response) => response,
            Err(error) => {
                log.error = Some(error.side());
                let refused = matches!(error, ProxyError::CallerRefused(_));
                let mut response = error.into_response();
                if refused && self.bedrock_clients(log.path()) {
                    *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                }
                response
            }
        };
        if let Some(unread) = request_body
            && version == http::Version::HTTP_2
        {
            body::read_on_after_answer(unread);
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

    /// Answers a request; `request_body` is taken when it is read (a refusal leaves it).
    async fn serve<'a>(
        &'a self,
        mut parts: http::request::Parts,
        request_body: &mut Option<Incoming>,
        log: &mut AccessLog<'a>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        self.guard.check(&parts)?;
        let caller = match &self.shared.callers {
            Some(callers) => {
                // Boxed: a first token may fetch the identity provider's keys, a large
                // future that requests without callers should not carry.
                let caller = Box::pin(callers.authenticate(&parts.headers))
                    .await
                    .map_err(|e| self.caller_error(probe(&parts), ProxyError::Caller(e)))?;
                log.caller = Some(Arc::clone(&caller.label));
                callers
                    .admit(&caller)
                    .map_err(|e| self.caller_error(false, ProxyError::CallerRefused(e)))?;
                Some(caller)
            }
            None => None,
        };
        // CONNECT would turn credproxy into a tunnel; TRACE would echo the request back.
        if parts.method == Method::CONNECT || parts.method == Method::TRACE {
            return Err(ProxyError::MethodNotAllowed {
                method: parts.method.to_string(),
            });
        }
        if let Some(problem) = route::unsafe_path(parts.uri.path()) {
            return Err(ProxyError::BadPath {
                path: parts.uri.path().chars().take(200).collect(),
                problem,
            });
        }
        if parts.method == Method::HEAD {
            return Ok(Response::new(Either::Right(Full::new(Bytes::new()))));
        }
        let entry = self
            .routes
            .find(parts.uri.path())
            .ok_or_else(|| ProxyError::NoRoute {
                path: parts.uri.path().chars().take(200).collect(),
                prefixes: self.routes.prefixes().to_string(),
            })?;
        let route = &entry.route;
        if let (Some(callers), Some(caller)) = (&self.shared.callers, &caller) {
            callers
                .admit_route(caller, &route.prefix, route.groups.as_deref())
                .map_err(|e| self.caller_error(false, ProxyError::CallerRefused(e)))?;
        }
        let credential = &self.shared.credentials[route.credential];
        log.route = Some(&route.prefix);
        log.credential = Some(credential.cached.name());
        let upstream = route
            .upstream
            .as_ref()
            .map_err(|reason| ProxyError::RouteDisabled {
                route: route.prefix.clone(),
                reason: reason.clone(),
            })?;
        // A place among the route's upstream requests comes first: a queued request holds
        // its connection, not its body.
        let slot = self.slot(route, &entry.slots).await?;
        let mut body = body::read_limited(
            &parts.headers,
            request_body.take().expect("the request body is read once"),
            self.shared.max_body,
            self.shared.body_read_timeout,
        )
        .await?;
        headers::strip_request(&mut parts.headers);
        for name in &route.strip_headers {
            parts.headers.remove(name);
        }
        let mut path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let mut prefix = route.prefix.as_str();
        let mut operation = None;
        if let Some(translation) = &route.translate {
            let below = match prefix {
                "/" => parts.uri.path(),
                prefix => &parts.uri.path()[prefix.len()..],
            };
            let plan =
                translate::plan(translation, &parts.method, below, &mut parts.headers, &body)
                    .map_err(|cause| ProxyError::Translate {
                        route: route.prefix.clone(),
                        cause,
                    })?;
            match plan {
                translate::Plan::Answer(status, json) => return Ok(json_response(status, &json)),
                translate::Plan::Forward(rewritten) => {
                    body = rewritten.body;
                    path_and_query = rewritten.path.parse().map_err(|e| ProxyError::Translate {
                        route: route.prefix.clone(),
                        cause: translate::TranslateError::NotJson(format!("bad path: {e}")),
                    })?;
                    prefix = "/";
                    parts.headers.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    operation = Some(rewritten.operation);
                }
            }
        }
        parts.uri = route::upstream_uri(prefix, upstream, &path_and_query).map_err(|e| {
            ProxyError::UpstreamUnreachable {
                route: route.prefix.clone(),
                upstream: upstream.to_string(),
                cause: format!("the upstream URI could not be formed: {e}").into(),
            }
        })?;
        self.forward(route, credential, parts, body, slot, operation, log)
            .await
    }

    /// Whether the route for `path` serves Claude Code in Bedrock mode.
    fn bedrock_clients(&self, path: &str) -> bool {
        !self.bedrock_routes.is_empty()
            && self
                .routes
                .find(path)
                .is_some_and(|entry| self.bedrock_routes.contains(&entry.route.prefix))
    }

    /// Counts a caller refusal by its reason; a client's start-up probe that carries no
    /// token (`probe`) apart, so dashboards of refusals show refusals.
    fn caller_error(&self, probe: bool, error: ProxyError) -> ProxyError {
        let reason = match &error {
            ProxyError::Caller(crate::callers::CallerError::Missing { .. }) if probe => "probe",
            ProxyError::Caller(e) => e.reason(),
            ProxyError::CallerRefused(r) => r.reason,
            _ => "other",
        };
        self.shared
            .metrics
            .caller_rejections
            .get_or_create(&crate::telemetry::metrics::ReasonLabels { reason })
            .inc();
        error
    }

    /// Waits up to `queue_timeout` for one of the route's in-flight slots.
    async fn slot(
        &self,
        route: &ResolvedRoute,
        slots: &Arc<tokio::sync::Semaphore>,
    ) -> Result<OwnedSemaphorePermit, ProxyError> {
        if let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
            return Ok(permit);
        }
        let waited = self.shared.queue_timeout;
        match tokio::time::timeout(waited, Arc::clone(slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ProxyError::Overloaded {
                route: route.prefix.clone(),
                limit: route.max_in_flight,
                waited,
            }),
        }
    }

    /// Sends the request; when the answer says the credential (or its signature) went bad,
    /// renews it and sends once more. The second answer goes back whatever it is.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        route: &ResolvedRoute,
        credential: &Credential,
        parts: http::request::Parts,
        body: Bytes,
        slot: OwnedSemaphorePermit,
        operation: Option<translate::Operation>,
        log: &mut AccessLog<'_>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        log.attempts = 1;
        let first = self.attempt(route, credential, &parts, &body, log).await?;
        let status = first.response.status();
        let read_timeout = self.shared.upstream_timeout;
        let (answer, verdict) = classify(&credential.scheme, first.response, read_timeout)
            .await
            .map_err(|e| ProxyError::UpstreamUnreachable {
                route: route.prefix.clone(),
                upstream: route.upstream_text(),
                cause: format!(
                    "its answer could not be read: {}",
                    crate::failure::chain(e.as_ref())
                )
                .into(),
            })?;
        match verdict {
            Verdict::Deliver | Verdict::Inspect { .. } => {
                return self.deliver(route, answer, slot, operation).await;
            }
            Verdict::Resign => {
                tracing::debug!(route = %route.prefix, "upstream rejected the signature; signing again");
            }
            Verdict::Refresh => {
                tracing::info!(route = %route.prefix, credential = %credential.cached.name(),
                    status = status.as_u16(), "upstream rejected the credential; refreshing and replaying once");
                credential.cached.invalidate(&first.credential);
                self.shared
                    .metrics
                    .auth_retries
                    .get_or_create(&crate::telemetry::metrics::RetryLabels {
                        route: route.prefix.clone(),
                        credential: credential.cached.name().to_string(),
                    })
                    .inc();
            }
        }
        drop(answer);
        log.attempts = 2;
        let second = self.attempt(route, credential, &parts, &body, log).await?;
        self.deliver(route, Answer::Streaming(second.response), slot, operation)
            .await
    }

    /// The answer as the client gets it; on a translating route, in the Anthropic shape.
    async fn deliver(
        &self,
        route: &ResolvedRoute,
        answer: Answer,
        slot: OwnedSemaphorePermit,
        operation: Option<translate::Operation>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (Some(operation), Some(translation)) = (operation, route.translate.as_deref()) else {
            return Ok(answer.deliver(route, slot));
        };
        let status = match &answer {
            Answer::Streaming(response) => response.status(),
            Answer::Read(parts, _) => parts.status,
        };
        let bedrock = translation.to == translate::TranslateTo::Bedrock;
        let needs_body =
            !status.is_success() || (bedrock && operation == translate::Operation::CountTokens);
        if !needs_body {
            let Answer::Streaming(response) = answer else {
                return Ok(answer.deliver(route, slot));
            };
            let event_stream = bedrock
                && response
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| {
                        v.as_bytes()
                            .starts_with(b"application/vnd.amazon.eventstream")
                    });
            if !event_stream {
                return Ok(Answer::Streaming(response).deliver(route, slot));
            }
            let (mut parts, body) = response.into_parts();
            headers::strip_response(&mut parts.headers);
            parts.headers.remove(http::header::CONTENT_LENGTH);
            parts.headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            let body = UpstreamBody::new(body, Some(slot), route.stream_idle_timeout, true)
                .with_event_stream();
            return Ok(Response::from_parts(parts, Either::Left(body)));
        }
        let (parts, bytes) = match answer {
            Answer::Read(parts, bytes) => (parts, bytes),
            Answer::Streaming(response) => {
                let (parts, body) = response.into_parts();
                let read = http_body_util::Limited::new(body, 1024 * 1024).collect();
                let bytes = tokio::time::timeout(self.shared.upstream_timeout, read)
                    .await
                    .map_err(|_| "the upstream stopped sending its answer".into())
                    .and_then(|r| r.map(|c| c.to_bytes()))
                    .map_err(|e: stream::BoxError| ProxyError::UpstreamUnreachable {
                        route: route.prefix.clone(),
                        upstream: route.upstream_text(),
                        cause: format!("its answer could not be read: {e}").into(),
                    })?;
                (parts, bytes)
            }
        };
        if !parts.status.is_success() {
            let (status, json) =
                translate::errors::translate(translation.to, parts.status, &parts.headers, &bytes);
            return Ok(json_response(status, &json));
        }
        match translate::bedrock::count_tokens_answer(&bytes) {
            Some(json) => Ok(json_response(http::StatusCode::OK, &json)),
            None => Err(ProxyError::UpstreamUnreachable {
                route: route.prefix.clone(),
                upstream: route.upstream_text(),
                cause: "Bedrock's CountTokens answer has no `inputTokens`".into(),
            }),
        }
    }

    /// One try: a current credential value, applied afresh, and the upstream's answer.
    async fn attempt(
        &self,
        route: &ResolvedRoute,
        credential: &Credential,
        parts: &http::request::Parts,
        body: &Bytes,
        log: &mut AccessLog<'_>,
    ) -> Result<Attempt, ProxyError> {
        let value = credential
            .cached
            .get()
            .await
            .map_err(|cause| ProxyError::Credential {
                route: route.prefix.clone(),
                credential: credential.cached.name().to_string(),
                source_name: credential.cached.source().describe(),
                cause,
            })?;
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        credential
            .scheme
            .apply(&mut request, body, &value)
            .map_err(|cause| ProxyError::Apply {
                route: route.prefix.clone(),
                credential: credential.cached.name().to_string(),
                cause,
            })?;
        let sent = Instant::now();
        let response = self.send(route, request).await?;
        log.upstream = Some(sent.elapsed());
        Ok(Attempt {
            response,
            credential: value,
        })
    }

    async fn send(
        &self,
        route: &ResolvedRoute,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamResponse>, ProxyError> {
        let waited = self.shared.upstream_timeout;
        let timeout = || ProxyError::UpstreamTimeout {
            route: route.prefix.clone(),
            upstream: route.upstream_text(),
            waited,
        };
        let client = match &route.identity {
            None => self.shared.client.here(),
            // Built with the generation for every route that names one.
            Some(files) => self
                .shared
                .identity_clients
                .get(files)
                .expect("a client for every route's client certificate")
                .here(),
        };
        let sending = client.send(request, route.http2, self.shared.queue_timeout);
        match tokio::time::timeout(waited, sending).await {
            Ok(Ok(sent)) => {
                if let Some(wait) = sent.stream_wait {
                    self.shared.metrics.stream_wait(&route.prefix, wait);
                }
                Ok(sent.response)
            }
            Ok(Err(error)) if is_timeout(error.as_ref()) => Err(timeout()),
            Ok(Err(error)) => match error.downcast::<crate::client::http2::Busy>() {
                Ok(busy) => Err(ProxyError::UpstreamBusy {
                    route: route.prefix.clone(),
                    upstream: route.upstream_text(),
                    busy: *busy,
                }),
                Err(error) => Err(ProxyError::UpstreamUnreachable {
                    route: route.prefix.clone(),
                    upstream: route.upstream_text(),
                    cause: error,
                }),
            },
            Err(_) => Err(timeout()),
        }
    }
}

/// Whether a request is one of the calls Claude Code makes at start-up without a token
/// (docs/research/claude-code-headers.md): `HEAD` on its base URL to warm the connection,
/// and Bedrock mode's `GET …/inference-profiles`.
fn probe(parts: &http::request::Parts) -> bool {
    parts.method == Method::HEAD
        || (parts.method == Method::GET && parts.uri.path().ends_with("/inference-profiles"))
}

/// An upstream answer: still streaming, or read whole because the classifier needed its
/// body (small auth errors).
enum Answer {
    Streaming(Response<UpstreamResponse>),
    Read(http::response::Parts, Bytes),
}

impl Answer {
    /// The answer as the client gets it: hop-by-hop headers removed; a streaming body
    /// keeps the route's slot until it ends.
    fn deliver(self, route: &ResolvedRoute, slot: OwnedSemaphorePermit) -> Response<ResponseBody> {
        match self {
            Answer::Streaming(response) => {
                let (mut parts, body) = response.into_parts();
                headers::strip_response(&mut parts.headers);
                // An event can be added only to a stream without a declared length.
                let sse = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
                    && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
                let body = UpstreamBody::new(body, Some(slot), route.stream_idle_timeout, sse);
                Response::from_parts(parts, Either::Left(body))
            }
            Answer::Read(mut parts, bytes) => {
                headers::strip_response(&mut parts.headers);
                Response::from_parts(parts, Either::Right(Full::new(bytes)))
            }
        }
    }
}

/// A JSON answer of credproxy's own making (a translated route's answers).
fn json_response(status: http::StatusCode, json: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(json.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Applies the scheme's classifier to a first answer. When it asks to see the body and the
/// body is small and of known length (auth errors are), reads it; the answer then carries
/// exactly those bytes. Anything larger streams on untouched.
async fn classify(
    scheme: &Scheme,
    response: Response<UpstreamResponse>,
    read_timeout: Duration,
) -> Result<(Answer, Verdict), stream::BoxError> {
    let verdict = scheme.classify(response.status(), response.headers());
    let Verdict::Inspect { max_bytes } = verdict else {
        return Ok((Answer::Streaming(response), verdict));
    };
    let small = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|len| len <= max_bytes);
    if !small {
        return Ok((Answer::Streaming(response), Verdict::Deliver));
    }
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(read_timeout, body.collect())
        .await
        .map_err(|_| "the upstream stopped sending its error body")??
        .to_bytes();
    let verdict = match scheme.classify_body(parts.status, &parts.headers, &bytes) {
        Verdict::Inspect { .. } => Verdict::Deliver,
        verdict => verdict,
    };
    Ok((Answer::Read(parts, bytes), verdict))
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
