//! An upstream base URL: checked once (absolute, https or http to a loopback host, no
//! query or user info), kept in the parts every request needs.

use std::str::FromStr;

use http::uri::{Authority, Scheme, Uri};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    /// Host and port, the port only when it is not the scheme's default.
    pub authority: Authority,
    /// The upstream URL's path without a trailing `/` (empty for the root).
    pub base_path: String,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

impl Upstream {
    /// Checks an upstream URL. The default port is dropped so the authority is what `Host`
    /// and signatures carry. The error is a message and what to write instead.
    pub fn parse(value: &str) -> Result<Upstream, (String, String)> {
        let hint = "write an absolute URL such as \"https://api.anthropic.com\"".to_string();
        let uri =
            Uri::from_str(value).map_err(|_| (format!("`{value}` is not a URL"), hint.clone()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err((format!("`{value}` is not an absolute URL"), hint));
        };
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err((
                format!("`{value}` carries a query or user info"),
                "write only scheme, host and path; credentials go in a [credentials] table"
                    .to_string(),
            ));
        }
        let host = authority.host();
        let is_https = *scheme == Scheme::HTTPS;
        if !is_https && *scheme != Scheme::HTTP {
            return Err((
                format!("`{scheme}` is not a supported scheme"),
                "write an https:// URL".to_string(),
            ));
        }
        if !is_https && !is_loopback_host(host) {
            return Err((
                format!("`{value}` would send credentials unencrypted to another machine"),
                format!("write https://{}", &value["http://".len()..]),
            ));
        }
        let default_port = if is_https { 443 } else { 80 };
        let authority = match authority.port_u16() {
            Some(port) if port == default_port => Authority::from_str(host)
                .map_err(|_| (format!("`{value}` has a bad host"), hint))?,
            _ => authority.clone(),
        };
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Upstream {
            scheme: scheme.clone(),
            authority,
            base_path,
        })
    }

    pub fn host(&self) -> &str {
        self.authority.host()
    }
}

/// `localhost`, `127.0.0.0/8` and `::1`: hosts an http:// upstream may use.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
