//! The pooled upstream client: HTTP/1.1 and HTTP/2 (by ALPN) over rustls, certificates
//! checked by the operating system's verifier (rustls-platform-verifier: on macOS and
//! Windows the OS's own trust decisions, so device-managed corporate roots work; on Linux
//! the system roots with WebPKI) plus `ca_file` (added to them, never instead), `TCP_NODELAY`, keep-alive
//! connections reused while traffic flows and closed when idle (`pool_idle_timeout`, at most
//! `pool_max_idle_per_host` kept), so a burst does not leave thousands of connections and
//! their buffers behind. Connections go through the egress proxy when one applies
//! ([`Connector`]); a route with `client_cert`/`client_key` gets a client of its own that
//! presents that certificate (upstream mTLS).
//!
//! Every serving worker has a pool of its own ([`Clients`]): an upstream connection is
//! opened, driven and reused by the one thread whose requests use it. HTTP/1.1 goes
//! through hyper's pooled client; HTTP/2 through [`http2`]'s pool, which opens as many
//! connections per host as the load needs (`upstream_http2` on a route chooses).

mod corked;
pub mod http2;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

use crate::config::egress::Egress;
use crate::config::{Http2, Limits, Resolved, TlsFiles};
use crate::files::{read_chain, read_key};

pub type UpstreamClient = Client<Reuse, Full<Bytes>>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything a client depends on.
#[derive(Debug, Clone, Default)]
pub struct Settings<'a> {
    pub ca_file: Option<&'a Path>,
    pub connect_timeout: Duration,
    pub limits: Limits,
    pub egress: Option<&'a Egress>,
    /// A client certificate and key to present (upstream mTLS).
    pub identity: Option<&'a TlsFiles>,
}

impl<'a> Settings<'a> {
    pub fn of(resolved: &'a Resolved) -> Result<Self, String> {
        let egress = resolved.egress.as_ref().map_err(Clone::clone)?.as_ref();
        Ok(Settings {
            ca_file: resolved.ca_file.as_deref(),
            connect_timeout: resolved.config.connect_timeout,
            limits: resolved.config.limits.clone(),
            egress,
            identity: None,
        })
    }
}

/// One client per serving worker, all with the same settings; each request uses its own
/// worker's, so an upstream connection never serves two threads. The idle HTTP/1.1
/// connections kept (`pool_max_idle_per_host`) are shared out between the workers' pools,
/// at least 4 each (or the setting, if lower); the HTTP/2 connections to one host are
/// capped across them (`pool_max_connections_per_host`).
#[derive(Clone)]
pub struct Clients {
    per_worker: Arc<[WorkerClient]>,
    /// For the background runtime's own requests (the identity provider's keys).
    background: UpstreamClient,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("workers", &self.per_worker.len())
            .finish()
    }
}

/// One worker's upstream connections.
pub struct WorkerClient {
    /// HTTP/1.1 only (ALPN offers nothing else).
    http1: UpstreamClient,
    http2: http2::Pool,
}

/// An upstream response body, whichever protocol carried it.
#[derive(Debug)]
pub enum Body {
    Http1(Incoming),
    Http2(http2::H2Body),
    /// An answer whose first bytes were read ahead (a route with several targets holds a
    /// stream's first event to see whether it is an error), then the rest as it comes.
    Held(Option<Bytes>, Box<Body>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Body::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Body::Held(head, rest) => match head.take() {
                Some(head) => Poll::Ready(Some(Ok(http_body::Frame::data(head)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Http1(body) => body.is_end_stream(),
            Body::Http2(body) => body.is_end_stream(),
            Body::Held(head, rest) => head.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Http1(body) => body.size_hint(),
            Body::Http2(body) => body.size_hint(),
            Body::Held(head, rest) => {
                let held = head.as_ref().map_or(0, |h| h.len() as u64);
                let rest = rest.size_hint();
                let mut hint = http_body::SizeHint::new();
                hint.set_lower(rest.lower() + held);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + held);
                }
                hint
            }
        }
    }
}

/// An upstream's answer, and how long the request waited for an HTTP/2 stream (`None`
/// over HTTP/1.1).
pub struct Sent {
    pub response: Response<Body>,
    pub stream_wait: Option<Duration>,
}

impl WorkerClient {
    /// Sends `request` (an absolute URI) over the HTTP version `http2` asks for.
    /// `queue_timeout` bounds the wait for an HTTP/2 stream when the connection cap is
    /// reached (the error is then [`http2::Busy`]).
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        mode: Http2,
        queue_timeout: Duration,
    ) -> Result<Sent, BoxError> {
        let plain = request.uri().scheme_str() == Some("http");
        let request = match mode {
            Http2::Never => request,
            Http2::Auto if plain => request,
            _ => match self.http2.send(request, mode, queue_timeout).await? {
                http2::Routed::Answered(response, waited) => {
                    return Ok(Sent {
                        response: response.map(Body::Http2),
                        stream_wait: Some(waited),
                    });
                }
                http2::Routed::Http1(request) => request,
            },
        };
        let response = self.http1.request(request).await?;
        Ok(Sent {
            response: response.map(Body::Http1),
            stream_wait: None,
        })
    }
}

impl Clients {
    /// The clients for a config. Fails on an unreadable `ca_file` or an egress proxy URL in
    /// the environment that does not parse; a machine without system roots gets a warning
    /// (https upstreams will then fail with a certificate error).
    pub fn build(resolved: &Resolved) -> Result<Self, String> {
        Self::with_settings(
            &Settings::of(resolved)?,
            crate::runtime::worker_count(resolved.config.workers),
        )
    }

    /// The clients for a route that presents a client certificate.
    pub fn with_identity(resolved: &Resolved, identity: &TlsFiles) -> Result<Self, String> {
        Self::with_settings(
            &Settings {
                identity: Some(identity),
                ..Settings::of(resolved)?
            },
            crate::runtime::worker_count(resolved.config.workers),
        )
    }

    /// `workers` clients for explicit settings, sharing one TLS set-up.
    pub fn with_settings(settings: &Settings, workers: usize) -> Result<Self, String> {
        let workers = workers.max(1);
        let tls = tls_config(settings)?;
        let connector = Connector::new(http_connector(settings), settings.egress);
        let limits = &settings.limits;
        // Shared out, but at least a few per worker (or the setting, if lower), so a
        // many-core machine does not reconnect for every burst.
        let idle = limits.pool_max_idle_per_host;
        let idle_per_worker = idle.div_ceil(workers).max(idle.min(4));
        if limits.pool_max_connections_per_host < workers {
            tracing::warn!(
                pool_max_connections_per_host = limits.pool_max_connections_per_host,
                workers,
                "pool_max_connections_per_host is below the number of serving threads: an HTTP/2 connection serves one thread only, so some threads' requests will wait for a connection and get 503; raise it or lower `workers`"
            );
        }
        let http1_only = https(tls.clone(), connector.clone(), false);
        let dial = Arc::new(http2::Dial::new(
            connector.clone(),
            &tls,
            settings.connect_timeout,
            limits.pool_idle_timeout,
            limits.pool_max_connections_per_host,
        ));
        Ok(Clients {
            per_worker: (0..workers)
                .map(|_| {
                    let parked = http2::Parked::default();
                    let http1 = Reuse::new(http1_only.clone(), parked.clone());
                    WorkerClient {
                        http1: pool(http1, limits, idle_per_worker),
                        http2: http2::Pool::new(Arc::clone(&dial), parked),
                    }
                })
                .collect(),
            background: pool(
                Reuse::new(https(tls, connector, true), Default::default()),
                limits,
                idle_per_worker,
            ),
        })
    }

    /// The client of the worker this runs on.
    pub fn here(&self) -> &WorkerClient {
        &self.per_worker[crate::runtime::worker_index() % self.per_worker.len()]
    }

    /// The client for work that runs on the background runtime.
    pub fn background(&self) -> &UpstreamClient {
        &self.background
    }

    /// The HTTP/2 connections of every worker, by upstream host.
    pub fn http2_status(&self) -> Vec<http2::HostStatus> {
        let mut merged: Vec<http2::HostStatus> = Vec::new();
        for worker in self.per_worker.iter() {
            for host in worker.http2.status() {
                match merged
                    .iter_mut()
                    .find(|m| m.origin == host.origin && m.mode == host.mode)
                {
                    Some(m) => {
                        m.http1 |= host.http1;
                        m.connections += host.connections;
                        m.streams_in_use += host.streams_in_use;
                        m.waiting += host.waiting;
                        m.stream_limit = m.stream_limit.max(host.stream_limit);
                    }
                    None => merged.push(host),
                }
            }
        }
        merged.sort_by(|a, b| a.origin.cmp(&b.origin));
        merged
    }
}

/// A single client for explicit settings (benchmarks and tests build one without a config).
pub fn with_settings(settings: &Settings) -> Result<UpstreamClient, String> {
    let connector = Connector::new(http_connector(settings), settings.egress);
    Ok(pool(
        Reuse::new(
            https(tls_config(settings)?, connector, true),
            Default::default(),
        ),
        &settings.limits,
        settings.limits.pool_max_idle_per_host,
    ))
}

fn pool(connector: Reuse, limits: &Limits, max_idle_per_host: usize) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(limits.pool_idle_timeout)
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// TLS: the roots (the OS verifier plus `ca_file`) and the client certificate.
fn tls_config(settings: &Settings) -> Result<rustls::ClientConfig, String> {
    let ca_file = settings.ca_file;
    let extra = match ca_file {
        None => Vec::new(),
        Some(path) => {
            let certs = read_chain(path, "ca_file")?;
            let found = certs.len();
            // One certificate the verifier cannot use must not cost the others (or the
            // system's roots): skip it and say so.
            let usable: Vec<_> = certs
                .into_iter()
                .filter(|cert| RootCertStore::empty().add(cert.clone()).is_ok())
                .collect();
            if usable.is_empty() {
                return Err(format!(
                    "ca_file {} holds no usable CA certificate",
                    path.display()
                ));
            }
            if usable.len() < found {
                tracing::warn!(ca_file = %path.display(), skipped = found - usable.len(),
                    "some certificates in ca_file are not usable as roots and were skipped");
            }
            usable
        }
    };
    // Name the provider: with several rustls backends compiled in, the implicit default panics.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?;
    let builder = match rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider) {
        Ok(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier)),
        Err(error) => {
            // Plain-http upstreams still work; https ones fail with a certificate error.
            tracing::warn!(%error, "no root certificates found; https upstreams will fail to verify");
            builder.with_root_certificates(RootCertStore::empty())
        }
    };
    Ok(match settings.identity {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let (chain, key) = identity(files)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "client_key {} does not belong to client_cert {}: {e}",
                    files.key.display(),
                    files.cert.display()
                )
            })?
        }
    })
}

/// TCP: `TCP_NODELAY`, keep-alive probes, the connect timeout.
fn http_connector(settings: &Settings) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
}

/// TLS over `connector`, offering HTTP/1.1 and, with `http2`, HTTP/2 by ALPN.
fn https(
    tls: rustls::ClientConfig,
    connector: Connector,
    http2: bool,
) -> HttpsConnector<Connector> {
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    if http2 {
        builder.enable_http2().wrap_connector(connector)
    } else {
        builder.wrap_connector(connector)
    }
}

/// A client certificate chain and its key, from PEM files.
fn identity(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    Ok((
        read_chain(&files.cert, "client_cert")?,
        read_key(&files.key, "client_key")?,
    ))
}

/// Opens TCP connections directly, or through the egress proxy with `CONNECT` when the
/// proxy rules apply to the destination. hyper-rustls then runs TLS to the upstream over
/// whichever it got, so the proxy sees only the tunnel.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    proxy: Option<Arc<Matcher>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("proxied", &self.proxy.is_some())
            .finish()
    }
}

impl Connector {
    fn new(http: HttpConnector, egress: Option<&Egress>) -> Self {
        let proxy = egress.map(|egress| {
            let mut rules = Matcher::builder();
            if let Some(https) = &egress.https {
                rules = rules.https(https.expose());
            }
            if let Some(http) = &egress.http {
                rules = rules.http(http.expose());
            }
            Arc::new(rules.no(egress.no_proxy.as_str()).build())
        });
        Connector { http, proxy }
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send + 'static>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let intercept = self.proxy.as_ref().and_then(|m| m.intercept(&destination));
        match intercept {
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), self.http.clone());
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                // CONNECT needs a port; the tunnel would assume 443 even for http://.
                let destination = with_port(destination);
                Box::pin(async move {
                    tower_service::Service::call(&mut tunnel, destination)
                        .await
                        .map_err(|e| {
                            format!("through the egress proxy: {}", crate::failure::chain(&e))
                                .into()
                        })
                })
            }
            None => {
                let connecting = tower_service::Service::call(&mut self.http, destination);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
        }
    }
}

/// The HTTP/1.1 pool's connector: a TLS connection that the HTTP/2 pool opened to
/// learn that the upstream speaks HTTP/1.1 (ALPN) is used first, so finding out costs no
/// connection; otherwise a new connection.
#[derive(Clone)]
pub struct Reuse {
    https: HttpsConnector<Connector>,
    parked: http2::Parked,
}

impl Reuse {
    fn new(https: HttpsConnector<Connector>, parked: http2::Parked) -> Self {
        Reuse { https, parked }
    }
}

impl tower_service::Service<Uri> for Reuse {
    type Response = hyper_rustls::MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.https.poll_ready(cx)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        if let Some(stream) = self.parked.take(&destination) {
            return Box::pin(async move {
                Ok(hyper_rustls::MaybeHttpsStream::Https(TokioIo::new(stream)))
            });
        }
        Box::pin(self.https.call(destination))
    }
}

/// The URI with its scheme's default port written out.
fn with_port(uri: Uri) -> Uri {
    if uri.port().is_some() {
        return uri;
    }
    let port = if uri.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    let Some(host) = uri.host() else {
        return uri;
    };
    let authority = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut parts = uri.clone().into_parts();
    match authority.parse() {
        Ok(authority) => {
            parts.authority = Some(authority);
            Uri::from_parts(parts).unwrap_or(uri)
        }
        Err(_) => uri,
    }
}

impl crate::telemetry::UpstreamPools for Clients {
    fn upstream_connections(&self) -> Vec<crate::telemetry::UpstreamConnections> {
        self.http2_status()
            .into_iter()
            .map(|host| crate::telemetry::UpstreamConnections {
                upstream: host.origin,
                upstream_http2: host.mode.name(),
                protocol: if host.http1 { "HTTP/1.1" } else { "HTTP/2" },
                connections: host.connections,
                streams_in_use: host.streams_in_use,
                waiting: host.waiting,
            })
            .collect()
    }
}
