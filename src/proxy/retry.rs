//! The replay policy, kept apart from the send loop ([`super::forward`]) as linkerd2-proxy
//! keeps its retry policy apart from the service that sends: the scheme's classifier
//! judges the first answer (reading a small error body when it must), and the verdict
//! decides whether the answer goes to the client or is dropped unseen for one replay, and
//! what is renewed first — the cached value, or only the signature.

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
