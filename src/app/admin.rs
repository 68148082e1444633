//! The admin listener (`admin_listen`, default `127.0.0.1:9787`, `"off"` disables), never
//! mixed with proxied routes:
//!
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 once every enabled route has a credential that holds a value (a
//!   route with several targets: one of its targets' credentials) and, with
//!   JWT callers, the identity provider's key set is held (else no caller with a JWT can be
//!   admitted); else 503 naming what is missing, and why (credproxy keeps fetching those
//!   in the background, so readiness returns by itself when the source recovers).
//! - `GET /metrics`: Prometheus / OpenMetrics text.
//! - `GET /status`: JSON per credential (kind, source, fetched at, expires in, fetches,
//!   rejections, last error — never a value) and per route (upstream, credential, why
//!   disabled). `credproxy status` prints it as a table.
//! - `GET /usage?window=minute|day|month[&tag=T]`: usage and spend totals of the current
//!   window by caller, group, tag, route and model (`credproxy usage` prints a table).
//!
//! The same Host and Origin guard as the proxy listeners applies (a web page must not read
//! `/status` through DNS rebinding).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::Current;
use crate::config::{AdminListen, Resolved, ResolvedRoute, Unready};
use crate::proxy::guard::Guard;
use crate::proxy::targets::RouteHealth;
use crate::telemetry::Metrics;
use crate::usage::window::Window;

/// Binds the admin listener and serves it in the background. A default address that is
/// taken (a second credproxy on this machine) is a warning; an address written in the
/// config that cannot be bound is an error.
pub async fn start(
    listen: AdminListen,
    current: Current,
    metrics: Arc<Metrics>,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    let Some(addr) = listen.addr() else {
        return Ok(None);
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) if matches!(listen, AdminListen::Default(_)) => {
            tracing::warn!(target: "credproxy::admin", %addr, %error,
                "admin endpoints not served: the default address is taken; set `admin_listen` to another address (or \"off\")");
            return Ok(None);
        }
        Err(error) => return Err(format!("cannot listen on admin_listen {addr}: {error}")),
    };
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(target: "credproxy::admin", admin = %local,
        "admin endpoints ready: /healthz /readyz /metrics /status");
    Ok(Some(tokio::spawn(serve(listener, local, current, metrics))))
}

async fn serve(listener: TcpListener, local: SocketAddr, current: Current, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (current, metrics) = (Arc::clone(&current), Arc::clone(&metrics));
        // The address this connection reached (the pod's IP on a 0.0.0.0 listener), so a
        // scraper that names it in `Host` is accepted like a loopback name.
        let local = stream.local_addr().unwrap_or(local);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (current, metrics) = (Arc::clone(&current), Arc::clone(&metrics));
                async move {
                    let answer = answer(&request, local, &current, &metrics).await;
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: &Request<Incoming>,
    local: SocketAddr,
    current: &Current,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let generation = current.load_full();
    let (parts, ()) = clone_head(request);
    let guard = Guard::new(generation.resolved.config.guard.clone(), local);
    if let Err(error) = guard.check(&parts) {
        return json_response(StatusCode::FORBIDDEN, &json!({"error": error.to_string()}));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "the admin endpoints answer GET only"}),
        );
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => {
            let waiting = not_ready(&generation);
            let status = if waiting.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(
                status,
                &json!({"ready": waiting.is_empty(), "waiting": waiting}),
            )
        }
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/status" => json_response(StatusCode::OK, &status(&generation)),
        "/usage" => usage(&generation, request.uri().query()).await,
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not found; the admin endpoints are /healthz, /readyz, /metrics, /status and /usage"}),
        ),
    }
}

/// The request head without its body, for the guard.
fn clone_head(request: &Request<Incoming>) -> (http::request::Parts, ()) {
    let mut copy = Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy.into_parts()
}

/// Credentials an enabled route needs that hold no value yet (a route with several
/// targets needs one of its targets' credentials), and the callers' key set while it is
/// missing: name and why.
fn not_ready(generation: &super::Generation) -> Vec<Value> {
    let resolved = &generation.resolved;
    let keys = generation
        .shared
        .callers
        .as_ref()
        .and_then(|callers| callers.keys_missing())
        .map(|(issuer, reason)| json!({"callers": issuer, "reason": reason}));
    // `on_store_error = "deny"` refuses model requests while the store is down: a load
    // balancer should send them elsewhere.
    let store = generation.shared.usage.refusing().then(|| {
        json!({"usage_store": generation.shared.usage.backing().name(),
               "reason": "the usage store cannot be reached and on_store_error = \"deny\""})
    });
    let why = |index: usize| {
        let stats = resolved.credentials[index].cached.stats();
        match stats.last_error {
            Some((_, message)) => message,
            None => "not fetched yet".to_string(),
        }
    };
    resolved
        .unready(|index| resolved.credentials[index].cached.peek().is_some())
        .into_iter()
        .map(|missing| match missing {
            Unready::Credential(index) => {
                json!({"credential": resolved.credentials[index].name, "reason": why(index)})
            }
            Unready::Route {
                prefix,
                credentials,
            } => {
                let each: Vec<String> = credentials
                    .iter()
                    .map(|&i| format!("`{}`: {}", resolved.credentials[i].name, why(i)))
                    .collect();
                let reason = format!("no target's credential holds a value ({})", each.join("; "));
                json!({"route": prefix, "reason": reason})
            }
        })
        .chain(keys)
        .chain(store)
        .collect()
}

fn status(generation: &super::Generation) -> Value {
    let resolved = &generation.resolved;
    let now = SystemTime::now();
    let credentials: Vec<Value> = resolved
        .credentials
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let stats = c.cached.stats();
            let value = c.cached.peek();
            let expires_in = value.as_ref().and_then(|v| v.expires_at).map(|at| {
                match at.duration_since(now) {
                    Ok(left) => left.as_secs() as i64,
                    Err(past) => -(past.duration().as_secs() as i64),
                }
            });
            let state = if expires_in.is_some_and(|left| left <= 0) {
                "expired"
            } else if value.is_some() {
                "ready"
            } else if stats.last_error.is_some() {
                "failing"
            } else if resolved.unused_reason(index).is_some() {
                "unused"
            } else {
                "not fetched"
            };
            json!({
                "name": c.name,
                "kind": c.spec.kind().name(),
                "source": c.cached.source().describe(),
                "state": state,
                "fetched_at": stats.fetched_at.map(rfc3339),
                "expires_in_seconds": expires_in,
                "fetches": stats.fetched_ok,
                "fetch_errors": stats.fetch_failed,
                "rejected_by_upstream": stats.rejected,
                "last_error": stats.last_error.map(|(at, message)| json!({"at": rfc3339(at), "message": message})),
                "unused": resolved.unused_reason(index),
            })
        })
        .collect();
    let routes: Vec<Value> = resolved
        .routes()
        .map(|(listener, route)| {
            let mut entry = json!({
                "listener": listener.addr.to_string(),
                "prefix": route.prefix,
                "upstream": route.upstream_text(),
                "credential": resolved.credentials[route.credential].name,
                "disabled": route.disabled(),
                "groups": route.groups.as_deref(),
                "upstream_http2": route.http2.name(),
            });
            if let Some(health) = generation.shared.health.find(listener.addr, &route.prefix) {
                entry["strategy"] = json!(route.failover.strategy.name());
                entry["targets"] = targets(resolved, route, health);
            }
            entry
        })
        .collect();
    let shared = &generation.shared;
    let upstreams: Vec<Value> = shared
        .clients()
        .flat_map(|clients| clients.http2_status())
        .map(|host| {
            json!({
                "upstream": host.origin,
                "upstream_http2": host.mode.name(),
                "protocol": if host.http1 { "HTTP/1.1" } else { "HTTP/2" },
                "connections": host.connections,
                "streams_in_use": host.streams_in_use,
                "stream_limit": host.stream_limit,
                "waiting": host.waiting,
            })
        })
        .collect();
    json!({
        "config": {
            "origin": resolved.config.origin.display_name(),
            "loaded_at": rfc3339(generation.loaded_at),
            "callers": resolved.config.callers.is_some(),
            "tls": resolved.tls.is_some(),
        },
        "credentials": credentials,
        "routes": routes,
        "upstreams": upstreams,
        "usage": {
            "store": shared.usage.backing().name(),
            "store_reachable": shared.usage.store_reachable(),
            "log": resolved.usage_log.as_ref().map(|p| p.display().to_string()),
            "quotas": resolved.config.quotas.iter().map(|q| &q.name).collect::<Vec<_>>(),
        },
    })
}

/// `GET /usage?window=minute|day|month[&tag=T]`.
async fn usage(generation: &super::Generation, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut window = Window::Day;
    let mut tag = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "window" => match Window::parse(&value) {
                Some(w) => window = w,
                None => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": format!("`window={value}` is not a window; write minute, day or month")}),
                    );
                }
            },
            "tag" => tag = Some(value.into_owned()),
            _ => {}
        }
    }
    let ledger = &generation.shared.usage;
    match ledger.totals(window).await {
        Ok(scopes) => {
            let second = crate::usage::window::epoch_seconds(SystemTime::now());
            let mut body = crate::usage::report::build(&scopes, window, second, tag.as_deref());
            body["store"] = json!(ledger.backing().name());
            json_response(StatusCode::OK, &body)
        }
        Err(error) => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": error})),
    }
}

/// Each target of a route with several targets: where it sends, its state (healthy, or
/// cooling until when), its last error, its requests and failovers.
fn targets(resolved: &Resolved, route: &ResolvedRoute, health: &RouteHealth) -> Value {
    let targets: Vec<Value> = route
        .targets
        .iter()
        .enumerate()
        .map(|(index, target)| {
            let seen = health.target(index).snapshot();
            let state = match (&target.upstream, seen.cooling_until) {
                (Err(_), _) => "disabled",
                (Ok(_), Some(until)) if until > SystemTime::now() => "cooling",
                (Ok(_), Some(_)) => "trial",
                (Ok(_), None) => "healthy",
            };
            json!({
                "name": target.name,
                "upstream": target.upstream_text(),
                "credential": resolved.credentials[target.credential].name,
                "translate": target.translate.as_ref().map(|t| t.to.name()),
                "weight": target.weight,
                "state": state,
                "cooling_until": seen.cooling_until.map(rfc3339),
                "last_error": seen.last_error.map(|(at, message)| json!({"at": rfc3339(at), "message": message})),
                "requests": seen.requests,
                "failovers": seen.failovers,
                "in_flight": seen.in_flight,
                "disabled": target.upstream.as_ref().err(),
            })
        })
        .collect();
    Value::Array(targets)
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    text(status, "application/json", format!("{body}\n"))
}
