//! Phase 3½, once the body is read: whose request this is for usage (caller, groups, the
//! client's tag, route, model), and whether its quotas have room (429 naming the quota
//! when not; nothing reaches the upstream). The tag header is removed here, so the
//! upstream never sees it. Model requests are the `POST`s but token counting: a model
//! list, a probe or a token count is neither counted nor limited.

use bytes::Bytes;
use http::Method;

use super::{Proxy, ProxyError};
use crate::callers::Caller;
use crate::config::ResolvedRoute;
use crate::usage::{Facts, Refusal, Ticket};

/// The longest tag kept (a benchmark run id, a project name).
const TAG_MAX: usize = 128;

impl Proxy {
    pub(super) fn account(
        &self,
        head: &mut http::request::Parts,
        body: &Bytes,
        caller: Option<&Caller>,
        route: &ResolvedRoute,
    ) -> Result<Option<Ticket>, ProxyError> {
        let tag = self.tag(head)?;
        if head.method != Method::POST || counts_tokens(head.uri.path()) {
            return Ok(None);
        }
        let facts = Facts {
            // `local`: credproxy does not check callers.
            caller: caller.map_or_else(|| "local".to_string(), Caller::usage_name),
            groups: caller.map(|c| c.groups.clone()).unwrap_or_default(),
            tag,
            route: route.prefix.clone(),
            model: crate::usage::model::of_request(head.uri.path(), body),
        };
        match self.shared.usage.admit(facts, body.len()) {
            Ok(ticket) => Ok(Some(ticket)),
            Err(Refusal::Spent(spent)) => Err(ProxyError::QuotaSpent(spent)),
            Err(Refusal::StoreDown) => Err(ProxyError::UsageStoreDown),
        }
    }

    /// The client's tag, checked, and taken off the request.
    fn tag(&self, head: &mut http::request::Parts) -> Result<Option<String>, ProxyError> {
        let header = &self.shared.tag_header;
        let Some(value) = head.headers.remove(header) else {
            return Ok(None);
        };
        let bad = |problem| ProxyError::BadTag {
            header: header.clone(),
            problem,
        };
        let text = value.to_str().map_err(|_| bad("is not plain text"))?.trim();
        if text.is_empty() {
            return Err(bad("is empty"));
        }
        if text.len() > TAG_MAX {
            return Err(bad("is longer than 128 characters"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._:/@+=-".contains(c);
        if !text.chars().all(allowed) {
            return Err(bad(
                "holds a character other than letters, digits and `._:/@+=-`",
            ));
        }
        Ok(Some(text.to_string()))
    }
}

/// Token counting (`/v1/messages/count_tokens`, Bedrock's and Vertex's `count-tokens`) is
/// free and answers no usage: not a model request.
fn counts_tokens(path: &str) -> bool {
    path.ends_with("/count_tokens")
        || path.ends_with("/count-tokens")
        || path.ends_with(":countTokens")
}
