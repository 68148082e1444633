//! Phase 6: the answer as the client gets it. Hop-by-hop headers removed; a streaming body
//! passed through frame by frame ([`super::stream`], where observers tap it) holding the
//! route's slot until it ends; on a translating route, the answer put back in the
//! Anthropic shape by its [`Translator`].

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Either, Full};
use tokio::sync::OwnedSemaphorePermit;

use super::stream::UpstreamBody;
use super::translate::{Reshape, Translator};
use super::{Exchange, Proxy, ProxyError, ResponseBody, UpstreamResponse, respond, unreachable};
use crate::config::ResolvedTarget;
use crate::headers;

/// How much of a translated answer is read to rewrite it (errors, token counts).
const REWRITE_LIMIT: usize = 1024 * 1024;

/// An upstream answer: still streaming, or read whole because the classifier needed its
/// body (small auth errors).
pub(super) enum Answer {
    Streaming(Response<UpstreamResponse>),
    Read(http::response::Parts, Bytes),
}

impl Proxy {
    pub(super) async fn deliver(
        &self,
        exchange: Exchange<'_>,
        answer: Answer,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let Exchange {
            route,
            target,
            slot,
            translator,
            ..
        } = exchange;
        match translator {
            None => Ok(answer.into_response(target, slot, false)),
            Some(translator) => {
                let unreachable = |cause| unreachable(route, target, cause);
                self.translated(target, translator, answer, slot, unreachable)
                    .await
            }
        }
    }

    /// `unreachable`: the error for an answer that cannot be read or put back in shape.
    async fn translated(
        &self,
        target: &ResolvedTarget,
        translator: Translator<'_>,
        answer: Answer,
        slot: OwnedSemaphorePermit,
        unreachable: impl Fn(String) -> ProxyError,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (status, headers) = match &answer {
            Answer::Streaming(response) => (response.status(), response.headers()),
            Answer::Read(parts, _) => (parts.status, &parts.headers),
        };
        let (parts, bytes) = match (translator.reshape(status, headers), answer) {
            (Reshape::AsIs, answer) | (Reshape::EventStreamToSse, answer @ Answer::Read(..)) => {
                return Ok(answer.into_response(target, slot, false));
            }
            (Reshape::EventStreamToSse, answer) => {
                return Ok(answer.into_response(target, slot, true));
            }
            (Reshape::ReadWhole, Answer::Read(parts, bytes)) => (parts, bytes),
            (Reshape::ReadWhole, Answer::Streaming(response)) => {
                let (parts, body) = response.into_parts();
                let read = http_body_util::Limited::new(body, REWRITE_LIMIT).collect();
                let bytes = tokio::time::timeout(self.shared.upstream_timeout, read)
                    .await
                    .map_err(|_| "the upstream stopped sending its answer".into())
                    .and_then(|r| r.map(|c| c.to_bytes()))
                    .map_err(|e: super::stream::BoxError| {
                        unreachable(format!("its answer could not be read: {e}"))
                    })?;
                (parts, bytes)
            }
        };
        let (status, json) = translator
            .rewrite(&parts, &bytes)
            .map_err(|missing| unreachable(missing.to_string()))?;
        Ok(respond::json(status, &json))
    }
}

impl Answer {
    /// The answer as the client gets it: hop-by-hop headers removed; a streaming body
    /// keeps the route's slot until it ends. `event_stream`: Bedrock's event stream,
    /// re-emitted as SSE.
    fn into_response(
        self,
        target: &ResolvedTarget,
        slot: OwnedSemaphorePermit,
        event_stream: bool,
    ) -> Response<ResponseBody> {
        match self {
            Answer::Streaming(response) => {
                let (mut parts, body) = response.into_parts();
                headers::strip_response(&mut parts.headers);
                let body = if event_stream {
                    parts.headers.remove(http::header::CONTENT_LENGTH);
                    parts.headers.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
                    );
                    UpstreamBody::new(body, Some(slot), target.stream_idle_timeout, true)
                        .with_event_stream()
                } else {
                    // An event can be added only to a stream without a declared length.
                    let sse = parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
                        && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
                    UpstreamBody::new(body, Some(slot), target.stream_idle_timeout, sse)
                };
                Response::from_parts(parts, Either::Left(body))
            }
            Answer::Read(mut parts, bytes) => {
                headers::strip_response(&mut parts.headers);
                Response::from_parts(parts, Either::Right(Full::new(bytes)))
            }
        }
    }
}
