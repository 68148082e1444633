//! Which headers cross the proxy: the policy (hop-by-hop, client credentials) and the strip
//! that applies it. Runs on every request before a credential is applied
//! (so a scheme signs only what will be sent) and on every response before it streams back.

use http::header::{CONNECTION, HeaderName};
use http::{HeaderMap, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus those credproxy sets itself (`host`, framing):
/// never copied from one side to the other.
pub fn is_never_forwarded(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "trailer"
            | "proxy-authorization"
            | "host"
            | "content-length"
            | "expect"
    )
}

/// Credentials a client may send (a dummy key, its own signature): removed so that only
/// the credential credproxy applies reaches the upstream.
pub fn is_client_credential(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization"
            | "x-api-key"
            | "api-key"
            | "x-goog-api-key"
            | "proxy-authorization"
            | "cookie"
    ) || name.as_str().starts_with("x-amz-")
}

/// Removes client credentials, hop-by-hop headers, the headers that `Connection` names,
/// `Host` and `Content-Length` (the client sets them for the upstream). Every other header
/// is left byte for byte. Allocates only when something is removed.
pub fn strip_request(headers: &mut HeaderMap) {
    strip(headers, |name| {
        is_never_forwarded(name) || is_client_credential(name)
    });
}

/// Removes hop-by-hop headers from an upstream response; hyper frames the response to the
/// client itself. `Content-Length` stays: it is end-to-end and the body is passed as is.
pub fn strip_response(headers: &mut HeaderMap) {
    strip(headers, |name| {
        is_never_forwarded(name)
            && *name != http::header::CONTENT_LENGTH
            && *name != http::header::HOST
    });
}

fn strip(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let mut remove: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(CONNECTION) {
        remove.extend(connection_tokens(value));
    }
    remove.extend(headers.keys().filter(|name| doomed(name)).cloned());
    for name in remove {
        headers.remove(&name);
    }
}

fn connection_tokens(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn request_keeps_end_to_end_headers_and_drops_credentials_and_hops() {
        let mut h = map(&[
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "a,b"),
            ("x-claude-code-session-id", "s-1"),
            ("user-agent", "claude-cli/2"),
            ("x-api-key", "dummy"),
            ("authorization", "Bearer dummy"),
            ("api-key", "dummy"),
            ("x-goog-api-key", "dummy"),
            ("x-amz-date", "20250101T000000Z"),
            ("x-amz-security-token", "t"),
            ("cookie", "c=1"),
            ("proxy-authorization", "Basic x"),
            ("host", "127.0.0.1:8787"),
            ("content-length", "12"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
        ]);
        strip_request(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "anthropic-beta",
                "anthropic-version",
                "user-agent",
                "x-claude-code-session-id"
            ]
        );
        assert_eq!(h["anthropic-beta"], "a,b");
    }

    #[test]
    fn response_keeps_length_and_drops_hops() {
        let mut h = map(&[
            ("content-type", "text/event-stream"),
            ("content-length", "10"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("request-id", "req_1"),
        ]);
        strip_response(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-length", "content-type", "request-id"]);
    }
}
