//! The replay policy, kept apart from the send loop ([`super::forward`]) as linkerd2-proxy
//! keeps its retry policy apart from the service that sends: the scheme's classifier
//! judges the first answer (reading a small error body when it must), and the verdict
//! decides whether the answer goes to the client or is dropped unseen for one replay, and
//! what is renewed first — the cached value, or only the signature.
//!
//! On a route with several targets it also decides, for [`super::failover`] to carry out,
//! which answers and errors are the target's failure rather than the request's
//! ([`Failure`]), how long a failed target is left alone ([`cooldown`]), and whether a
//! stream's first event says it failed ([`Framing`]).

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use super::deliver::Answer;
use super::{Exchange, Proxy, UpstreamResponse};
use crate::credentials::SharedCredential;
use crate::schemes::{Scheme, Verdict};
use crate::telemetry::metrics::RetryLabels;

/// What to do with a first answer.
pub(super) enum Decision {
    Deliver,
    /// Drop it unseen and send the request once more.
    Replay,
}

impl Proxy {
    /// Decides on a first answer (status `status`, sent with the credential value
    /// `applied`) and renews what the verdict names.
    pub(super) fn decide(
        &self,
        exchange: &Exchange<'_>,
        verdict: Verdict,
        status: StatusCode,
        applied: &SharedCredential,
    ) -> Decision {
        let route = &exchange.route.prefix;
        let cached = &exchange.injector.cached;
        match verdict {
            Verdict::Deliver | Verdict::Inspect { .. } => Decision::Deliver,
            Verdict::Resign => {
                tracing::debug!(route = %route, "upstream rejected the signature; signing again");
                Decision::Replay
            }
            Verdict::Refresh => {
                tracing::info!(route = %route, credential = %cached.name(),
                    status = status.as_u16(), "upstream rejected the credential; refreshing and replaying once");
                cached.invalidate(applied);
                self.shared
                    .metrics
                    .auth_retries
                    .get_or_create(&RetryLabels {
                        route: route.clone(),
                        credential: cached.name().to_string(),
                    })
                    .inc();
                Decision::Replay
            }
        }
    }
}

/// Applies the scheme's classifier to a first answer. When it asks to see the body and the
/// body is small and of known length (auth errors are), reads it; the answer then carries
/// exactly those bytes. Anything larger streams on untouched.
pub(super) async fn classify(
    scheme: &Scheme,
    response: Response<UpstreamResponse>,
    read_timeout: Duration,
) -> Result<(Answer, Verdict), super::stream::BoxError> {
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
    let bytes: Bytes = tokio::time::timeout(read_timeout, body.collect())
        .await
        .map_err(|_| "the upstream stopped sending its error body")??
        .to_bytes();
    let verdict = match scheme.classify_body(parts.status, &parts.headers, &bytes) {
        Verdict::Inspect { .. } => Verdict::Deliver,
        verdict => verdict,
    };
    Ok((Answer::Read(parts, bytes), verdict))
}

/// Why a target did not serve a request that then goes to the next target (the `reason`
/// of `credproxy_failovers_total`, the `outcome` of `credproxy_target_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// 429, 529, 500, 502, 503 or 504 (or a Bedrock throttling answer).
    Status(u16),
    /// It could not be connected to (or its answer's head not read).
    Connect,
    /// It did not answer within `upstream_timeout`.
    Timeout,
    /// Its credential could not be obtained or applied.
    Credential,
    /// A streamed answer whose first event was an `error` event.
    ErrorEvent,
}

impl Failure {
    pub(super) fn label(self) -> &'static str {
        match self {
            Failure::Status(429) => "429",
            Failure::Status(529) => "529",
            Failure::Status(500) => "500",
            Failure::Status(502) => "502",
            Failure::Status(503) => "503",
            Failure::Status(504) => "504",
            Failure::Status(_) => "throttled",
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Credential => "credential",
            Failure::ErrorEvent => "error_event",
        }
    }

    /// A credproxy error on a target that another target may not share (an error of the
    /// client's request is the same everywhere, so it is not one).
    pub(super) fn of_error(error: &super::ProxyError) -> Option<Failure> {
        use super::ProxyError as E;
        match error {
            E::UpstreamUnreachable { .. } => Some(Failure::Connect),
            E::UpstreamTimeout { .. } => Some(Failure::Timeout),
            E::Credential { .. } | E::Apply { .. } => Some(Failure::Credential),
            _ => None,
        }
    }

    /// An upstream answer that is the target's failure, not the request's: the statuses
    /// of rate limits, overload and server errors, and Bedrock's throttling whatever its
    /// status.
    pub(super) fn of_answer(status: StatusCode, headers: &http::HeaderMap) -> Option<Failure> {
        match status.as_u16() {
            code @ (429 | 529 | 500 | 502 | 503 | 504) => Some(Failure::Status(code)),
            code if throttled(headers) => Some(Failure::Status(code)),
            _ => None,
        }
    }
}

/// Bedrock's way of saying "slow down": `x-amzn-errortype: ThrottlingException:...`.
fn throttled(headers: &http::HeaderMap) -> bool {
    headers
        .get("x-amzn-errortype")
        .is_some_and(|v| v.as_bytes().starts_with(b"ThrottlingException"))
}

/// The longest an upstream's own "retry after" is honoured.
const LONGEST_TOLD: Duration = Duration::from_secs(24 * 3600);

/// How long a target that failed is left alone: until the time its answer names
/// (`retry-after`, else the `anthropic-ratelimit-*-reset` of an exhausted limit), else
/// by backoff on its consecutive `failures` (1 s, 2 s, 4 s, … up to `max_cooldown`).
pub(super) fn cooldown(
    answer: Option<&http::HeaderMap>,
    failures: u32,
    max_cooldown: Duration,
    now: std::time::SystemTime,
) -> Duration {
    answer
        .and_then(|headers| told(headers, now))
        .map(|told| told.min(LONGEST_TOLD))
        .unwrap_or_else(|| backoff(failures, max_cooldown))
}

/// 1 s after the first failure, doubling with each further one, capped at `max`.
pub(super) fn backoff(failures: u32, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    Duration::from_secs(1u64 << exponent).min(max)
}

/// The wait an answer names: `retry-after` (seconds or an HTTP date), else the latest
/// `anthropic-ratelimit-*-reset` among limits whose `-remaining` is 0 (or the earliest
/// reset when none says it is exhausted).
fn told(headers: &http::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    if let Some(value) = headers.get(http::header::RETRY_AFTER)
        && let Ok(text) = value.to_str()
    {
        let text = text.trim();
        if let Ok(seconds) = text.parse::<f64>()
            && seconds.is_finite()
            && seconds >= 0.0
        {
            return Some(Duration::from_secs_f64(
                seconds.min(LONGEST_TOLD.as_secs_f64()),
            ));
        }
        if let Ok(at) = httpdate::parse_http_date(text) {
            return Some(at.duration_since(now).unwrap_or_default());
        }
    }
    let mut exhausted: Option<Duration> = None;
    let mut earliest: Option<Duration> = None;
    for (name, value) in headers {
        let Some(limit) = name
            .as_str()
            .strip_prefix("anthropic-ratelimit-")
            .and_then(|rest| rest.strip_suffix("-reset"))
        else {
            continue;
        };
        let Some(at) = value
            .to_str()
            .ok()
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim()).ok())
        else {
            continue;
        };
        let left = at.duration_since(now).unwrap_or_default();
        let remaining = format!("anthropic-ratelimit-{limit}-remaining");
        if headers
            .get(remaining.as_str())
            .is_some_and(|v| v.as_bytes() == b"0")
        {
            exhausted = Some(exhausted.map_or(left, |e| e.max(left)));
        }
        earliest = Some(earliest.map_or(left, |e| e.min(left)));
    }
    exhausted.or(earliest)
}

/// How a streamed answer's events are framed, for holding its head until the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// `text/event-stream`: events end with a blank line.
    Sse,
    /// Bedrock's `application/vnd.amazon.eventstream`: length-prefixed binary messages.
    EventStream,
}

impl Framing {
    /// The framing of a successful streamed answer, `None` for any other answer.
    pub(super) fn of(headers: &http::HeaderMap) -> Option<Framing> {
        let content_type = headers.get(http::header::CONTENT_TYPE)?.as_bytes();
        if content_type.starts_with(b"text/event-stream") {
            Some(Framing::Sse)
        } else if content_type.starts_with(b"application/vnd.amazon.eventstream") {
            Some(Framing::EventStream)
        } else {
            None
        }
    }

    /// Whether `head` holds the whole first event.
    pub(super) fn first_complete(self, head: &[u8]) -> bool {
        match self {
            Framing::Sse => {
                head.windows(2).any(|w| w == b"\n\n") || head.windows(4).any(|w| w == b"\r\n\r\n")
            }
            Framing::EventStream => first_message_len(head).is_some_and(|len| head.len() >= len),
        }
    }

    /// Whether the first event (`head` holds it) says the target failed: an SSE `error`
    /// event (`overloaded_error`, `api_error`), or an event-stream exception message.
    pub(super) fn first_failed(self, head: &[u8]) -> bool {
        match self {
            Framing::Sse => error_event_first(head),
            Framing::EventStream => {
                let first = &head[..first_message_len(head).unwrap_or(0).min(head.len())];
                // The header `:message-type` (string, type 7) of length 9: `exception`.
                let exception: &[u8] = b":message-type\x07\x00\x09exception";
                first.windows(exception.len()).any(|w| w == exception)
            }
        }
    }
}

/// An event-stream message's total length, its first four bytes (big-endian).
fn first_message_len(head: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = head.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Whether the first event of a held SSE stream (`head`: its bytes up to the end of that
/// event) is an `error` event (`overloaded_error`, `api_error`): the target failed.
fn error_event_first(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let event = text.split("\n\n").next().unwrap_or_default();
    event.lines().any(|line| {
        line.strip_prefix("event:")
            .is_some_and(|name| name.trim() == "error")
            || line
                .strip_prefix("data:")
                .is_some_and(|data| data.trim_start().starts_with("{\"type\":\"error\""))
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use http::{HeaderMap, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_statuses_of_rate_limits_overload_and_server_errors_fail_over() {
        let none = HeaderMap::new();
        for code in [429, 529, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(
                Failure::of_answer(status, &none),
                Some(Failure::Status(code))
            );
        }
        for code in [200, 400, 401, 403, 404, 413, 501] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(Failure::of_answer(status, &none), None, "{code}");
        }
        let throttled = headers(&[("x-amzn-errortype", "ThrottlingException:http://internal")]);
        assert_eq!(
            Failure::of_answer(StatusCode::BAD_REQUEST, &throttled),
            Some(Failure::Status(400))
        );
        assert_eq!(Failure::Status(400).label(), "throttled");
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_cap() {
        let max = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(1000, max), max);
        assert_eq!(backoff(3, Duration::from_secs(3)), Duration::from_secs(3));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date_wins_over_backoff() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let max = Duration::from_secs(60);
        let seconds = headers(&[("retry-after", "7")]);
        assert_eq!(
            cooldown(Some(&seconds), 5, max, now),
            Duration::from_secs(7)
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        let dated = headers(&[("retry-after", &date)]);
        assert_eq!(cooldown(Some(&dated), 1, max, now), Duration::from_secs(90));
        assert_eq!(cooldown(None, 3, max, now), Duration::from_secs(4));
        let nonsense = headers(&[("retry-after", "soon")]);
        assert_eq!(
            cooldown(Some(&nonsense), 1, max, now),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_reset_of_the_exhausted_anthropic_limit_is_the_wait() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |s| humantime::format_rfc3339_seconds(now + Duration::from_secs(s)).to_string();
        let (r, t) = (at(5), at(40));
        let exhausted = headers(&[
            ("anthropic-ratelimit-requests-remaining", "12"),
            ("anthropic-ratelimit-requests-reset", &r),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", &t),
        ]);
        let max = Duration::from_secs(60);
        assert_eq!(
            cooldown(Some(&exhausted), 1, max, now),
            Duration::from_secs(40)
        );
        let none_exhausted = headers(&[
            ("anthropic-ratelimit-requests-reset", &r),
            ("anthropic-ratelimit-tokens-reset", &t),
        ]);
        assert_eq!(
            cooldown(Some(&none_exhausted), 1, max, now),
            Duration::from_secs(5)
        );
    }

    /// An event-stream message whose only header is `:message-type` = `kind`.
    fn message(kind: &[u8]) -> Vec<u8> {
        let name = b":message-type";
        let mut headers = vec![name.len() as u8];
        headers.extend_from_slice(name);
        headers.extend_from_slice(&[7, 0, kind.len() as u8]);
        headers.extend_from_slice(kind);
        let total = 12 + headers.len() + 4;
        let mut message = (total as u32).to_be_bytes().to_vec();
        message.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        message.extend_from_slice(&[0; 4]);
        message.extend_from_slice(&headers);
        message.extend_from_slice(&[0; 4]);
        message
    }

    #[test]
    fn an_event_stream_exception_first_is_a_failure_and_its_length_completes_it() {
        let framing = Framing::EventStream;
        let exception = message(b"exception");
        assert!(!framing.first_complete(&exception[..10]));
        assert!(framing.first_complete(&exception));
        assert!(framing.first_failed(&exception));
        let event = message(b"event");
        assert!(framing.first_complete(&event));
        assert!(!framing.first_failed(&event));
        // An exception in a later message is not the first event's.
        assert!(!framing.first_failed(&[event, exception].concat()));
    }

    #[test]
    fn only_an_error_event_first_is_a_failure_of_the_stream() {
        assert!(error_event_first(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n"
        ));
        assert!(error_event_first(
            b"data: {\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}\n\n"
        ));
        assert!(!error_event_first(
            b"event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: error\n\n"
        ));
    }
}
