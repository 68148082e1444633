//! An upstream base URL: checked once (absolute, https or http to a loopback host, no
//! query or user info), kept in the parts every request needs; and which request paths
//! may be appended to one.

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

/// Why a request path cannot be routed safely, if it cannot: it must be a path (not `*`),
/// and no segment may be `.` or `..`, written plainly or percent-encoded, nor hide one
/// behind an encoded slash or backslash (`..%2F`, `%2e%2e%5c`), a second encoding
/// (`%252e%252e`) or a path parameter (`..;x`). A dot-segment would let a
/// client leave the route's base path on an upstream that normalises paths; legitimate API
/// paths never hold one, and normalising here would change the bytes credproxy forwards
/// (and signs). So such requests are refused, not rewritten.
pub fn unsafe_path(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("is not an absolute path");
    }
    let dotted = path.split('/').any(|segment| {
        // Decoded twice: an upstream that decodes once more must not find a dot-segment.
        let decoded = percent_decode(&percent_decode(segment.as_bytes()));
        decoded.split(|b| *b == b'/' || *b == b'\\').any(|part| {
            // `..;jsessionid=x`: servlet containers drop path parameters before resolving.
            let name = part.split(|b| *b == b';').next().unwrap_or(part);
            name == b"." || name == b".."
        })
    });
    dotted.then_some("has a `.` or `..` segment")
}

/// `%XX` escapes decoded; anything else (a stray `%`, `+`) kept as it is.
pub fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}
/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`.
pub fn is_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && region.contains('-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

/// `bedrock-runtime.us-east-1.amazonaws.com`, `bedrock.eu-west-3.amazonaws.com`,
/// `vpce-1.bedrock-runtime.us-west-2.vpce.amazonaws.com` → the region label.
pub fn region_from_host(host: &str) -> Option<&str> {
    let name = host.split(':').next()?;
    let rest = name
        .strip_suffix(".amazonaws.com")
        .or_else(|| name.strip_suffix(".amazonaws.com.cn"))?;
    rest.rsplit('.')
        .find(|label| is_region(label) && label.matches('-').count() >= 2)
}
