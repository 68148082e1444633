//! Logging: tracing to stderr, as text or JSON lines, and the access log.
//!
//! The access log is built from an allow-list of fields (method, route, path without
//! query, status, attempts, upstream and total milliseconds, credential name, caller, bytes
//! sent, truncation). Headers are never logged, so no key, token or signature can reach
//! the log through it.

mod access;
mod batched;
pub mod metrics;

use std::io::IsTerminal;

pub use access::{AccessLog, Cut, Pending};
pub use batched::FlushGuard;
pub use metrics::{Metrics, UpstreamConnections, UpstreamPools};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::SubscriberInitExt;

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
    let ansi = std::io::stderr().is_terminal();
    // Colours are tracing's to write; JSON has none.
    if !ansi || format == LogFormat::Json {
        access::write_directly(writer.clone(), format);
    }
    subscriber(format, writer, ansi, filter).init();
    guard
}

/// How log lines look; the access log's own renderer is tested against this.
fn subscriber<W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
    filter: EnvFilter,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(true);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}
