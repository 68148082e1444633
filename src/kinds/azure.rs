//! `kind = "azure"`: a Microsoft Entra ID token from azure_identity (a chain or one named
//! method), applied as `Authorization: Bearer`; or, when the variable named by `key_env` is
//! set, that key (Foundry keys), applied in `api-key` unless `apply` says otherwise. Fills
//! `{foundry_base}`.

use http::HeaderName;

use super::key_source::read_apply;
use super::{
    Binding, BoxFuture, ClientEnv, Environment, Facts, Kind, Placeholder, ReadContext, RouteView,
    Spec, check_env_name, text,
};
use crate::credentials::azure::{AzureMethod, AzureSettings, DEFAULT_SCOPE};
use crate::credentials::{AzureChain, Source, StaticKey};
use crate::fields::{Checker, Table};
use crate::schemes::{Apply, HeaderScheme, Rejection, Scheme};

pub struct Azure;

impl Kind for Azure {
    fn name(&self) -> &'static str {
        "azure"
    }

    fn placeholders(&self) -> &'static [Placeholder] {
        &[Placeholder::FoundryBase]
    }

    fn translations(&self) -> &'static [super::TranslateTo] {
        &[]
    }

    fn token_egress(&self) -> super::TokenEgress {
        super::TokenEgress::Environment("Azure")
    }

    fn read(
        &self,
        table: &mut Table,
        cx: &mut Checker,
        _at: &ReadContext,
    ) -> Option<Box<dyn Spec>> {
        let before = cx.count();
        let method_text = table.string(cx, "method");
        let scope_text = table.string(cx, "scope");
        let authority_host = table.string(cx, "authority_host");
        let tenant_id = table.string(cx, "tenant_id");
        let client_id = table.string(cx, "client_id");
        let key_env = table.string(cx, "key_env");
        let apply_given = table.value("apply").is_some();
        let key_apply = read_apply(table, cx, Apply::Header(HeaderName::from_static("api-key")));
        let method = match &method_text {
            None => AzureMethod::Auto,
            Some(m) => match AzureMethod::NAMES
                .iter()
                .find(|(n, _)| *n == m.get_ref().trim())
            {
                Some((_, method)) => *method,
                None => {
                    let names: Vec<_> = AzureMethod::NAMES
                        .iter()
                        .map(|(n, _)| format!("\"{n}\""))
                        .collect();
                    cx.report(
                        m.span(),
                        format!("`{}` is not an Azure credential method", m.get_ref()),
                        format!("write one of {}", names.join(", ")),
                    );
                    AzureMethod::Auto
                }
            },
        };
        let scope = text(&scope_text).unwrap_or_else(|| DEFAULT_SCOPE.to_string());
        if let Some(s) = &scope_text
            && (scope.is_empty() || scope.contains(char::is_whitespace))
        {
            cx.report(
                s.span(),
                format!("`{}` is not an Entra scope", s.get_ref()),
                format!("write a scope such as \"{DEFAULT_SCOPE}\""),
            );
        }
        if let Some(host) = &authority_host
            && !host.get_ref().starts_with("https://")
        {
            cx.report(
                host.span(),
                format!("`{}` is not an https URL", host.get_ref()),
                "write the authority host as https://..., such as \"https://login.microsoftonline.us\"".to_string(),
            );
        }
        check_env_name(
            cx,
            key_env.as_ref(),
            "write a variable name such as \"ANTHROPIC_FOUNDRY_API_KEY\"",
        );
        if apply_given && key_env.is_none() {
            let apply = table.value("apply").expect("present");
            cx.report(
                apply.span(),
                "`apply` applies to the key of `key_env`",
                "add `key_env`, or remove `apply` (Entra tokens always go in Authorization: Bearer)"
                    .to_string(),
            );
        }
        let key_apply = key_apply?;
        (cx.count() == before).then(|| {
            Box::new(AzureSpec {
                settings: AzureSettings {
                    method,
                    scope,
                    authority_host: text(&authority_host)
                        .map(|h| h.trim_end_matches('/').to_string()),
                    tenant_id: text(&tenant_id),
                    client_id: text(&client_id),
                },
                key_env: text(&key_env),
                key_apply,
            }) as Box<dyn Spec>
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSpec {
    pub settings: AzureSettings,
    /// A variable that, when set, holds an API key used instead of Entra (Foundry keys).
    pub key_env: Option<String>,
    /// How that key is applied (`api-key` unless configured).
    pub key_apply: Apply,
}

impl Spec for AzureSpec {
    fn kind(&self) -> &'static dyn super::Kind {
        &Azure
    }

    fn resolve<'a>(&'a self, _name: &'a str, env: &'a Environment) -> BoxFuture<'a, Binding> {
        Box::pin(async move {
            let (source, apply) = match self.key_env.as_deref().filter(|v| env.get(v).is_some()) {
                Some(var) => (
                    Source::Static(StaticKey::Env {
                        var: var.to_string(),
                        or_helper_env: None,
                    }),
                    self.key_apply.clone(),
                ),
                None => (
                    Source::Azure(AzureChain::new(self.settings.clone())),
                    Apply::Bearer,
                ),
            };
            // The Foundry endpoint from the variables Claude Code uses for it.
            let foundry_base = env
                .get("ANTHROPIC_FOUNDRY_BASE_URL")
                .map(|url| url.trim_end_matches('/').to_string())
                .or_else(|| {
                    env.get("ANTHROPIC_FOUNDRY_RESOURCE")
                        .map(|r| format!("https://{r}.services.ai.azure.com/anthropic"))
                })
                .ok_or_else(|| "no Foundry resource is known; set ANTHROPIC_FOUNDRY_RESOURCE (or ANTHROPIC_FOUNDRY_BASE_URL) and restart credproxy".to_string());
            Binding {
                source,
                scheme: Scheme::Header(HeaderScheme::new(apply, Rejection::Unauthorized)),
                facts: Facts {
                    region: None,
                    project: None,
                    fills: vec![(Placeholder::FoundryBase, foundry_base)],
                },
            }
        })
    }

    fn client_env(&self, route: &RouteView<'_>) -> ClientEnv {
        let foundry = route.template.map(str::trim) == Some(Placeholder::FoundryBase.text())
            || route.upstream.host().ends_with(".services.ai.azure.com");
        if foundry {
            ClientEnv::Foundry
        } else {
            ClientEnv::Note(
                "an Entra ID token (or key) is applied; clients send unauthenticated requests"
                    .to_string(),
            )
        }
    }

    fn key_source(&self) -> Option<&super::key_source::KeySource> {
        None
    }
}
