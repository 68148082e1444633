//! Prometheus metrics (prometheus-client, as linkerd2-proxy and agentgateway use).
//!
//! Request metrics are counted as requests finish; credential metrics are read from the
//! credential cells at scrape time (so a reload that swaps the cells needs no bookkeeping
//! here beyond handing over the new list), and the upstream connection gauges from the
//! workers' pools likewise. Every label is bounded: route prefixes, upstream origins and
//! credential names come from the config, statuses are numbers, reasons a fixed set; no
//! path, caller or value ever becomes a label.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::credentials::Cached;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
    pub attempts: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TruncatedLabels {
    pub route: String,
    /// `upstream` or `client`: the side that cut the answer short.
    pub by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub route: String,
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub route: String,
    /// The target's `name`, else its index in `targets`.
    pub target: String,
    /// `served`, or why it did not serve (`429`, `connect`, `error_event`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub route: String,
    pub from: String,
    pub to: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub route: String,
    pub model: String,
    /// `input`, `output`, `cache_creation` or `cache_read`.
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpendLabels {
    pub route: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub quota: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    credential: String,
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 min: covers a cached-credential forward and a long stream's head.
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

/// Every metric credproxy exports. Lives for the whole process (reloads keep counting).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub auth_retries: Family<RetryLabels, Counter>,
    pub truncated: Family<TruncatedLabels, Counter>,
    pub connections_open: Family<ListenerLabels, Gauge>,
    pub connections_closed_for_room: Family<ListenerLabels, Counter>,
    pub caller_rejections: Family<ReasonLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub upstream_stream_wait: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Tokens in answers, by route, model (bounded by `usage`) and type.
    pub tokens: Family<TokenLabels, Counter>,
    pub spend: Family<SpendLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub quota_rejections: Family<QuotaLabels, Counter>,
    /// Failed exchanges with the shared usage store (`[usage] store`).
    pub usage_store_errors: Counter,
    /// Usage records not written because the log writer fell behind.
    pub usage_records_dropped: Counter,
    /// Requests sent to each target of a route with several targets, by outcome.
    pub target_requests: Family<TargetLabels, Counter>,
    pub failovers: Family<FailoverLabels, Counter>,
    credentials: Arc<CredentialCells>,
    upstreams: Arc<UpstreamCells>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("credproxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route prefix, status and upstream attempts",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register_with_unit(
            "request_duration",
            "Time from the request's arrival to the response head, by route",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register_with_unit(
            "upstream_duration",
            "Time the upstream took to answer with its response head, by route",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let auth_retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "auth_retries",
            "Requests replayed once because the upstream rejected the credential",
            auth_retries.clone(),
        );
        let truncated = Family::<TruncatedLabels, Counter>::default();
        registry.register(
            "responses_truncated",
            "Streamed answers cut short after their head went out, by route and the side that cut them (upstream: reset, closed or stalled mid-body; client: went away)",
            truncated.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Client connections open, by listener",
            connections_open.clone(),
        );
        let connections_closed_for_room = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_closed_for_room",
            "Connections with no request in flight asked to close because their listener was at max_connections, by listener",
            connections_closed_for_room.clone(),
        );
        let caller_rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "caller_rejections",
            "Requests refused because of the caller (no or invalid token, not admitted), by reason; `probe`: a client's start-up call without a token (HEAD, Bedrock's inference-profiles)",
            caller_rejections.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, applied or rejected",
            reloads.clone(),
        );
        let upstream_stream_wait =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                // 100 µs to ~7 min: no wait at all shows in the first bucket.
                Histogram::new(exponential_buckets(0.0001, 2.0, 22))
            });
        registry.register_with_unit(
            "upstream_stream_wait",
            "Time a request waited for a free HTTP/2 stream to its upstream (every connection allowed was busy or being opened), by route",
            Unit::Seconds,
            upstream_stream_wait.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens in model answers, by route, model and type (input, output, cache_creation, cache_read)",
            tokens.clone(),
        );
        let spend = Family::<SpendLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "spend_usd",
            "What model answers cost in US dollars at the configured [prices], by route and model",
            spend.clone(),
        );
        let quota_rejections = Family::<QuotaLabels, Counter>::default();
        registry.register(
            "quota_rejections",
            "Requests refused with 429 because a [[quotas]] window was spent, by quota",
            quota_rejections.clone(),
        );
        let usage_store_errors = Counter::default();
        registry.register(
            "usage_store_errors",
            "Failed exchanges with the shared usage store ([usage] store)",
            usage_store_errors.clone(),
        );
        let usage_records_dropped = Counter::default();
        registry.register(
            "usage_records_dropped",
            "Usage records not written to [usage] log because the writer fell behind",
            usage_records_dropped.clone(),
        );
        let target_requests = Family::<TargetLabels, Counter>::default();
        registry.register(
            "target_requests",
            "Requests sent to each target of a route with several targets, by outcome (`served`, or why the target did not serve)",
            target_requests.clone(),
        );
        let failovers = Family::<FailoverLabels, Counter>::default();
        registry.register(
            "failovers",
            "Requests passed from one target of a route to the next, by why",
            failovers.clone(),
        );
        let credentials = Arc::new(CredentialCells(ArcSwap::from_pointee(Vec::new())));
        registry.register_collector(Box::new(Arc::clone(&credentials)));
        let upstreams = Arc::new(UpstreamCells(ArcSwap::from_pointee(Vec::new())));
        registry.register_collector(Box::new(Arc::clone(&upstreams)));
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            auth_retries,
            truncated,
            connections_open,
            connections_closed_for_room,
            caller_rejections,
            reloads,
            upstream_stream_wait,
            tokens,
            spend,
            quota_rejections,
            usage_store_errors,
            usage_records_dropped,
            target_requests,
            failovers,
            credentials,
            upstreams,
        }
    }

    /// How long one request waited for an HTTP/2 stream.
    pub fn stream_wait(&self, route: &str, waited: Duration) {
        self.upstream_stream_wait
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(waited.as_secs_f64());
    }

    /// The credentials the credential metrics report (at start and after each reload).
    pub fn set_credentials(&self, cells: Vec<Arc<Cached>>) {
        self.credentials.0.store(Arc::new(cells));
    }

    /// The pools the upstream connection gauges report (at start and after each reload).
    pub fn set_upstream_pools(&self, pools: Vec<Arc<dyn UpstreamPools>>) {
        self.upstreams.0.store(Arc::new(pools));
    }

    /// One finished request.
    pub fn request(
        &self,
        route: Option<&str>,
        status: u16,
        attempts: u32,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        let route = route.unwrap_or("-").to_string();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                status,
                attempts,
            })
            .inc();
        let labels = RouteLabels { route };
        if let Some(upstream) = upstream {
            self.upstream_duration
                .get_or_create(&labels)
                .observe(upstream.as_secs_f64());
        }
        self.request_duration
            .get_or_create(&labels)
            .observe(total.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The current credential cells, read at scrape time. (The registry's `credproxy` prefix
/// is applied to a collector's names too.)
#[derive(Debug)]
struct CredentialCells(ArcSwap<Vec<Arc<Cached>>>);

impl Collector for CredentialCells {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cells = self.0.load();
        let fetches = Family::<FetchLabels, Counter>::default();
        let expiry =
            Family::<CredentialLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let now = SystemTime::now();
        for cell in cells.iter() {
            let stats = cell.stats();
            let credential = cell.name().to_string();
            for (result, count) in [("ok", stats.fetched_ok), ("error", stats.fetch_failed)] {
                fetches
                    .get_or_create(&FetchLabels {
                        credential: credential.clone(),
                        result,
                    })
                    .inc_by(count);
            }
            if let Some(expires_at) = cell.peek().and_then(|c| c.expires_at) {
                let left = match expires_at.duration_since(now) {
                    Ok(left) => left.as_secs_f64(),
                    Err(past) => -past.duration().as_secs_f64(),
                };
                expiry
                    .get_or_create(&CredentialLabels { credential })
                    .set(left);
            }
        }
        let metric = encoder.encode_descriptor(
            "credential_fetches",
            "Credential fetches from their sources, by result",
            None,
            fetches.metric_type(),
        )?;
        fetches.encode(metric)?;
        let metric = encoder.encode_descriptor(
            "credential_expiry_seconds",
            "Seconds until the current value of a credential expires (absent: no expiry)",
            None,
            expiry.metric_type(),
        )?;
        expiry.encode(metric)?;
        Ok(())
    }
}

/// One upstream host's connections, as the workers' pools hold them at a scrape.
#[derive(Debug, Clone)]
pub struct UpstreamConnections {
    /// `scheme://host:port`.
    pub upstream: String,
    /// The route's `upstream_http2`: `auto`, `always` (`never` goes to the HTTP/1.1 pool).
    pub upstream_http2: &'static str,
    /// What the upstream speaks: `HTTP/2`, or `HTTP/1.1` when its ALPN chose that.
    pub protocol: &'static str,
    pub connections: usize,
    pub streams_in_use: usize,
    /// Requests waiting for a stream (the host's connection cap reached).
    pub waiting: usize,
}

/// Pools that can say what they hold (the upstream clients; implemented there, so that
/// telemetry does not depend on the client).
pub trait UpstreamPools: Send + Sync {
    fn upstream_connections(&self) -> Vec<UpstreamConnections>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    upstream_http2: &'static str,
    protocol: &'static str,
}

struct UpstreamCells(ArcSwap<Vec<Arc<dyn UpstreamPools>>>);

impl std::fmt::Debug for UpstreamCells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCells")
            .field("pools", &self.0.load().len())
            .finish()
    }
}

impl Collector for UpstreamCells {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let connections = Family::<UpstreamLabels, Gauge>::default();
        let in_use = Family::<UpstreamLabels, Gauge>::default();
        let waiting = Family::<UpstreamLabels, Gauge>::default();
        for pool in self.0.load().iter() {
            for host in pool.upstream_connections() {
                let labels = UpstreamLabels {
                    upstream: host.upstream,
                    upstream_http2: host.upstream_http2,
                    protocol: host.protocol,
                };
                let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                connections
                    .get_or_create(&labels)
                    .inc_by(count(host.connections));
                in_use
                    .get_or_create(&labels)
                    .inc_by(count(host.streams_in_use));
                waiting.get_or_create(&labels).inc_by(count(host.waiting));
            }
        }
        for (name, help, family) in [
            (
                "upstream_connections",
                "Open HTTP/2 connections to each upstream host, across workers, with the route's upstream_http2 and what the upstream speaks (HTTP/1.1 connections are not counted)",
                &connections,
            ),
            (
                "upstream_streams_in_use",
                "HTTP/2 streams in use on those connections (a stream is in use until its answer ends)",
                &in_use,
            ),
            (
                "upstream_streams_waiting",
                "Requests waiting for an HTTP/2 stream because the host's connection cap was reached",
                &waiting,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, family.metric_type())?;
            family.encode(metric)?;
        }
        Ok(())
    }
}
