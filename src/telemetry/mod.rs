//! Logging: tracing to stderr, as text or JSON lines, and the access log.
//!
//! The access log is built from an allow-list of fields (method, route, path without
//! query, status, attempts, upstream and total milliseconds, credential name, caller). Headers are
//! never logged, so no key, token or signature can reach the log through it.

mod batched;
pub mod metrics;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub use batched::FlushGuard;
use http::{Method, StatusCode, Uri};
pub use metrics::Metrics;
use tracing_subscriber::EnvFilter;

use crate::failure::Side;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `CREDPROXY_LOG` (an `EnvFilter` directive such as
/// `credproxy=debug,hyper=info`) overrides `level` when set.
///
/// Lines go to stderr through [`batched`]: written by a background thread in batches, so no
/// request waits on stderr. Keep the returned guard until exit; dropping it flushes.
pub fn init(level: &str, format: LogFormat) -> FlushGuard {
    let filter = std::env::var("CREDPROXY_LOG")
        .ok()
        .and_then(|d| EnvFilter::try_new(d).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let (writer, guard) = batched::stderr();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// One request's access-log line, filled in as the pipeline learns more.
#[derive(Debug)]
pub struct AccessLog<'a> {
    method: Method,
    uri: Uri,
    pub route: Option<&'a str>,
    pub credential: Option<&'a str>,
    /// Who called (a JWT's `sub` and email, or a static token's name); never the token.
    pub caller: Option<std::sync::Arc<str>>,
    pub attempts: u32,
    pub upstream: Option<Duration>,
    pub error: Option<Side>,
}

impl<'a> AccessLog<'a> {
    pub fn start(method: &Method, uri: &Uri) -> Self {
        AccessLog {
            method: method.clone(),
            uri: uri.clone(),
            route: None,
            credential: None,
            caller: None,
            attempts: 0,
            upstream: None,
            error: None,
        }
    }

    /// Written when the response head is ready; a streamed body may still be flowing.
    pub fn finish(self, status: StatusCode, started: Instant) {
        let path = self.uri.path();
        let path = &path[..path.floor_char_boundary(200)];
        tracing::info!(
            target: "credproxy::access",
            method = %self.method,
            route = self.route.unwrap_or("-"),
            path,
            status = status.as_u16(),
            attempts = self.attempts,
            upstream_ms = self.upstream.map(|d| d.as_secs_f64() * 1000.0),
            total_ms = started.elapsed().as_secs_f64() * 1000.0,
            credential = self.credential.unwrap_or("-"),
            caller = self.caller.as_deref().unwrap_or("-"),
            error = self.error.map(Side::as_str),
        );
    }
}
