//! `kind = "oidc"`: the employee's side of a credproxy gateway. A token from the company's
//! OpenID Connect provider, obtained once by `credproxy login NAME` (authorization code
//! with PKCE through a loopback redirect, or the device grant), kept where it survives a
//! reboot, and refreshed with the refresh-token grant ahead of expiry and after a 401.
//! Applied as `Authorization: Bearer` unless `apply` says otherwise.
//!
//! The protocol itself lives in `login` (it needs the upstream client and the gateway's
//! JWT validation, both above this layer): this file reads the table and binds a
//! [`Source::Bound`] that the process hands to `login` once its clients exist.

use http::uri::Uri;

use super::key_source::read_apply;
use super::{
    Binding, BoxFuture, ClientEnv, Environment, Facts, Kind, Placeholder, ReadContext, RouteView,
    Spec,
};
use crate::credentials::{Bound, Secret, Source};
use crate::fields::{Checker, Table};
use crate::schemes::{Apply, HeaderScheme, Rejection, Scheme};
use crate::upstream::is_loopback_host;

/// Scopes asked for when `scopes` is left out: an ID token with the person's email and
/// name, and a refresh token.
pub const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile", "offline_access"];

pub struct Oidc;

/// How `credproxy login` signs the person in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The browser where a display is available, else the device grant.
    Auto,
    /// Authorization code + PKCE through a loopback redirect (RFC 8252).
    Browser,
    /// The device authorization grant (RFC 8628): a code typed on another device.
    Device,
}

/// Which of the provider's tokens goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The ID token: what a credproxy gateway's `[callers]` validates.
    IdToken,
    /// The access token, for upstreams that take the provider's access tokens.
    AccessToken,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OidcSpec {
    /// As written, without a trailing slash; compared with the ID token's `iss`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub flow: Flow,
    pub token: Sent,
    pub apply: Apply,
}

impl Kind for Oidc {
    fn name(&self) -> &'static str {
        "oidc"
    }

    fn placeholders(&self) -> &'static [Placeholder] {
        &[]
    }

    fn translations(&self) -> &'static [super::TranslateTo] {
        &[]
    }

    fn token_egress(&self) -> super::TokenEgress {
        super::TokenEgress::Ours
    }

    fn read(&self, table: &mut Table, cx: &mut Checker, at: &ReadContext) -> Option<Box<dyn Spec>> {
        let before = cx.count();
        let issuer = table.string(cx, "issuer");
        let client_id = table.string(cx, "client_id");
        let client_secret = table.string(cx, "client_secret");
        let list = table.strings(cx, "scopes");
        let audience = table.string(cx, "audience");
        let flow = table.string(cx, "flow");
        let token = table.string(cx, "token");
        let apply = read_apply(table, cx, Apply::Bearer);
        let name = at.name;

        let issuer = match &issuer {
            None => {
                cx.report(
                    table.span(),
                    format!("credential `{name}` names no `issuer`"),
                    "add `issuer = \"https://login.example.com\"`, the identity provider's issuer URL (its discovery document is read from /.well-known/openid-configuration under it)".to_string(),
                );
                None
            }
            Some(text) => {
                let value = text.get_ref().trim().trim_end_matches('/');
                match value.parse::<Uri>().ok().filter(|u| u.host().is_some()) {
                    Some(u) if u.scheme_str() == Some("https") => Some(value.to_string()),
                    Some(u)
                        if u.scheme_str() == Some("http")
                            && u.host().is_some_and(is_loopback_host) =>
                    {
                        Some(value.to_string())
                    }
                    Some(_) => {
                        cx.report(
                            text.span(),
                            format!("`issuer` must use https: `{value}`"),
                            "tokens fetched in plain text could be read by anyone on the path; http:// is accepted only on a loopback address".to_string(),
                        );
                        None
                    }
                    None => {
                        cx.report(
                            text.span(),
                            format!("`{value}` is not a URL"),
                            "write `issuer` as a full URL, such as \"https://login.example.com\""
                                .to_string(),
                        );
                        None
                    }
                }
            }
        };
        if client_id.is_none() {
            cx.report(
                table.span(),
                format!("credential `{name}` names no `client_id`"),
                "add `client_id = \"...\"`: the ID of the app the administrator registered with the identity provider".to_string(),
            );
        }
        for (key, text) in [
            ("client_id", &client_id),
            ("client_secret", &client_secret),
            ("audience", &audience),
        ] {
            if let Some(text) = text
                && text.get_ref().trim().is_empty()
            {
                cx.report(text.span(), format!("`{key}` is empty"), None);
            }
        }
        let mut scopes = Vec::new();
        if let Some(list) = &list {
            for scope in list.get_ref() {
                let value = scope.get_ref().trim();
                if value.is_empty() || value.contains(char::is_whitespace) {
                    cx.report(
                        scope.span(),
                        format!("`{}` is not an OAuth scope", scope.get_ref()),
                        "write one scope per string, such as \"openid\"".to_string(),
                    );
                }
                scopes.push(value.to_string());
            }
            if !scopes.iter().any(|s| s == "openid") {
                cx.report(
                    list.span(),
                    "`scopes` lacks \"openid\"",
                    "add \"openid\": without it the provider sends no ID token".to_string(),
                );
            }
        } else {
            scopes = DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect();
        }
        let flow = match flow.as_ref().map(|t| (t, t.get_ref().trim())) {
            None | Some((_, "auto")) => Some(Flow::Auto),
            Some((_, "browser")) => Some(Flow::Browser),
            Some((_, "device")) => Some(Flow::Device),
            Some((text, other)) => {
                cx.report(
                    text.span(),
                    format!("`{other}` is not a login flow"),
                    "write \"auto\" (the browser where there is a display, else a device code), \"browser\" or \"device\"".to_string(),
                );
                None
            }
        };
        let token = match token.as_ref().map(|t| (t, t.get_ref().trim())) {
            None | Some((_, "id_token")) => Some(Sent::IdToken),
            Some((_, "access_token")) => Some(Sent::AccessToken),
            Some((text, other)) => {
                cx.report(
                    text.span(),
                    format!("`{other}` is not a token this kind can send"),
                    "write \"id_token\" (what a credproxy gateway validates) or \"access_token\""
                        .to_string(),
                );
                None
            }
        };
        if cx.count() != before {
            return None;
        }
        Some(Box::new(OidcSpec {
            issuer: issuer?,
            client_id: client_id?.get_ref().trim().to_string(),
            client_secret: client_secret.map(|t| Secret::new(t.get_ref().trim())),
            scopes,
            audience: audience.map(|t| t.get_ref().trim().to_string()),
            flow: flow?,
            token: token?,
            apply: apply?,
        }))
    }
}

impl Spec for OidcSpec {
    fn kind(&self) -> &'static dyn super::Kind {
        &Oidc
    }

    fn resolve<'a>(&'a self, _name: &'a str, _env: &'a Environment) -> BoxFuture<'a, Binding> {
        Box::pin(async move {
            Binding {
                source: Source::Bound(Bound::new(format!("oidc login at {}", self.issuer))),
                scheme: Scheme::Header(HeaderScheme::new(
                    self.apply.clone(),
                    Rejection::Unauthorized,
                )),
                facts: Facts::default(),
            }
        })
    }

    fn client_env(&self, _route: &RouteView<'_>) -> ClientEnv {
        ClientEnv::Anthropic
    }

    fn key_source(&self) -> Option<&super::key_source::KeySource> {
        None
    }
}
