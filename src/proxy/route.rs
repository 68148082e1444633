//! The closed route table of one listener: path prefix → upstream + credential.
//!
//! Routing looks only at the request path; the client's Host, absolute-form URI or any
//! header cannot steer a request to a host that is not in the table.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::Uri;
use http::uri::{InvalidUriParts, PathAndQuery};
use tokio::sync::Semaphore;

use super::targets::{Registry, RouteHealth};
use crate::config::ResolvedRoute as Route;
use crate::upstream::Upstream;
pub use crate::upstream::unsafe_path;

#[derive(Debug)]
pub struct RouteTable {
    /// Longest prefix first.
    entries: Vec<Entry>,
    /// For the 404 message.
    prefixes: String,
}

/// A route and the slots for its upstream requests in flight.
#[derive(Debug)]
pub struct Entry {
    pub route: Route,
    pub slots: Arc<Semaphore>,
    /// Its targets' health, on a route with several targets.
    pub health: Option<Arc<RouteHealth>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        Self::inheriting(routes, None)
    }

    /// A table whose routes take over the in-flight slots of `previous`'s routes with the
    /// same prefix and limit, so a reload does not admit a second `max_in_flight` while
    /// the first generation's streams still run.
    pub fn inheriting(mut routes: Vec<Route>, previous: Option<&RouteTable>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let prefixes = routes
            .iter()
            .map(|r| format!("`{}`", r.prefix))
            .collect::<Vec<_>>()
            .join(", ");
        let entries = routes
            .into_iter()
            .map(|route| {
                let kept = previous.and_then(|p| {
                    p.entries
                        .iter()
                        .find(|e| {
                            e.route.prefix == route.prefix
                                && e.route.max_in_flight == route.max_in_flight
                        })
                        .map(|e| Arc::clone(&e.slots))
                });
                Entry {
                    slots: kept.unwrap_or_else(|| Arc::new(Semaphore::new(route.max_in_flight))),
                    route,
                    health: None,
                }
            })
            .collect();
        RouteTable { entries, prefixes }
    }

    /// The route with the longest prefix that matches whole path segments of `path`.
    pub fn find(&self, path: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| prefix_matches(&e.route.prefix, path))
    }

    pub fn prefixes(&self) -> &str {
        &self.prefixes
    }

    /// Gives each route with several targets its health from `registry` (the routes of
    /// the listener configured as `listener`).
    pub fn attach_health(&mut self, registry: &Registry, listener: std::net::SocketAddr) {
        for entry in &mut self.entries {
            entry.health = registry.find(listener, &entry.route.prefix).cloned();
        }
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The upstream URI for a request: the route's base path followed by the request's path
/// after the prefix, and the query, byte for byte as received (nothing is decoded or
/// re-encoded).
pub fn upstream_uri(
    prefix: &str,
    upstream: &Upstream,
    request: &PathAndQuery,
) -> Result<Uri, InvalidUriParts> {
    let rest = if prefix == "/" {
        request.as_str()
    } else {
        &request.as_str()[prefix.len()..]
    };
    let path_and_query = if upstream.base_path.is_empty() && rest.starts_with('/') {
        if prefix == "/" {
            request.clone()
        } else {
            from_parts(&[rest])
        }
    } else {
        // Nothing (or only a query) after the prefix: the base path itself, or `/`.
        let base = if upstream.base_path.is_empty() && !rest.starts_with('/') {
            "/"
        } else {
            &upstream.base_path
        };
        from_parts(&[base, rest])
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(upstream.scheme.clone());
    parts.authority = Some(upstream.authority.clone());
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts)
}

fn from_parts(pieces: &[&str]) -> PathAndQuery {
    let mut bytes = BytesMut::with_capacity(pieces.iter().map(|p| p.len()).sum());
    for piece in pieces {
        bytes.put_slice(piece.as_bytes());
    }
    // Every piece came from a parsed PathAndQuery or a validated config path.
    PathAndQuery::from_maybe_shared(Bytes::from(bytes)).expect("joined path is valid")
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use http::uri::{Authority, Scheme};

    use super::*;

    fn route(prefix: &str, upstream: &str) -> Route {
        let uri = Uri::from_str(upstream).unwrap();
        Route {
            prefix: prefix.to_string(),
            upstream: Ok(Upstream {
                scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTPS),
                authority: Authority::from_str(uri.authority().unwrap().as_str()).unwrap(),
                base_path: uri.path().trim_end_matches('/').to_string(),
            }),
            template: None,
            credential: 0,
            max_in_flight: 8,
            stream_idle_timeout: None,
            strip_headers: Vec::new(),
            groups: None,
            identity: None,
            translate: None,
            http2: Default::default(),
            // Only the prefix and upstream are read here.
            targets: Vec::new(),
            failover: crate::config::Failover::defaults(1),
        }
    }

    fn forwarded(route: &Route, path: &str) -> String {
        let upstream = route.upstream.as_ref().unwrap();
        upstream_uri(
            &route.prefix,
            upstream,
            &PathAndQuery::from_str(path).unwrap(),
        )
        .unwrap()
        .to_string()
    }

    #[test]
    fn longest_whole_segment_prefix_wins() {
        let table = RouteTable::new(vec![
            route("/", "https://api.anthropic.com"),
            route(
                "/bedrock",
                "https://bedrock-runtime.us-east-1.amazonaws.com",
            ),
            route(
                "/bedrock/control",
                "https://bedrock.us-east-1.amazonaws.com",
            ),
        ]);
        assert_eq!(table.find("/v1/messages").unwrap().route.prefix, "/");
        assert_eq!(table.find("/bedrock").unwrap().route.prefix, "/bedrock");
        assert_eq!(
            table.find("/bedrock/model/x/invoke").unwrap().route.prefix,
            "/bedrock"
        );
        assert_eq!(
            table.find("/bedrock/control/x").unwrap().route.prefix,
            "/bedrock/control"
        );
        assert_eq!(table.find("/bedrockx").unwrap().route.prefix, "/");
        let no_root = RouteTable::new(vec![route("/vertex", "https://aiplatform.googleapis.com")]);
        assert!(no_root.find("/v1/messages").is_none());
        assert_eq!(no_root.prefixes(), "`/vertex`");
    }

    #[test]
    fn dot_segments_in_any_spelling_are_refused() {
        for path in [
            "/s/../../etc/passwd",
            "/s/./x",
            "/s/%2e%2e/x",
            "/s/%2E%2e/x",
            "/s/.%2E/x",
            "/s/..",
            "/s/..%2fetc",
            "/s/%2e%2e%5cetc",
            "/..",
            "/s/%252e%252e/x",
            "/s/..;jsessionid=1/x",
        ] {
            assert_eq!(
                unsafe_path(path),
                Some("has a `.` or `..` segment"),
                "{path}"
            );
        }
        assert_eq!(unsafe_path("*"), Some("is not an absolute path"));
        for path in [
            "/v1/messages",
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
            "/model/arn:aws:bedrock:us-east-1:1:application-inference-profile%2Fabc/invoke",
            "/a/.hidden/b..c/...",
            "/%2e%2e%2e",
            "/",
        ] {
            assert_eq!(unsafe_path(path), None, "{path}");
        }
    }

    #[test]
    fn path_and_query_bytes_are_kept_exactly() {
        let anthropic = route("/", "https://api.anthropic.com");
        assert_eq!(
            forwarded(&anthropic, "/v1/messages?beta=true"),
            "https://api.anthropic.com/v1/messages?beta=true"
        );
        let bedrock = route(
            "/bedrock",
            "https://bedrock-runtime.us-east-1.amazonaws.com",
        );
        assert_eq!(
            forwarded(
                &bedrock,
                "/bedrock/model/arn:aws:bedrock:us-east-1:1:application-inference-profile%2Fabc/invoke"
            ),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/arn:aws:bedrock:us-east-1:1:application-inference-profile%2Fabc/invoke"
        );
        assert_eq!(
            forwarded(&bedrock, "/bedrock/model/a%3Ab%20c/invoke?x=%2F&y"),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/a%3Ab%20c/invoke?x=%2F&y"
        );
        let foundry = route("/foundry", "https://r.services.ai.azure.com/anthropic/");
        assert_eq!(
            forwarded(&foundry, "/foundry/v1/messages"),
            "https://r.services.ai.azure.com/anthropic/v1/messages"
        );
        assert_eq!(
            forwarded(&foundry, "/foundry"),
            "https://r.services.ai.azure.com/anthropic"
        );
        assert_eq!(
            forwarded(&foundry, "/foundry?q=1"),
            "https://r.services.ai.azure.com/anthropic?q=1"
        );
        assert_eq!(
            forwarded(&bedrock, "/bedrock?q=1"),
            "https://bedrock-runtime.us-east-1.amazonaws.com/?q=1"
        );
        assert_eq!(
            forwarded(&bedrock, "/bedrock"),
            "https://bedrock-runtime.us-east-1.amazonaws.com/"
        );
    }
}
