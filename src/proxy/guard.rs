//! Local safety, checked before routing: only callers that name credproxy by a loopback or
//! configured host, and no browser page from another site. A web page can otherwise reach
//! 127.0.0.1 (DNS rebinding, cross-site fetch) and spend the user's credentials.

use std::net::{IpAddr, SocketAddr};

use http::header::{HOST, ORIGIN};
use http::request::Parts;

use super::error::ProxyError;
use crate::config::GuardConfig;

#[derive(Debug)]
pub struct Guard {
    config: GuardConfig,
    listener: SocketAddr,
}

impl Guard {
    pub fn new(config: GuardConfig, listener: SocketAddr) -> Self {
        Guard { config, listener }
    }

    /// Fails closed: a request must name its host (the `Host` header, or the URI's
    /// authority: HTTP/2's `:authority`, an absolute-form HTTP/1 target), once, as text,
    /// and every name it gives must be allowed.
    pub fn check(&self, request: &Parts) -> Result<(), ProxyError> {
        let mut headers = request.headers.get_all(HOST).iter();
        let header = headers.next();
        if headers.next().is_some() {
            return Err(ProxyError::BadHost {
                problem: "the request has more than one Host header",
            });
        }
        let header = match header {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| ProxyError::BadHost {
                problem: "the Host header is not text",
            })?),
        };
        let authority = request.uri.authority().map(|a| a.host());
        if header.is_none() && authority.is_none() {
            return Err(ProxyError::BadHost {
                problem: "the request names no host",
            });
        }
        for host in authority.into_iter().chain(header.map(host_part)) {
            if host.is_empty() {
                return Err(ProxyError::BadHost {
                    problem: "the Host header is empty",
                });
            }
            if !self.host_allowed(host) {
                return Err(ProxyError::HostNotAllowed {
                    host: printable(host),
                });
            }
        }
        if let Some(origin) = request.headers.get(ORIGIN) {
            let value = origin.to_str().unwrap_or("");
            let allowed = self
                .config
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(value));
            if !allowed {
                return Err(ProxyError::OriginNotAllowed {
                    origin: printable(value),
                });
            }
        } else if let Some(site) = request.headers.get("sec-fetch-site")
            && !(site.as_bytes().eq_ignore_ascii_case(b"same-origin")
                || site.as_bytes().eq_ignore_ascii_case(b"none"))
        {
            // `same-site` too: in localhost mode a page on another port of localhost is
            // the same site, and could spend the credentials with a GET. Without an
            // Origin, no allowed origin can vouch for it.
            return Err(ProxyError::CrossSite);
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.eq_ignore_ascii_case("localhost") {
            return true;
        }
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return ip.is_loopback() || ip == self.listener.ip();
        }
        self.config
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(bare))
    }
}

/// `host[:port]` → `host`, keeping IPv6 brackets.
fn host_part(value: &str) -> &str {
    if value.starts_with('[') {
        value.find(']').map_or(value, |end| &value[..=end])
    } else {
        value.split(':').next().unwrap_or(value)
    }
}

/// Hosts and origins go into error messages; keep them short and printable.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(100).collect()
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_missing_doubled_or_binary_host_fails_closed() {
        let g = guard(&[], &[]);
        let bad = |parts: Parts| matches!(g.check(&parts), Err(ProxyError::BadHost { .. }));
        assert!(bad(parts("/v1/messages", &[])), "no Host at all");
        assert!(bad(parts(
            "/v1/messages",
            &[("host", "localhost"), ("host", "localhost")]
        )));
        let mut binary = parts("/v1/messages", &[]);
        binary.headers.insert(
            HOST,
            http::HeaderValue::from_bytes(b"local\xffhost").unwrap(),
        );
        assert!(bad(binary));
        assert!(bad(parts("/v1/messages", &[("host", "")])));
        // HTTP/2: `:authority` arrives as the URI's authority and is checked the same way.
        assert!(
            g.check(&parts("http://localhost:8787/v1/messages", &[]))
                .is_ok()
        );
        assert!(matches!(
            g.check(&parts("http://evil.example/v1/messages", &[])),
            Err(ProxyError::HostNotAllowed { .. })
        ));
        // Both present: both must be allowed.
        assert!(
            g.check(&parts(
                "http://localhost/v1/messages",
                &[("host", "evil.example")]
            ))
            .is_err()
        );
    }

    fn guard(hosts: &[&str], origins: &[&str]) -> Guard {
        Guard::new(
            GuardConfig {
                allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
                allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            },
            "127.0.0.1:8787".parse().unwrap(),
        )
    }

    #[test]
    fn loopback_names_pass_and_other_hosts_are_refused() {
        let g = guard(&["proxy.internal"], &[]);
        for host in [
            "localhost:8787",
            "127.0.0.1:8787",
            "127.0.0.1",
            "[::1]:8787",
            "LOCALHOST",
            "proxy.internal:8787",
        ] {
            assert!(
                g.check(&parts("/v1/messages", &[("host", host)])).is_ok(),
                "{host}"
            );
        }
        for host in [
            "evil.example:8787",
            "10.0.0.5:8787",
            "localhost.evil.example",
        ] {
            assert!(
                matches!(
                    g.check(&parts("/", &[("host", host)])),
                    Err(ProxyError::HostNotAllowed { .. })
                ),
                "{host}"
            );
        }
        // An absolute-form request names its host in the URI.
        assert!(
            g.check(&parts(
                "http://evil.example/v1/messages",
                &[("host", "localhost")]
            ))
            .is_err()
        );
    }

    #[test]
    fn browser_requests_need_an_allowed_origin() {
        let g = guard(&[], &["http://localhost:3000"]);
        let host = ("host", "localhost:8787");
        assert!(
            g.check(&parts("/", &[host, ("origin", "http://localhost:3000")]))
                .is_ok()
        );
        assert!(matches!(
            g.check(&parts("/", &[host, ("origin", "https://evil.example")])),
            Err(ProxyError::OriginNotAllowed { .. })
        ));
        assert!(matches!(
            g.check(&parts("/", &[host, ("sec-fetch-site", "cross-site")])),
            Err(ProxyError::CrossSite)
        ));
        assert!(
            g.check(&parts("/", &[host, ("sec-fetch-site", "none")]))
                .is_ok()
        );
        assert!(
            g.check(&parts("/", &[host, ("sec-fetch-site", "same-origin")]))
                .is_ok()
        );
        for site in ["same-site", "Same-Site", "something-new"] {
            assert!(
                matches!(
                    g.check(&parts("/", &[host, ("sec-fetch-site", site)])),
                    Err(ProxyError::CrossSite)
                ),
                "{site}"
            );
        }
        // A same-site request from an allowed origin passes.
        assert!(
            g.check(&parts(
                "/",
                &[
                    host,
                    ("sec-fetch-site", "same-site"),
                    ("origin", "http://localhost:3000")
                ]
            ))
            .is_ok()
        );
    }
}
