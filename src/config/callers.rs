//! `[callers]`: who may use a shared credproxy. Read and checked here; the checking of
//! tokens at request time lives in `callers` (the module above `proxy`).
//!
//! Two kinds of caller, either or both:
//! - people, by a JWT from the company's OpenID Connect provider (`issuer`, `audiences`,
//!   optionally `email_domains` and the claim that carries their groups);
//! - robots, by a static token known only by its SHA-256 (`[[callers.tokens]]`).

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;
use http::uri::Uri;

use crate::fields::{Checker, ConfigPath, Table, Text};

/// A validated `[callers]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallersConfig {
    pub jwt: Option<JwtConfig>,
    pub tokens: Vec<StaticToken>,
    /// A header that carries the caller's token besides `Authorization: Bearer` and
    /// `x-api-key` (for clients that can only add custom headers); looked at first.
    pub header: Option<HeaderName>,
}

/// How JWTs are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// Compared with every token's `iss`, exactly.
    pub issuer: String,
    pub keys: KeysFrom,
    /// A token's `aud` must name one of these.
    pub audiences: Vec<String>,
    /// Lower-case domains; empty admits every address.
    pub email_domains: Vec<String>,
    /// With `email_domains`: the token must say `email_verified: true` (off for providers
    /// that do not send the claim but vouch for the address, e.g. Entra ID's `upn`).
    pub require_email_verified: bool,
    pub email_claim: String,
    pub groups_claim: String,
    /// Allowed difference between our clock and the issuer's for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// How long a fetched key set is used when its answer gives no `Cache-Control: max-age`.
    pub jwks_max_age: Duration,
    /// A token naming a key the set does not hold makes credproxy fetch the set again, at
    /// most once per this interval (key rotation without letting garbage tokens hammer the
    /// identity provider).
    pub jwks_refetch_interval: Duration,
}

/// Where the signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysFrom {
    /// `{issuer}/.well-known/openid-configuration` names the `jwks_uri`.
    Discovery,
    Url(Uri),
    File(ConfigPath),
}

/// A robot's token, known by its hash only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub groups: Vec<String>,
}

/// True when the document has a `[callers]` table (read before the listeners, whose rules
/// depend on it).
pub(super) fn present(root: &mut Table) -> bool {
    root.value("callers").is_some()
}

pub(super) fn read(
    root: &mut Table,
    cx: &mut Checker,
    base_dir: Option<&std::path::Path>,
) -> Option<CallersConfig> {
    let mut table = root.table(cx, "callers")?;
    let before = cx.count();
    let issuer = table.string(cx, "issuer");
    let jwks_url = table.string(cx, "jwks_url");
    let jwks_file = table.string(cx, "jwks_file");
    let audiences = non_empty_strings(&mut table, cx, "audiences");
    let email_domains = table.strings(cx, "email_domains");
    let email_claim = table.string(cx, "email_claim");
    let require_email_verified = table
        .bool(cx, "require_email_verified")
        .is_none_or(|b| *b.get_ref());
    let groups_claim = table.string(cx, "groups_claim");
    let mut duration = |key, allowed, default| {
        table
            .string(cx, key)
            .and_then(|t| cx.duration(&t, allowed))
            .unwrap_or(default)
    };
    let clock_skew = duration(
        "clock_skew",
        Duration::ZERO..=Duration::from_secs(300),
        Duration::from_secs(60),
    );
    let jwks_max_age = duration(
        "jwks_max_age",
        Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600),
        Duration::from_secs(3600),
    );
    let jwks_refetch_interval = duration(
        "jwks_refetch_interval",
        Duration::from_secs(1)..=Duration::from_secs(3600),
        Duration::from_secs(10),
    );
    let header = table.string(cx, "header").and_then(|text| {
        let name = HeaderName::from_str(text.get_ref().trim()).ok();
        let usable = name.as_ref().is_some_and(|n| {
            !crate::headers::is_never_forwarded(n)
                && *n != http::header::CONTENT_TYPE
                && *n != http::header::COOKIE
        });
        if !usable {
            cx.report(
                text.span(),
                format!("`{}` cannot carry a caller's token", text.get_ref()),
                "name a custom header such as \"x-gateway-token\" (Claude Code sends it from ANTHROPIC_CUSTOM_HEADERS)".to_string(),
            );
        }
        name.filter(|_| usable)
    });
    let tokens = tokens(&mut table, cx);

    let wants_jwt = issuer.is_some()
        || jwks_url.is_some()
        || jwks_file.is_some()
        || audiences.is_some()
        || email_domains.is_some()
        || email_claim.is_some()
        || groups_claim.is_some();
    let mut jwt = None;
    if wants_jwt {
        let issuer = match issuer {
            // Kept as written: `iss` must equal it exactly (Auth0's ends in `/`).
            Some(issuer) => {
                checked_url(cx, &issuer, "issuer").map(|_| issuer.get_ref().trim().to_string())
            }
            None => {
                cx.report(
                    table.span(),
                    "[callers] checks JWTs but names no `issuer`",
                    "add `issuer = \"https://login.example.com\"`: every token's `iss` must equal it".to_string(),
                );
                None
            }
        };
        let keys = match (jwks_url, jwks_file) {
            (Some(_), Some(file)) => {
                cx.report(
                    file.span(),
                    "`jwks_url` and `jwks_file` are both set",
                    "keep one: the URL the identity provider serves its keys at, or a file holding them".to_string(),
                );
                None
            }
            (Some(url), None) => checked_url(cx, &url, "jwks_url").map(KeysFrom::Url),
            (None, Some(file)) => Some(KeysFrom::File(ConfigPath::new(file.get_ref(), base_dir))),
            (None, None) => Some(KeysFrom::Discovery),
        };
        if audiences.is_none() {
            cx.report(
                table.span(),
                "[callers] checks JWTs but names no `audiences`",
                "add `audiences = [\"CLIENT-ID\"]`: without it a token the identity provider issued to any other application would be accepted".to_string(),
            );
        }
        let email_domains_list = email_domains.clone();
        let email_domains: Vec<String> = email_domains
            .iter()
            .flat_map(|l| l.get_ref())
            .filter_map(|d| {
                let domain = d
                    .get_ref()
                    .trim()
                    .trim_start_matches('@')
                    .to_ascii_lowercase();
                let ok = !domain.is_empty()
                    && !domain.contains(['@', '/', ' ', ':', '*'])
                    && domain.contains('.');
                if !ok {
                    cx.report(
                        d.span(),
                        format!("`{}` is not an email domain", d.get_ref()),
                        "write each domain alone and in full, such as \"example.com\" (no wildcards: list subdomains one by one)".to_string(),
                    );
                }
                ok.then_some(domain)
            })
            .collect();
        if let Some(list) = &email_domains_list
            && list.get_ref().is_empty()
        {
            cx.report(
                list.span(),
                "`email_domains` is empty, which would admit every address",
                "list the company's domains, or remove `email_domains` to admit any address the identity provider vouches for".to_string(),
            );
        }
        if let (Some(issuer), Some(keys), Some(audiences)) = (issuer, keys, audiences) {
            jwt = Some(JwtConfig {
                issuer,
                keys,
                audiences,
                email_domains,
                require_email_verified,
                email_claim: claim_name(email_claim, "email"),
                groups_claim: claim_name(groups_claim, "groups"),
                clock_skew,
                jwks_max_age,
                jwks_refetch_interval,
            });
        }
    } else if tokens.is_empty() && cx.count() == before {
        cx.report(
            table.span(),
            "[callers] admits nobody: it names no identity provider and no tokens",
            "add `issuer` and `audiences` for people, or a [[callers.tokens]] table for robots"
                .to_string(),
        );
    }
    table.finish(cx);
    (cx.count() == before).then_some(CallersConfig {
        jwt,
        tokens,
        header,
    })
}

fn claim_name(written: Option<Text>, default: &str) -> String {
    written
        .map(|t| t.get_ref().trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn non_empty_strings(
    table: &mut Table,
    cx: &mut Checker,
    key: &'static str,
) -> Option<Vec<String>> {
    let list = table.strings(cx, key)?;
    let values: Vec<String> = list
        .get_ref()
        .iter()
        .map(|t| t.get_ref().trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if values.is_empty() {
        cx.report(
            list.span(),
            format!("`{key}` is empty"),
            format!("list at least one value in `{key}`, or remove it"),
        );
        return None;
    }
    Some(values)
}

/// An `https://` URL, or `http://` to a loopback address (a local identity provider).
fn checked_url(cx: &mut Checker, text: &Text, key: &str) -> Option<Uri> {
    let value = text.get_ref().trim();
    let uri = Uri::from_str(value)
        .ok()
        .filter(|u| u.authority().is_some());
    let loopback = |u: &Uri| {
        u.host().is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
    };
    match uri {
        Some(u) if u.scheme_str() == Some("https") => Some(u),
        Some(u) if u.scheme_str() == Some("http") && loopback(&u) => Some(u),
        Some(_) => {
            cx.report(
                text.span(),
                format!("`{key}` must use https: `{value}`"),
                "keys fetched in plain text could be swapped by anyone on the path; write an https:// URL".to_string(),
            );
            None
        }
        None => {
            cx.report(
                text.span(),
                format!("`{value}` is not a URL"),
                format!("write `{key}` as a full URL, such as \"https://login.example.com\""),
            );
            None
        }
    }
}

fn tokens(table: &mut Table, cx: &mut Checker) -> Vec<StaticToken> {
    let mut tokens: Vec<StaticToken> = Vec::new();
    let mut names = HashSet::new();
    for mut entry in table.tables(cx, "tokens") {
        let name = entry.string(cx, "name");
        let hash = entry.string(cx, "sha256");
        let groups = groups(&mut entry, cx).unwrap_or_default();
        if name.is_none() && entry.value("name").is_none() {
            cx.report(
                entry.span(),
                "a [[callers.tokens]] table has no `name`",
                "add `name = \"ci\"`: the name stands for the caller in the access log".to_string(),
            );
        }
        if hash.is_none() && entry.value("sha256").is_none() {
            cx.report(
                entry.span(),
                "a [[callers.tokens]] table has no `sha256`",
                "run `credproxy hash-token` and paste the line it prints".to_string(),
            );
        }
        entry.finish(cx);
        let name = name.and_then(|n| {
            let value = n.get_ref().trim().to_string();
            if value.is_empty() || !names.insert(value.clone()) {
                cx.report(
                    n.span(),
                    format!("caller token name `{value}` is empty or used twice"),
                    "give each token its own name".to_string(),
                );
                return None;
            }
            Some(value)
        });
        let sha256 = hash.and_then(|h| {
            let value = h.get_ref().trim();
            let mut bytes = [0u8; 32];
            let ok = value.len() == 64
                && !value.bytes().any(|b| b.is_ascii_uppercase())
                && hex::decode_to_slice(value, &mut bytes).is_ok();
            if !ok {
                cx.report(
                    h.span(),
                    "`sha256` must be 64 lowercase hex digits: the SHA-256 of the token",
                    "run `credproxy hash-token`, type the token, and paste the line it prints (never the token itself)".to_string(),
                );
                return None;
            }
            if tokens.iter().any(|t| t.sha256 == bytes) {
                cx.report(
                    h.span(),
                    "two caller tokens have the same `sha256`",
                    "give each robot its own token".to_string(),
                );
                return None;
            }
            Some(bytes)
        });
        if let (Some(name), Some(sha256)) = (name, sha256) {
            tokens.push(StaticToken {
                name,
                sha256,
                groups,
            });
        }
    }
    tokens
}

/// `groups = [...]` on a route or a static token: non-empty names.
pub(super) fn groups(table: &mut Table, cx: &mut Checker) -> Option<Vec<String>> {
    let list = table.strings(cx, "groups")?;
    let mut groups = Vec::new();
    for group in list.get_ref() {
        let name = group.get_ref().trim();
        if name.is_empty() {
            cx.report(
                group.span(),
                "a group name is empty",
                "write the group names as the identity provider puts them in tokens".to_string(),
            );
        } else {
            groups.push(name.to_string());
        }
    }
    if list.get_ref().is_empty() {
        cx.report(
            list.span(),
            "`groups` is empty, so nobody could use this",
            "list at least one group, or remove `groups` to admit every caller".to_string(),
        );
        return None;
    }
    Some(groups)
}
