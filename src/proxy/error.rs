//! Every way a request can fail inside credproxy, each with a side, one status and a JSON
//! body in the Anthropic error shape, so SDKs show the message as they show any API error.
//! Messages name the route, the credential and the cause — never a secret.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use super::ResponseBody;
use crate::callers::{CallerError, Refusal};
use crate::credentials::{FailureKind, SourceError};
use crate::failure::{Side, chain};
use crate::schemes::ApplyError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Caller(CallerError),
    #[error("{0}")]
    CallerRefused(Refusal),
    #[error(
        "requests for host `{host}` are refused (DNS rebinding protection); call credproxy as localhost or 127.0.0.1, or add the name to `allowed_hosts` in the config"
    )]
    HostNotAllowed { host: String },
    #[error(
        "browser requests from origin `{origin}` are refused; add it to `allowed_origins` in the config if you trust that page with your credentials"
    )]
    OriginNotAllowed { origin: String },
    #[error(
        "cross-site browser requests are refused; add the calling page's origin to `allowed_origins` in the config if you trust it"
    )]
    CrossSite,
    #[error("method {method} is not proxied; credproxy forwards API requests only")]
    MethodNotAllowed { method: String },
    #[error("no route for `{path}`; the configured prefixes are {prefixes}")]
    NoRoute { path: String, prefixes: String },
    #[error(
        "the request body is larger than the limit of {limit} bytes; raise `max_body` in the config to send larger requests"
    )]
    BodyTooLarge { limit: usize },
    #[error("the request body could not be read: {cause}")]
    BodyUnreadable { cause: String },
    #[error("the request body did not arrive in time (a pause over {}, or over ten times that in all); send it without pauses (or raise `body_read_timeout`)", humantime::format_duration(*.waited))]
    BodyStalled { waited: Duration },
    #[error(
        "{problem}; send exactly one Host header naming credproxy (localhost, 127.0.0.1 or a name in `allowed_hosts`)"
    )]
    BadHost { problem: &'static str },
    #[error(
        "the request path `{path}` {problem}; credproxy forwards only plain paths below a route's prefix"
    )]
    BadPath { path: String, problem: &'static str },
    #[error("route `{route}` has {limit} upstream requests in flight (`max_in_flight`) and none finished within {}; try again shortly", humantime::format_duration(*.waited))]
    Overloaded {
        route: String,
        limit: usize,
        waited: Duration,
    },
    #[error("route `{route}` translates the Anthropic API: {cause}")]
    Translate {
        route: String,
        cause: super::translate::TranslateError,
    },
    #[error("route `{route}` is disabled: {reason}")]
    RouteDisabled { route: String, reason: String },
    #[error("route `{route}` could not get credential `{credential}` ({source_name}): {cause}")]
    Credential {
        route: String,
        credential: String,
        source_name: String,
        cause: Arc<SourceError>,
    },
    #[error("route `{route}` could not apply credential `{credential}`: {cause}")]
    Apply {
        route: String,
        credential: String,
        cause: ApplyError,
    },
    #[error("route `{route}` could not reach {upstream}: {}", chain(.cause.as_ref()))]
    UpstreamUnreachable {
        route: String,
        upstream: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("route `{route}`: {upstream} is busy: {busy}; try again shortly")]
    UpstreamBusy {
        route: String,
        upstream: String,
        busy: crate::client::http2::Busy,
    },
    #[error("{}", quota_message(.0))]
    QuotaSpent(crate::usage::quota::Spent),
    #[error(
        "the usage store cannot be reached and `on_store_error = \"deny\"`: model requests are refused until it is back"
    )]
    UsageStoreDown,
    #[error("the `{header}` header {problem}; write up to 128 letters, digits and `._:@+-`")]
    BadTag {
        header: http::HeaderName,
        problem: &'static str,
    },
    #[error("route `{route}`: {upstream} did not answer within {}", humantime::format_duration(*.waited))]
    UpstreamTimeout {
        route: String,
        upstream: String,
        waited: Duration,
    },
    /// A route with several targets found none that could take the request.
    #[error("route `{route}` found no target to serve the request: {states}")]
    TargetsUnavailable {
        route: String,
        /// Each target's state: healthy, cooling for how long, last error.
        states: String,
        /// The shortest wait until a target may be tried again, when all are cooling.
        retry_after: Option<Duration>,
    },
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            ProxyError::Caller(_) | ProxyError::CallerRefused(_) => Side::Caller,
            ProxyError::HostNotAllowed { .. }
            | ProxyError::OriginNotAllowed { .. }
            | ProxyError::CrossSite
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::NoRoute { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BodyUnreadable { .. }
            | ProxyError::BodyStalled { .. }
            | ProxyError::BadHost { .. }
            | ProxyError::Translate { .. }
            | ProxyError::QuotaSpent(_)
            | ProxyError::BadTag { .. }
            | ProxyError::BadPath { .. } => Side::Client,
            ProxyError::Credential { .. }
            | ProxyError::Apply { .. }
            | ProxyError::RouteDisabled { .. } => Side::CredentialSource,
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamBusy { .. }
            | ProxyError::UsageStoreDown
            | ProxyError::TargetsUnavailable { .. }
            | ProxyError::Overloaded { .. } => Side::Upstream,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Caller(CallerError::KeysUnavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Caller(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Credential { cause, .. } if cause.kind == FailureKind::LoginRequired => {
                StatusCode::UNAUTHORIZED
            }
            ProxyError::CallerRefused(_)
            | ProxyError::HostNotAllowed { .. }
            | ProxyError::OriginNotAllowed { .. }
            | ProxyError::CrossSite => StatusCode::FORBIDDEN,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::Translate { cause, .. } => cause.status(),
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyUnreadable { .. }
            | ProxyError::BadHost { .. }
            | ProxyError::BadTag { .. }
            | ProxyError::BadPath { .. } => StatusCode::BAD_REQUEST,
            ProxyError::QuotaSpent(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Overloaded { .. }
            | ProxyError::UpstreamBusy { .. }
            | ProxyError::UsageStoreDown
            | ProxyError::TargetsUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Credential { .. }
            | ProxyError::Apply { .. }
            | ProxyError::RouteDisabled { .. }
            | ProxyError::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The Anthropic API's error type for this status.
    fn error_type(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => "invalid_request_error",
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => "timeout_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            _ => "api_error",
        }
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let body = serde_json::json!({
            "type": "error",
            "error": {
                "type": self.error_type(),
                "message": format!("credproxy: {self}"),
            }
        });
        let status = self.status();
        let side = self.side();
        let retry_after = match &self {
            ProxyError::Overloaded { .. } | ProxyError::UpstreamBusy { .. } => Some(1),
            ProxyError::TargetsUnavailable { retry_after, .. } => {
                Some(retry_after.map_or(1, retry_after_seconds))
            }
            ProxyError::QuotaSpent(spent) => Some(retry_after_seconds(spent.frees_in)),
            _ => None,
        };
        // A caller refused for anything but an aged token gets the same answer on a retry;
        // `x-should-retry: false` stops the Anthropic SDKs' (and Claude Code's) retry loop.
        let final_answer = match &self {
            ProxyError::Caller(error) => !error.fresh_token_helps(),
            ProxyError::CallerRefused(_) => true,
            ProxyError::Credential { cause, .. } => cause.kind == FailureKind::LoginRequired,
            // A day's or month's quota: retrying within the SDKs' backoff cannot help.
            ProxyError::QuotaSpent(spent) => spent.frees_in.as_secs() > 60,
            _ => false,
        };
        let challenge = matches!(self, ProxyError::Caller(_)) && status == StatusCode::UNAUTHORIZED;
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-credproxy-error", HeaderValue::from_static(side.as_str()));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let ProxyError::QuotaSpent(spent) = &self
            && let Ok(name) = HeaderValue::from_str(&spent.quota)
        {
            headers.insert("x-credproxy-quota", name);
        }
        if final_answer {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"credproxy\""),
            );
        }
        response
    }
}

fn quota_message(spent: &crate::usage::quota::Spent) -> String {
    if spent.in_flight {
        format!(
            "quota `{}` ({}) is nearly spent and requests in flight hold the rest; try again when one ends",
            spent.quota, spent.limit
        )
    } else {
        format!(
            "quota `{}` is spent ({}); it frees in {}",
            spent.quota,
            spent.limit,
            humantime::format_duration(spent.frees_in)
        )
    }
}

/// A wait as `retry-after` gives it: whole seconds, rounded up, at least 1.
pub(super) fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}
