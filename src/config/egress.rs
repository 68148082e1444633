//! The corporate egress proxy: `egress_proxy` in the config, else `HTTPS_PROXY` /
//! `HTTP_PROXY` / `ALL_PROXY` from the environment (upper case first, then lower case, as
//! curl and hyper-util read them), with `NO_PROXY` (or `no_proxy` in the config)
//! exceptions: comma-separated names (a name covers its subdomains), IPs, CIDRs, or `*`.
//!
//! Upstream connections then go through the proxy with `CONNECT host:port` (basic auth
//! from the URL's user and password), and TLS to the upstream runs inside the tunnel.

use http::Uri;

use crate::credentials::Secret;
use crate::kinds::Environment;

/// The proxy set-up credproxy's own connections use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    /// For `https://` upstreams.
    pub https: Option<Secret>,
    /// For `http://` upstreams.
    pub http: Option<Secret>,
    /// NO_PROXY rules.
    pub no_proxy: String,
    /// Where it came from, for `check` and the start-up line.
    pub origin: &'static str,
}

impl Egress {
    /// The proxy for people: its address without user and password.
    pub fn describe(&self) -> String {
        let shown = |url: &Secret| {
            url.expose()
                .parse::<Uri>()
                .ok()
                .and_then(|u| {
                    u.authority().map(|a| {
                        a.host().to_string()
                            + &a.port().map(|p| format!(":{p}")).unwrap_or_default()
                    })
                })
                .unwrap_or_else(|| "?".to_string())
        };
        let target = match (&self.https, &self.http) {
            (Some(https), _) => shown(https),
            (None, Some(http)) => shown(http),
            (None, None) => "-".to_string(),
        };
        let except = if self.no_proxy.is_empty() {
            String::new()
        } else {
            format!(" except {}", self.no_proxy)
        };
        format!("proxy {target} ({}){except}", self.origin)
    }
}

/// A proxy URL as curl reads it: without a scheme it is `http://`.
pub fn normalise(text: &str) -> String {
    let text = text.trim();
    if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    }
}

/// A proxy URL credproxy can use: `http://[user:password@]host[:port]` (the scheme may be
/// left out). Messages never repeat the URL: it may hold a password.
pub fn check_proxy_url(text: &str) -> Result<(), (String, String)> {
    let uri: Uri = normalise(text).parse().map_err(|_| {
        (
            "the egress proxy is not a URL".to_string(),
            "write it as \"http://proxy.example.com:3128\" (with \"user:password@\" before the host if it asks for a login)".to_string(),
        )
    })?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(()),
        Some("https") => Err((
            "an https:// egress proxy is not supported: credproxy speaks plain HTTP to the proxy and TLS to the upstream through the tunnel".to_string(),
            "write the proxy as http://HOST:PORT; the upstream traffic inside the tunnel is still TLS".to_string(),
        )),
        _ => Err((
            format!(
                "the egress proxy's scheme `{}` is not supported (only http:// proxies are)",
                uri.scheme_str().unwrap_or("")
            ),
            "write it as \"http://proxy.example.com:3128\"".to_string(),
        )),
    }
}

/// The egress set-up: the config's `egress_proxy` if set, else the environment's; `None`
/// when neither names a proxy. An environment URL that does not parse is an error (the
/// proxy libraries would ignore it silently and connect directly).
pub fn resolve(
    proxy: Option<&Secret>,
    no_proxy: &[String],
    env: &Environment,
) -> Result<Option<Egress>, String> {
    let env_no_proxy = env
        .first(&["NO_PROXY", "no_proxy"])
        .unwrap_or("")
        .to_string();
    let rules = if no_proxy.is_empty() {
        env_no_proxy
    } else {
        no_proxy.join(",")
    };
    if let Some(proxy) = proxy {
        let proxy = Secret::new(normalise(proxy.expose()));
        return Ok(Some(Egress {
            https: Some(proxy.clone()),
            http: Some(proxy),
            no_proxy: rules,
            origin: "egress_proxy",
        }));
    }
    // ALL_PROXY is often a SOCKS proxy for other tools: used only when it is usable.
    let all = env
        .first(&["ALL_PROXY", "all_proxy"])
        .filter(|v| check_proxy_url(v).is_ok());
    let https = env.first(&["HTTPS_PROXY", "https_proxy"]);
    let http = env.first(&["HTTP_PROXY", "http_proxy"]);
    for (name, value) in [("HTTPS_PROXY", https), ("HTTP_PROXY", http)] {
        if let Some(value) = value
            && let Err((message, _)) = check_proxy_url(value)
        {
            return Err(format!("{name} (or its lower-case form): {message}"));
        }
    }
    let (https, http) = (https.or(all), http.or(all));
    if https.is_none() && http.is_none() {
        return Ok(None);
    }
    Ok(Some(Egress {
        https: https.map(|v| Secret::new(normalise(v))),
        http: http.map(|v| Secret::new(normalise(v))),
        no_proxy: rules,
        origin: "environment",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_wins_then_upper_then_lower_case_variables() {
        let env = Environment::from_pairs([
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
            ("no_proxy", "localhost,.internal"),
        ]);
        let egress = resolve(None, &[], &env).unwrap().unwrap();
        assert_eq!(egress.https.unwrap().expose(), "http://upper:3128");
        assert_eq!(egress.http, None);
        assert_eq!(egress.no_proxy, "localhost,.internal");
        let configured = Secret::new("http://u:p@corp:8080");
        let egress = resolve(Some(&configured), &["10.0.0.0/8".into()], &env)
            .unwrap()
            .unwrap();
        assert_eq!(egress.origin, "egress_proxy");
        assert_eq!(egress.no_proxy, "10.0.0.0/8");
        assert_eq!(
            egress.describe(),
            "proxy corp:8080 (egress_proxy) except 10.0.0.0/8"
        );
        assert!(
            !format!("{egress:?}").contains(":p@"),
            "the password never prints"
        );
        let env = Environment::from_pairs([("https_proxy", "http://lower:3128")]);
        assert_eq!(
            resolve(None, &[], &env)
                .unwrap()
                .unwrap()
                .https
                .unwrap()
                .expose(),
            "http://lower:3128"
        );
        assert_eq!(resolve(None, &[], &Environment::default()).unwrap(), None);
        let broken = Environment::from_pairs([("HTTPS_PROXY", "socks5://user:pw@x:1")]);
        let error = resolve(None, &[], &broken).unwrap_err();
        assert!(
            error.contains("HTTPS_PROXY") && !error.contains("pw"),
            "{error}"
        );
        // curl's reading: no scheme is http; a SOCKS ALL_PROXY is left to other tools.
        let bare =
            Environment::from_pairs([("HTTPS_PROXY", "proxy:3128"), ("ALL_PROXY", "socks5://s:1")]);
        let egress = resolve(None, &[], &bare).unwrap().unwrap();
        assert_eq!(egress.https.unwrap().expose(), "http://proxy:3128");
        assert_eq!(egress.http, None);
        assert!(check_proxy_url("https://proxy:3128").is_err());
    }
}
