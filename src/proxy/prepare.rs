//! Phase 4: the request as the upstream gets it. Client credentials, hop-by-hop headers
//! and the route's `strip_headers` removed; on a translating route, the Anthropic request
//! rewritten for the target's cloud (or answered here: the model list); the upstream URI
//! formed. On a route with several targets this runs once per target tried, from the
//! request as the client sent it.
//! The credential goes on later, afresh for every attempt ([`super::forward`]).

use bytes::Bytes;
use http::uri::PathAndQuery;

use super::target::Target;
use super::translate::{self, Plan, Translator};
use super::{Exchange, Proxy, ProxyError, ResponseBody, respond, route};
use crate::headers;

/// A request ready to send, or an answer credproxy gives itself.
pub(super) enum Prepared<'a> {
    Send(Exchange<'a>),
    Answer(http::Response<ResponseBody>),
}

impl Proxy {
    pub(super) fn prepare<'a>(
        &self,
        mut head: http::request::Parts,
        mut body: Bytes,
        target: Target<'a>,
    ) -> Result<Prepared<'a>, ProxyError> {
        let route = target.route;
        headers::strip_request(&mut head.headers);
        for name in &route.strip_headers {
            head.headers.remove(name);
        }
        let mut path_and_query = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut prefix = route.prefix.as_str();
        let mut translator = None;
        if let Some(translation) = target.target.translate.as_deref() {
            let below = match prefix {
                "/" => head.uri.path(),
                prefix => &head.uri.path()[prefix.len()..],
            };
            let refused = |cause| ProxyError::Translate {
                route: route.prefix.clone(),
                cause,
            };
            let plan = translate::plan(translation, &head.method, below, &mut head.headers, &body)
                .map_err(refused)?;
            match plan {
                Plan::Answer(status, json) => {
                    return Ok(Prepared::Answer(respond::json(status, &json)));
                }
                Plan::Forward(rewritten) => {
                    body = rewritten.body;
                    path_and_query = rewritten.path.parse().map_err(|e| {
                        refused(translate::TranslateError::NotJson(format!("bad path: {e}")))
                    })?;
                    prefix = "/";
                    head.headers.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    translator = Some(Translator {
                        translation,
                        operation: rewritten.operation,
                    });
                }
            }
        }
        head.uri = route::upstream_uri(prefix, target.upstream, &path_and_query).map_err(|e| {
            ProxyError::UpstreamUnreachable {
                route: route.prefix.clone(),
                upstream: target.upstream.to_string(),
                cause: format!("the upstream URI could not be formed: {e}").into(),
            }
        })?;
        Ok(Prepared::Send(Exchange {
            route,
            target: target.target,
            injector: target.injector,
            head,
            body,
            slot: target.slot,
            translator,
        }))
    }
}
