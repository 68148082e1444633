//! The access log: one line per request, built from an allow-list of fields (method,
//! route, path without query, status, attempts, the target that served on a route with
//! several targets (`served_by`), upstream and total milliseconds,
//! credential name, caller, body bytes sent, and which side cut an answer short). Headers
//! are never logged, so no key, token or signature can reach the log through it.
//!
//! The line is written when the answer ends: at once for credproxy's own answers, when
//! the last byte went out for a streamed one ([`Pending`]), so `total_ms` and `bytes`
//! cover the whole answer and a stream cut short says so (`truncated="upstream"` when the
//! upstream reset or closed mid-body or went quiet past `stream_idle_timeout`,
//! `truncated="client"` when the client went away first).
//!
//! The line is the one tracing's formatter writes for a `credproxy::access` event, byte for
//! byte (a test renders both), but unless it is text in colour it is written straight to
//! the log's writer: tracing's formatter cost about 4.5 µs of CPU per request, as much as
//! all of credproxy's own code on the request path. `CREDPROXY_LOG` filters it as before.

use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, StatusCode, Uri};

use super::LogFormat;
use super::batched::BatchedStderr;
use crate::failure::Side;

/// The longest path a line shows, in bytes (cut at a character boundary).
const PATH_SHOWN: usize = 200;

/// Where lines go when they are written directly: set once by [`super::init`].
static DIRECT: OnceLock<Direct> = OnceLock::new();

struct Direct {
    writer: BatchedStderr,
    format: LogFormat,
}

/// From now on, access lines skip tracing's formatter and go to `writer` as `format`.
pub(super) fn write_directly(writer: BatchedStderr, format: LogFormat) {
    let _ = DIRECT.set(Direct { writer, format });
}

/// One request's access-log line, filled in as the pipeline learns more.
#[derive(Debug)]
pub struct AccessLog<'a> {
    method: Method,
    /// The request's path, owned: a held stream's line must not keep the request's `Uri`,
    /// whose bytes are hyper's and pin the connection's whole read buffer (16 KiB).
    path: Box<str>,
    pub route: Option<&'a str>,
    pub credential: Option<&'a str>,
    /// Who called (a JWT's `sub` and email, or a static token's name); never the token.
    pub caller: Option<Arc<str>>,
    pub attempts: u32,
    /// On a route with several targets: the target whose answer the client got.
    pub served_by: Option<&'a str>,
    pub upstream: Option<Duration>,
    pub error: Option<Side>,
}

/// Which side cut an answer short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The upstream reset or closed the stream mid-body, or went quiet for longer than the
    /// route allows.
    Upstream,
    /// The client closed its connection (or reset its stream) before the end.
    Client,
}

impl Cut {
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::Upstream => "upstream",
            Cut::Client => "client",
        }
    }
}

/// A streamed answer's line, written when the answer ends: owns what the line needs.
#[derive(Debug)]
pub struct Pending {
    method: Method,
    path: Box<str>,
    pub route: Option<String>,
    credential: Option<String>,
    caller: Option<Arc<str>>,
    attempts: u32,
    served_by: Option<String>,
    upstream: Option<Duration>,
    error: Option<Side>,
    status: StatusCode,
    started: Instant,
}

impl Pending {
    /// Writes the line: `bytes` of body sent, and who cut it short if anyone did.
    pub fn finish(self, bytes: u64, truncated: Option<Cut>) {
        AccessLog {
            method: self.method,
            path: self.path,
            route: self.route.as_deref(),
            credential: self.credential.as_deref(),
            caller: self.caller,
            attempts: self.attempts,
            served_by: self.served_by.as_deref(),
            upstream: self.upstream,
            error: self.error,
        }
        .write(self.status, self.started, bytes, truncated);
    }
}

impl<'a> AccessLog<'a> {
    pub fn start(method: &Method, uri: &Uri) -> Self {
        AccessLog {
            method: method.clone(),
            path: uri.path().into(),
            route: None,
            credential: None,
            caller: None,
            attempts: 0,
            served_by: None,
            upstream: None,
            error: None,
        }
    }

    /// The request's path (without the query).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Writes the line for an answer sent whole (`bytes` of body).
    pub fn finish(self, status: StatusCode, started: Instant, bytes: u64) {
        self.write(status, started, bytes, None);
    }

    /// For an answer that streams: the line, to be written when it ends.
    pub fn pending(self, status: StatusCode, started: Instant) -> Pending {
        Pending {
            method: self.method,
            path: self.path,
            route: self.route.map(str::to_string),
            credential: self.credential.map(str::to_string),
            caller: self.caller,
            attempts: self.attempts,
            served_by: self.served_by.map(str::to_string),
            upstream: self.upstream,
            error: self.error,
            status,
            started,
        }
    }

    fn write(self, status: StatusCode, started: Instant, bytes: u64, truncated: Option<Cut>) {
        let line = Line {
            method: self.method.as_str(),
            route: self.route.unwrap_or("-"),
            path: &self.path[..self.path.floor_char_boundary(PATH_SHOWN)],
            status: status.as_u16(),
            attempts: self.attempts,
            served_by: self.served_by,
            upstream_ms: self.upstream.map(|d| d.as_secs_f64() * 1000.0),
            total_ms: started.elapsed().as_secs_f64() * 1000.0,
            credential: self.credential.unwrap_or("-"),
            caller: self.caller.as_deref().unwrap_or("-"),
            error: self.error.map(Side::as_str),
            bytes,
            truncated: truncated.map(Cut::as_str),
        };
        let now = SystemTime::now();
        match DIRECT.get() {
            // Inside a span, tracing's formatter would add the span's context.
            Some(direct) if renderable(now) && tracing::Span::current().is_none() => {
                // As an event with the event's fields, so a filter on field names matches
                // exactly when it would match the event.
                if tracing::enabled!(
                    kind: tracing::metadata::Kind::EVENT,
                    target: "credproxy::access",
                    tracing::Level::INFO,
                    method,
                    route,
                    path,
                    status,
                    attempts,
                    served_by,
                    upstream_ms,
                    total_ms,
                    credential,
                    caller,
                    error,
                    bytes,
                    truncated
                ) {
                    let mut out = Vec::with_capacity(320);
                    line.render(direct.format, now, &mut out);
                    direct.writer.append(&out);
                }
            }
            _ => line.trace(),
        }
    }
}

/// A clock between 1970 and 9999, the years RFC 3339 timestamps spell with four digits
/// (tracing's formatter writes others its own way).
fn renderable(now: SystemTime) -> bool {
    const YEAR_10000: u64 = 253_402_300_800;
    now.duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|since| since.as_secs() < YEAR_10000)
}

/// The fields of one line, in the order they are written.
struct Line<'a> {
    method: &'a str,
    route: &'a str,
    path: &'a str,
    status: u16,
    attempts: u32,
    served_by: Option<&'a str>,
    upstream_ms: Option<f64>,
    total_ms: f64,
    credential: &'a str,
    caller: &'a str,
    error: Option<&'static str>,
    bytes: u64,
    truncated: Option<&'static str>,
}

impl Line<'_> {
    /// The same line as a tracing event, for tracing's formatter.
    fn trace(&self) {
        tracing::info!(
            target: "credproxy::access",
            method = %self.method,
            route = self.route,
            path = self.path,
            status = self.status,
            attempts = self.attempts,
            served_by = self.served_by,
            upstream_ms = self.upstream_ms,
            total_ms = self.total_ms,
            credential = self.credential,
            caller = self.caller,
            error = self.error,
            bytes = self.bytes,
            truncated = self.truncated,
        );
    }

    /// What tracing's formatter writes for [`Self::trace`]: text as `tracing_subscriber`'s
    /// full format without colours (strings and floats in their `Debug` form), or a JSON
    /// object as its flattened JSON format (values as `serde_json` writes them).
    fn render(&self, format: LogFormat, now: SystemTime, out: &mut Vec<u8>) {
        let time = humantime::format_rfc3339_micros(now);
        match format {
            LogFormat::Text => {
                let _ = write!(
                    out,
                    "{time}  INFO credproxy::access: method={} route={:?} path={:?} status={} attempts={}",
                    self.method, self.route, self.path, self.status, self.attempts
                );
                if let Some(target) = self.served_by {
                    let _ = write!(out, " served_by={target:?}");
                }
                if let Some(ms) = self.upstream_ms {
                    let _ = write!(out, " upstream_ms={ms:?}");
                }
                let _ = write!(
                    out,
                    " total_ms={:?} credential={:?} caller={:?}",
                    self.total_ms, self.credential, self.caller
                );
                if let Some(error) = self.error {
                    let _ = write!(out, " error={error:?}");
                }
                let _ = write!(out, " bytes={}", self.bytes);
                if let Some(truncated) = self.truncated {
                    let _ = write!(out, " truncated={truncated:?}");
                }
            }
            LogFormat::Json => {
                let field = |out: &mut Vec<u8>, name: &str, value: &dyn erased::Json| {
                    let _ = write!(out, ",\"{name}\":");
                    value.write_json(out);
                };
                let _ = write!(out, "{{\"timestamp\":\"{time}\",\"level\":\"INFO\"");
                field(out, "method", &self.method);
                field(out, "route", &self.route);
                field(out, "path", &self.path);
                field(out, "status", &self.status);
                field(out, "attempts", &self.attempts);
                if let Some(target) = self.served_by {
                    field(out, "served_by", &target);
                }
                if let Some(ms) = self.upstream_ms {
                    field(out, "upstream_ms", &ms);
                }
                field(out, "total_ms", &self.total_ms);
                field(out, "credential", &self.credential);
                field(out, "caller", &self.caller);
                if let Some(error) = self.error {
                    field(out, "error", &error);
                }
                field(out, "bytes", &self.bytes);
                if let Some(truncated) = self.truncated {
                    field(out, "truncated", &truncated);
                }
                out.extend_from_slice(b",\"target\":\"credproxy::access\"}");
            }
        }
        out.push(b'\n');
    }
}

/// A value written as `serde_json` writes it, behind one object-safe method.
mod erased {
    pub trait Json {
        fn write_json(&self, out: &mut Vec<u8>);
    }

    impl<T: serde::Serialize> Json for T {
        fn write_json(&self, out: &mut Vec<u8>) {
            let _ = serde_json::to_writer(out, self);
        }
    }
}

#[cfg(test)]
mod tests;
