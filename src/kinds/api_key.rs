//! `kind = "api_key"`: an API key or bearer token from a key source (see
//! [`super::key_source`]), applied in one header (`x-api-key` unless `apply` says
//! otherwise), refreshed after any 401. Also the spec behind `bedrock_api_key`.

use http::HeaderName;

use super::key_source::{KeySource, read_apply};
use super::{
    Binding, BoxFuture, ClientEnv, Environment, Facts, Kind, Placeholder, ReadContext, RouteView,
    Spec,
};
use crate::fields::{Checker, Table};
use crate::schemes::{Apply, HeaderScheme, Rejection, Scheme};
use crate::upstream::region_from_host;

pub struct ApiKey;

impl Kind for ApiKey {
    fn name(&self) -> &'static str {
        "api_key"
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
        KeySpec::read(
            table,
            cx,
            at,
            Apply::Header(HeaderName::from_static("x-api-key")),
            Rejection::Unauthorized,
        )
    }
}

/// A key from a key source, applied in one header.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub source: KeySource,
    pub apply: Apply,
    pub rejection: Rejection,
}

impl KeySpec {
    pub(super) fn read(
        table: &mut Table,
        cx: &mut Checker,
        at: &ReadContext,
        default_apply: Apply,
        rejection: Rejection,
    ) -> Option<Box<dyn Spec>> {
        let source = KeySource::read(table, cx, at);
        let apply = read_apply(table, cx, default_apply);
        Some(Box::new(KeySpec {
            source: source?,
            apply: apply?,
            rejection,
        }))
    }
}

impl Spec for KeySpec {
    fn kind(&self) -> &'static dyn super::Kind {
        match self.rejection {
            Rejection::Unauthorized => &ApiKey,
            Rejection::BedrockApiKey => &super::bedrock_api_key::BedrockApiKey,
        }
    }

    fn resolve<'a>(&'a self, name: &'a str, env: &'a Environment) -> BoxFuture<'a, Binding> {
        Box::pin(async move {
            Binding {
                source: self.source.resolve(name, env),
                scheme: Scheme::Header(HeaderScheme::new(self.apply.clone(), self.rejection)),
                facts: Facts::default(),
            }
        })
    }

    fn client_env(&self, route: &RouteView<'_>) -> ClientEnv {
        match self.rejection {
            Rejection::Unauthorized => ClientEnv::Anthropic,
            Rejection::BedrockApiKey => ClientEnv::Bedrock {
                region: region_from_host(route.upstream.host()).map(str::to_string),
            },
        }
    }

    fn key_source(&self) -> Option<&super::key_source::KeySource> {
        Some(&self.source)
    }
}
