//! Properties that must hold for any input, checked on generated ones: nothing panics, a
//! routed request never leaves its upstream's scheme, host, port and base path, and no
//! client credential header survives stripping.

use std::str::FromStr;

use credproxy::config::{Config, ConfigOrigin, ResolvedRoute};
use credproxy::headers::{is_client_credential, strip_request};
use credproxy::proxy::route::{RouteTable, unsafe_path, upstream_uri};
use credproxy::upstream::Upstream;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

fn route(prefix: &str, upstream: &str) -> ResolvedRoute {
    ResolvedRoute {
        prefix: prefix.to_string(),
        upstream: Ok(Upstream::parse(upstream).unwrap()),
        template: None,
        credential: 0,
        max_in_flight: 1,
        stream_idle_timeout: None,
        strip_headers: Vec::new(),
        groups: None,
        identity: None,
        translate: None,
        http2: Default::default(),
        // Only the prefix and upstream are read here.
        targets: Vec::new(),
        failover: credproxy::config::Failover::defaults(1),
    }
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the path, a request that passes the path check and matches a route is sent
    /// to that route's scheme and authority, under its base path, with no dot-segment
    /// that an upstream could resolve above it.
    #[test]
    fn a_routed_request_never_leaves_its_upstream_and_base_path(
        path in "(/([a-z.]{0,3}|%2[eEfF]|%5[cC]|\\.|\\.\\.|[:~+ ]){0,6}){1,3}(\\?[a-z=&%./]{0,8})?",
    ) {
        let table = RouteTable::new(vec![
            route("/s", "http://127.0.0.1:9/static"),
            route("/", "https://api.example.com/base"),
        ]);
        let Ok(pq) = PathAndQuery::from_str(&path) else { return Ok(()) };
        if unsafe_path(pq.path()).is_some() {
            return Ok(());
        }
        let Some(entry) = table.find(pq.path()) else { return Ok(()) };
        let upstream = entry.route.upstream.as_ref().unwrap();
        let uri = upstream_uri(&entry.route.prefix, upstream, &pq).unwrap();
        prop_assert_eq!(uri.scheme(), Some(&upstream.scheme));
        prop_assert_eq!(uri.authority(), Some(&upstream.authority));
        prop_assert!(uri.path().starts_with(&upstream.base_path));
        let decoded = percent_decoded(uri.path());
        prop_assert!(
            !decoded.split(['/', '\\']).any(|s| s == ".." || s == "."),
            "{} leaves its base path as {}", path, decoded
        );
    }

    /// The path check and the matcher take anything without panicking.
    #[test]
    fn any_path_is_checked_and_matched_without_panicking(path in "\\PC{0,40}") {
        let table = RouteTable::new(vec![route("/a/b", "https://x.example"), route("/", "https://y.example")]);
        let _ = unsafe_path(&path);
        let _ = table.find(&path);
    }

    /// No client credential header survives, whatever else comes with it.
    #[test]
    fn no_client_credential_survives_stripping(
        names in proptest::collection::vec("(authorization|x-api-key|api-key|x-goog-api-key|cookie|proxy-authorization|x-amz-[a-z-]{1,12}|[a-z][a-z0-9-]{0,15})", 0..20),
        connection in "[a-z, -]{0,30}",
    ) {
        let mut headers = HeaderMap::new();
        for name in &names {
            headers.append(HeaderName::from_str(name).unwrap(), HeaderValue::from_static("v"));
        }
        if let Ok(value) = HeaderValue::from_str(&connection) {
            headers.insert(http::header::CONNECTION, value);
        }
        strip_request(&mut headers);
        for name in headers.keys() {
            prop_assert!(!is_client_credential(name), "{} survived", name);
            prop_assert!(name != http::header::CONNECTION && name != http::header::HOST);
        }
    }

    /// Any text is parsed without panicking (and, when accepted, is a usable config).
    #[test]
    fn any_config_text_is_parsed_without_panicking(text in "\\PC{0,200}") {
        let _ = Config::parse(&text, ConfigOrigin::Embedded);
    }

    /// Any key with any value in a credential or route table is reported, not a panic.
    #[test]
    fn any_key_and_value_in_a_table_is_reported_not_a_panic(
        kind in "(api_key|bedrock_api_key|aws|google|azure|acs|[a-z]{1,6})",
        key in "[a-z_]{1,16}",
        value in "(\"[^\"\\\\\\n]{0,20}\"|[0-9]{1,6}|true|\\[\\]|\\[\"[a-z]{0,5}\"\\]|\\{\\})",
        route_key in "[a-z_]{1,16}",
    ) {
        let text = format!(
            "[credentials.c]\nkind = \"{kind}\"\n{key} = {value}\n\n[[routes]]\nprefix = \"/\"\nupstream = \"https://api.anthropic.com\"\ncredential = \"c\"\n{route_key} = {value}\n"
        );
        let _ = Config::parse(&text, ConfigOrigin::Embedded);
    }
}
