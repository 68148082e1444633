//! The per-request pipeline, one phase per file in the order requests meet them (as
//! pingora names its phases). [`Proxy::handle`] runs them:
//!
//! 1. [`admit`]: the local-safety guard (foreign `Host` names, cross-site browser
//!    requests); with `[callers]`, the caller's token (401) and `email_domains` (403);
//!    `CONNECT`, `TRACE` and paths that climb out of a route refused. `HEAD` is then
//!    answered at once (Claude Code warms connections that way).
//! 2. [`target`]: longest prefix → route (404), its `groups` for this caller (403), its
//!    credential and upstream, a place among its requests in flight (503 when full).
//! 3. [`body`]: the request body buffered up to `max_body` (413), since a signature needs
//!    its hash and a replay its bytes.
//!
//!    3½. [`account`]: a model request's caller, groups, tag and model for usage, and its
//!    `[[quotas]]` checked (429 naming the quota).
//! 4. [`prepare`]: client credentials and hop-by-hop headers stripped; on a translating
//!    route the request rewritten for the cloud ([`translate`]); the upstream URI.
//! 5. [`forward`]: the send loop — a current credential value applied afresh to each
//!    attempt, sent on this worker's client; [`retry`] is the policy that judges the first
//!    answer and replays once when the credential (or its signature) went bad. On a route
//!    with several targets, [`failover`] runs phases 4 and 5 once per target tried: it
//!    picks a target by the route's strategy and health ([`targets`]) and moves on when
//!    [`retry`] says the target failed before anything reached the client.
//! 6. [`deliver`]: the answer streamed back frame by frame ([`stream`], where observers
//!    such as the access line tap it), or translated back to the Anthropic shape.
//! 7. [`respond`]: errors as Anthropic-shaped answers ([`error`]), metrics, the access line,
//!    and the usage tap ([`usage_tap`]) that charges the answer when it ends.
//!
//! An [`Exchange`] carries a request from phase 4 to 6; phases 1-3 hand on what they
//! found. A new phase is a file here and a line in `serve`; a new answer observer is an
//! [`stream::Observer`] added where `deliver` builds the body.

mod account;
mod admit;
pub mod body;
mod deliver;
pub mod error;
mod failover;
mod forward;
pub mod guard;
mod prepare;
mod respond;
mod retry;
pub mod route;
pub mod stream;
mod target;
pub mod targets;
pub mod translate;
mod usage_tap;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::callers::Callers;
use crate::client::Body as UpstreamResponse;
pub use crate::client::{Clients, UpstreamClient};
use crate::config::{Resolved, ResolvedListener, ResolvedRoute, ResolvedTarget};
use crate::credentials::Cached;
use crate::schemes::Scheme;
use crate::telemetry::{AccessLog, Metrics};
use crate::usage::{Ledger, Ticket};
pub use error::ProxyError;
use guard::Guard;
use prepare::Prepared;
use route::RouteTable;
use stream::UpstreamBody;

/// What the client receives: the upstream's body as it streams, or one of ours.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// A route's credential as requests use it: its cached value and how it goes onto a
/// request (the config's credential, bound; `credentials::Credential` is its value).
#[derive(Debug)]
pub struct Injector {
    pub cached: Arc<Cached>,
    pub scheme: Scheme,
}

/// State shared by every listener.
#[derive(Debug)]
pub struct Shared {
    /// One upstream client per serving worker.
    pub client: Clients,
    /// Same order as the config's credentials; routes refer to them by index.
    pub injectors: Vec<Injector>,
    pub max_body: usize,
    pub upstream_timeout: Duration,
    pub body_read_timeout: Duration,
    pub queue_timeout: Duration,
    /// `[callers]`: who may use the proxy listeners (`None`: whoever reaches them).
    pub callers: Option<Arc<Callers>>,
    pub metrics: Arc<Metrics>,
    /// Clients that present a route's `client_cert` (upstream mTLS), by certificate files.
    pub identity_clients: std::collections::HashMap<crate::config::TlsFiles, Clients>,
    /// Usage and quotas: one ledger for the process, kept across reloads.
    pub usage: Arc<Ledger>,
    /// `[usage] tag_header`.
    pub tag_header: http::HeaderName,
    /// The health of the targets of routes with several targets (kept across reloads).
    pub health: targets::Registry,
}

impl Shared {
    /// Every upstream client of this generation: the workers' own, then those that present
    /// a client certificate.
    pub fn clients(&self) -> impl Iterator<Item = &Clients> {
        std::iter::once(&self.client).chain(self.identity_clients.values())
    }

    /// `callers` is built by the caller of this so that a reload can keep the identity
    /// provider's keys and the validated tokens when `[callers]` did not change.
    pub fn new(
        resolved: &Resolved,
        client: Clients,
        callers: Option<Arc<Callers>>,
        metrics: Arc<Metrics>,
        usage: Arc<Ledger>,
    ) -> Self {
        Shared {
            callers,
            metrics,
            usage,
            tag_header: resolved.config.usage.tag_header.clone(),
            identity_clients: Default::default(),
            health: Default::default(),
            client,
            injectors: resolved
                .credentials
                .iter()
                .map(|c| Injector {
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

impl Proxy {
    /// `previous`: the proxy this one replaces on a reload, whose routes' in-flight slots
    /// carry over.
    pub fn new(
        shared: Arc<Shared>,
        resolved: &Resolved,
        listener: &ResolvedListener,
        bound: SocketAddr,
        previous: Option<&Proxy>,
    ) -> Self {
        let routes = listener.routes.clone();
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
        let mut routes = RouteTable::inheriting(routes, previous.map(|p| &p.routes));
        routes.attach_health(&shared.health, listener.addr);
        Proxy {
            shared,
            routes,
            guard: Guard::new(resolved.config.guard.clone(), bound),
            bedrock_routes,
        }
    }

    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let mut log = AccessLog::start(request.method(), request.uri());
        let version = request.version();
        let (head, body) = request.into_parts();
        let mut body = Some(body);
        let mut ticket = None;
        let outcome = self.serve(head, &mut body, &mut ticket, &mut log).await;
        self.respond(outcome, log, started, version, body, ticket)
    }

    /// Phases 1 to 6; `body` is taken when it is read (a refusal leaves it); `ticket` is
    /// the usage of an admitted model request, for the respond phase to charge.
    async fn serve<'a>(
        &'a self,
        mut head: http::request::Parts,
        body: &mut Option<Incoming>,
        ticket: &mut Option<Ticket>,
        log: &mut AccessLog<'a>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let caller = self.admit(&head, log).await?;
        if head.method == Method::HEAD {
            return Ok(Response::new(Either::Right(Full::new(Bytes::new()))));
        }
        let chosen = self.target(head.uri.path(), caller.as_deref(), log).await?;
        let body = body::read_limited(
            &head.headers,
            body.take().expect("the request body is read once"),
            self.shared.max_body,
            self.shared.body_read_timeout,
        )
        .await?;
        let route = match &chosen {
            target::Chosen::One(target) => target.route,
            target::Chosen::Several(several) => several.route,
        };
        *ticket = self.account(&mut head, &body, caller.as_deref(), route)?;
        let target = match chosen {
            target::Chosen::One(target) => target,
            target::Chosen::Several(several) => {
                return self.fail_over(head, body, several, log).await;
            }
        };
        match self.prepare(head, body, target)? {
            Prepared::Answer(response) => Ok(response),
            Prepared::Send(exchange) => self.forward(exchange, log).await,
        }
    }
}

/// A request from the moment it is ready to send until its answer is delivered.
pub(crate) struct Exchange<'a> {
    pub route: &'a ResolvedRoute,
    /// The target this request is sent to (a one-target route's only one).
    pub target: &'a ResolvedTarget,
    pub injector: &'a Injector,
    /// The head as the upstream gets it, before the credential is applied.
    pub head: http::request::Parts,
    pub body: Bytes,
    /// The route's place for this request, held until the answer ends.
    pub slot: OwnedSemaphorePermit,
    /// On a translating route: how to put the answer back in the Anthropic shape.
    pub translator: Option<translate::Translator<'a>>,
}

/// `exchange`'s upstream answered, but `what` went wrong reading the answer, because of
/// `error` (named with its causes).
fn answer_failed(
    exchange: &Exchange<'_>,
    what: &str,
    error: &(dyn std::error::Error + 'static),
) -> ProxyError {
    let cause = crate::failure::chain(error);
    unreachable(exchange.route, exchange.target, format!("{what}: {cause}"))
}

/// The upstream of `target` (of `route`) could not be reached, or its answer not read.
fn unreachable(route: &ResolvedRoute, target: &ResolvedTarget, cause: String) -> ProxyError {
    ProxyError::UpstreamUnreachable {
        route: route.prefix.clone(),
        upstream: target.upstream_text(),
        cause: cause.into(),
    }
}
