//! `kind = "aws"`: AWS credentials from aws-config's default chain (optionally assuming a
//! role on top), applied with SigV4; or, when the variable named by `bearer_env` is set, a
//! Bedrock API key from it. Fills `{region}` in its routes' upstreams.

use super::{
    Binding, BoxFuture, ClientEnv, Environment, Facts, Kind, Placeholder, ReadContext, RouteView,
    Spec, check_env_name, text,
};
use crate::credentials::aws::{AwsSettings, profile_region};
use crate::credentials::{AwsChain, Source, StaticKey};
use crate::fields::{Checker, Table};
use crate::schemes::{Apply, HeaderScheme, Rejection, Scheme, SigV4Scheme};
use crate::upstream::is_region;
use crate::upstream::region_from_host;

pub struct Aws;

impl Kind for Aws {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn placeholders(&self) -> &'static [Placeholder] {
        &[Placeholder::Region]
    }

    fn translations(&self) -> &'static [super::TranslateTo] {
        &[super::TranslateTo::Bedrock]
    }

    fn token_egress(&self) -> super::TokenEgress {
        super::TokenEgress::Environment("AWS")
    }

    fn read(
        &self,
        table: &mut Table,
        cx: &mut Checker,
        _at: &ReadContext,
    ) -> Option<Box<dyn Spec>> {
        let before = cx.count();
        let profile = table.string(cx, "profile");
        let region = table.string(cx, "region");
        let role_arn = table.string(cx, "role_arn");
        let external_id = table.string(cx, "external_id");
        let session_name = table.string(cx, "session_name");
        let service = table.string(cx, "service");
        let bearer_env = table.string(cx, "bearer_env");
        if let Some(region) = &region
            && !is_region(region.get_ref())
        {
            cx.report(
                region.span(),
                format!("`{}` is not an AWS region", region.get_ref()),
                "write a region code such as \"us-east-1\"".to_string(),
            );
        }
        if let Some(role) = &role_arn
            && !role.get_ref().starts_with("arn:")
        {
            cx.report(
                role.span(),
                format!("`{}` is not a role ARN", role.get_ref()),
                "write the role's ARN, such as \"arn:aws:iam::123456789012:role/bedrock-user\""
                    .to_string(),
            );
        }
        if role_arn.is_none() {
            for extra in [&external_id, &session_name].into_iter().flatten() {
                cx.report(
                    extra.span(),
                    "this applies only when assuming a role",
                    "add `role_arn`, or remove this key".to_string(),
                );
            }
        }
        check_env_name(
            cx,
            bearer_env.as_ref(),
            "write a variable name such as \"AWS_BEARER_TOKEN_BEDROCK\"",
        );
        let service_name = text(&service).unwrap_or_else(|| "bedrock".to_string());
        if let Some(s) = &service
            && (service_name.is_empty()
                || !service_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            cx.report(
                s.span(),
                format!("`{}` is not an AWS service name", s.get_ref()),
                "write the SigV4 signing name, such as \"bedrock\"".to_string(),
            );
        }
        (cx.count() == before).then(|| {
            Box::new(AwsSpec {
                settings: AwsSettings {
                    profile: text(&profile),
                    region: text(&region),
                    role_arn: text(&role_arn),
                    external_id: text(&external_id),
                    session_name: text(&session_name),
                },
                service: service_name,
                bearer_env: text(&bearer_env),
            }) as Box<dyn Spec>
        })
    }
}

/// The shared config file aws-config reads: `$AWS_CONFIG_FILE`, else `~/.aws/config`.
fn config_file(env: &Environment) -> Option<std::path::PathBuf> {
    let home = env.home();
    match env.get("AWS_CONFIG_FILE") {
        Some(path) => Some(match (path.strip_prefix("~/"), &home) {
            (Some(rest), Some(home)) => home.join(rest),
            _ => path.into(),
        }),
        None => Some(home?.join(".aws").join("config")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSpec {
    pub settings: AwsSettings,
    /// SigV4 service name (`bedrock` unless configured).
    pub service: String,
    /// A variable that, when set, holds a Bedrock API key used as a bearer instead of SigV4.
    pub bearer_env: Option<String>,
}

impl Spec for AwsSpec {
    fn kind(&self) -> &'static dyn super::Kind {
        &Aws
    }

    fn resolve<'a>(&'a self, name: &'a str, env: &'a Environment) -> BoxFuture<'a, Binding> {
        Box::pin(async move {
            // The region: the config, AWS_REGION, AWS_DEFAULT_REGION, the profile's.
            let region = match self
                .settings
                .region
                .as_deref()
                .or_else(|| env.first(&["AWS_REGION", "AWS_DEFAULT_REGION"]))
            {
                Some(region) => Some(region.to_string()),
                None => match config_file(env) {
                    Some(file) => {
                        let profile = self
                            .settings
                            .profile
                            .as_deref()
                            .or_else(|| env.get("AWS_PROFILE"))
                            .unwrap_or("default");
                        profile_region(profile, file).await
                    }
                    None => None,
                },
            };
            let (source, scheme) = match self.bearer_env.as_deref().filter(|v| env.get(v).is_some())
            {
                Some(var) => (
                    Source::Static(StaticKey::Env {
                        var: var.to_string(),
                        or_helper_env: None,
                    }),
                    Scheme::Header(HeaderScheme::new(Apply::Bearer, Rejection::BedrockApiKey)),
                ),
                None => (
                    Source::Aws(Box::new(AwsChain::new(self.settings.clone()))),
                    Scheme::SigV4(SigV4Scheme::new(
                        self.service.clone(),
                        self.settings.region.clone(),
                    )),
                ),
            };
            let fill = region.clone().ok_or_else(|| {
                format!(
                    "no region is known for credential `{name}`; set AWS_REGION (or `region` in [credentials.{name}]) and restart credproxy"
                )
            });
            Binding {
                source,
                scheme,
                facts: Facts {
                    region,
                    project: None,
                    fills: vec![(Placeholder::Region, fill)],
                },
            }
        })
    }

    fn client_env(&self, route: &RouteView<'_>) -> ClientEnv {
        let host = route.upstream.host();
        if host.starts_with("bedrock-runtime") || route.scheme.is_bedrock() {
            ClientEnv::Bedrock {
                region: region_from_host(host).map(str::to_string),
            }
        } else {
            ClientEnv::Note(format!(
                "signed with SigV4 for service `{}`; clients send unsigned requests",
                self.service
            ))
        }
    }

    fn key_source(&self) -> Option<&super::key_source::KeySource> {
        None
    }
}
