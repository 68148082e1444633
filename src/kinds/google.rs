//! `kind = "google"`: a Google OAuth access token from a service-account key file or
//! Google's application-default chain, applied as `Authorization: Bearer` (with
//! `x-goog-user-project` when a quota project is known). Fills `{region}` and
//! `{vertex_host}` in its routes' upstreams.

use http::{HeaderName, HeaderValue};

use super::{
    Binding, BoxFuture, ClientEnv, Environment, Facts, Kind, Placeholder, ReadContext, RouteView,
    Spec, text,
};
use crate::credentials::GoogleChain;
use crate::credentials::Source;
use crate::credentials::google::{DEFAULT_SCOPE, GoogleSettings};
use crate::fields::{Checker, ConfigPath, Table};
use crate::schemes::{Apply, HeaderScheme, Rejection, Scheme};

pub struct Google;

impl Kind for Google {
    fn name(&self) -> &'static str {
        "google"
    }

    fn placeholders(&self) -> &'static [Placeholder] {
        &[Placeholder::Region, Placeholder::VertexHost]
    }

    fn translations(&self) -> &'static [super::TranslateTo] {
        &[super::TranslateTo::Vertex]
    }

    fn token_egress(&self) -> super::TokenEgress {
        super::TokenEgress::Direct(
            "Google token requests (gcp_auth) do not support a proxy and go direct: allow oauth2.googleapis.com (or the metadata server) through the firewall",
        )
    }

    fn read(&self, table: &mut Table, cx: &mut Checker, at: &ReadContext) -> Option<Box<dyn Spec>> {
        let before = cx.count();
        let key_file = table.string(cx, "key_file");
        let list = table.strings(cx, "scopes");
        let quota_project = table.string(cx, "quota_project");
        let project = table.string(cx, "project");
        let region = table.string(cx, "region");
        let mut scopes = Vec::new();
        if let Some(list) = &list {
            if list.get_ref().is_empty() {
                cx.report(
                    list.span(),
                    "`scopes` is empty",
                    format!("leave it out for [\"{DEFAULT_SCOPE}\"]"),
                );
            }
            for scope in list.get_ref() {
                if scope.get_ref().trim().is_empty()
                    || scope.get_ref().contains(char::is_whitespace)
                {
                    cx.report(
                        scope.span(),
                        format!("`{}` is not an OAuth scope", scope.get_ref()),
                        format!("write a scope URL such as \"{DEFAULT_SCOPE}\""),
                    );
                }
                scopes.push(scope.get_ref().trim().to_string());
            }
        }
        if scopes.is_empty() {
            scopes.push(DEFAULT_SCOPE.to_string());
        }
        if let Some(region) = &region
            && !is_google_region(region.get_ref())
        {
            cx.report(
                region.span(),
                format!("`{}` is not a Google Cloud region", region.get_ref()),
                "write a region such as \"us-east5\", \"europe-west1\", \"global\", \"us\" or \"eu\""
                    .to_string(),
            );
        }
        (cx.count() == before).then(|| {
            Box::new(GoogleSpec {
                key_file: key_file.map(|p| ConfigPath::new(p.get_ref(), at.base_dir)),
                scopes,
                quota_project: text(&quota_project),
                project: text(&project),
                region: text(&region),
            }) as Box<dyn Spec>
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleSpec {
    pub key_file: Option<ConfigPath>,
    pub scopes: Vec<String>,
    pub quota_project: Option<String>,
    /// For `credproxy env` (`ANTHROPIC_VERTEX_PROJECT_ID`).
    pub project: Option<String>,
    /// For `{region}` and `{vertex_host}` (else `$CLOUD_ML_REGION`).
    pub region: Option<String>,
}

impl Spec for GoogleSpec {
    fn kind(&self) -> &'static dyn super::Kind {
        &Google
    }

    fn resolve<'a>(&'a self, name: &'a str, env: &'a Environment) -> BoxFuture<'a, Binding> {
        Box::pin(async move {
            let chain = GoogleChain::new(GoogleSettings {
                key_file: self
                    .key_file
                    .as_ref()
                    .map(|p| p.resolve(env.home().as_deref())),
                scopes: self.scopes.clone(),
                quota_project: self.quota_project.clone(),
            });
            let mut scheme = HeaderScheme::new(Apply::Bearer, Rejection::Unauthorized);
            if let Some(project) = chain.quota_project()
                && let Ok(value) = HeaderValue::from_str(&project)
            {
                scheme = scheme.with_header(HeaderName::from_static("x-goog-user-project"), value);
            }
            let region = self
                .region
                .clone()
                .or_else(|| env.get("CLOUD_ML_REGION").map(str::to_string));
            let project = self
                .project
                .clone()
                .or_else(|| {
                    env.first(&["ANTHROPIC_VERTEX_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"])
                        .map(str::to_string)
                })
                .or_else(|| chain.key_file_project());
            let missing = format!(
                "no region is known for credential `{name}`; set CLOUD_ML_REGION (or `region` in [credentials.{name}]) and restart credproxy"
            );
            let fills = vec![
                (Placeholder::Region, region.clone().ok_or(missing.clone())),
                (
                    Placeholder::VertexHost,
                    region.as_deref().map(vertex_host).ok_or(missing),
                ),
            ];
            Binding {
                source: Source::Google(chain),
                scheme: Scheme::Header(scheme),
                facts: Facts {
                    region,
                    project,
                    fills,
                },
            }
        })
    }

    fn client_env(&self, route: &RouteView<'_>) -> ClientEnv {
        let host = route.upstream.host();
        let vertex = host.ends_with("aiplatform.googleapis.com")
            || (host.starts_with("aiplatform.") && host.ends_with(".rep.googleapis.com"));
        if vertex {
            ClientEnv::Vertex {
                region: route.facts.region.clone(),
                project: route.facts.project.clone(),
            }
        } else {
            ClientEnv::Note(
                "a Google bearer token is applied; clients send unauthenticated requests"
                    .to_string(),
            )
        }
    }

    fn key_source(&self) -> Option<&super::key_source::KeySource> {
        None
    }
}

/// The Vertex AI host for a region: `global` and the `us`/`eu` multi-regions have their own.
pub fn vertex_host(region: &str) -> String {
    match region {
        "global" => "aiplatform.googleapis.com".to_string(),
        "us" | "eu" => format!("aiplatform.{region}.rep.googleapis.com"),
        _ => format!("{region}-aiplatform.googleapis.com"),
    }
}

/// `us-east5`, `europe-west1`, and Vertex's `global`, `us`, `eu`.
fn is_google_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}
