//! Phase 1, before anything else: who may ask. The local-safety guard (foreign `Host`
//! names, cross-site browser requests), the caller's token and `email_domains` when
//! `[callers]` is set, and the methods and paths credproxy never forwards.

use std::sync::Arc;

use http::Method;

use super::{Proxy, ProxyError, route};
use crate::callers::{Caller, CallerError};
use crate::telemetry::AccessLog;
use crate::telemetry::metrics::ReasonLabels;

impl Proxy {
    /// The caller (with `[callers]`), or why the request is refused.
    pub(super) async fn admit(
        &self,
        head: &http::request::Parts,
        log: &mut AccessLog<'_>,
    ) -> Result<Option<Arc<Caller>>, ProxyError> {
        self.guard.check(head)?;
        let caller = match &self.shared.callers {
            Some(callers) => {
                // Boxed: a first token may fetch the identity provider's keys, a large
                // future that requests without callers should not carry.
                let caller = Box::pin(callers.authenticate(&head.headers))
                    .await
                    .map_err(|e| self.caller_error(probe(head), ProxyError::Caller(e)))?;
                log.caller = Some(Arc::clone(&caller.label));
                callers
                    .admit(&caller)
                    .map_err(|e| self.caller_error(false, ProxyError::CallerRefused(e)))?;
                Some(caller)
            }
            None => None,
        };
        // CONNECT would turn credproxy into a tunnel; TRACE would echo the request back.
        if head.method == Method::CONNECT || head.method == Method::TRACE {
            return Err(ProxyError::MethodNotAllowed {
                method: head.method.to_string(),
            });
        }
        if let Some(problem) = route::unsafe_path(head.uri.path()) {
            return Err(ProxyError::BadPath {
                path: head.uri.path().chars().take(200).collect(),
                problem,
            });
        }
        Ok(caller)
    }

    /// Counts a caller refusal by its reason; a client's start-up probe that carries no
    /// token (`probe`) apart, so dashboards of refusals show refusals.
    pub(super) fn caller_error(&self, probe: bool, error: ProxyError) -> ProxyError {
        let reason = match &error {
            ProxyError::Caller(CallerError::Missing { .. }) if probe => "probe",
            ProxyError::Caller(e) => e.reason(),
            ProxyError::CallerRefused(r) => r.reason,
            _ => "other",
        };
        self.shared
            .metrics
            .caller_rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
        error
    }
}

/// Whether a request is one of the calls Claude Code makes at start-up without a token
/// (docs/research/claude-code-headers.md): `HEAD` on its base URL to warm the connection,
/// and Bedrock mode's `GET …/inference-profiles`.
fn probe(head: &http::request::Parts) -> bool {
    head.method == Method::HEAD
        || (head.method == Method::GET && head.uri.path().ends_with("/inference-profiles"))
}
