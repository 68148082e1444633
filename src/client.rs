//! The one pooled upstream client: HTTP/1.1 and HTTP/2 (by ALPN) over rustls, system roots
//! plus an optional extra CA bundle, `TCP_NODELAY`, keep-alive connections reused while
//! traffic flows and closed when idle (`pool_idle_timeout`, at most `pool_max_idle_per_host`
//! kept), so a burst does not leave thousands of connections and their buffers behind.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

use std::path::Path;

use crate::config::{Limits, Resolved};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client. Fails only on an unreadable `ca_file`; a machine without system roots
/// gets a warning (https upstreams will then fail with a certificate error).
pub fn build(resolved: &Resolved) -> Result<UpstreamClient, String> {
    let config = &resolved.config;
    with_settings(
        resolved.ca_file.as_deref(),
        config.connect_timeout,
        &config.limits,
    )
}

/// The client for explicit settings (benchmarks and tests build one without a config).
pub fn with_settings(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    limits: &Limits,
) -> Result<UpstreamClient, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 && ca_file.is_none() {
        tracing::warn!("no system root certificates found; https upstreams will fail to verify");
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("ca_file {} is not PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {} holds no certificates", path.display()));
        }
        roots.add_parsable_certificates(certs);
    }
    // Name the provider: with several rustls backends compiled in, the implicit default panics.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(limits.pool_idle_timeout)
        .pool_max_idle_per_host(limits.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}
