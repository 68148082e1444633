//! `kind = "acs"`: an Azure Communication Services access key (a connection string or the
//! bare key) from a key source, applied by signing each request with HMAC-SHA256.

use super::key_source::KeySource;
use super::{
    Binding, BoxFuture, ClientEnv, Environment, Facts, Kind, Placeholder, ReadContext, RouteView,
    Spec,
};
use crate::credentials::Source;
use crate::fields::{Checker, Table};
use crate::schemes::{AcsHmacScheme, Scheme};

pub struct Acs;

impl Kind for Acs {
    fn name(&self) -> &'static str {
        "acs"
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
        let source = KeySource::read(table, cx, at)?;
        Some(Box::new(AcsSpec { source }))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcsSpec {
    pub source: KeySource,
}

impl Spec for AcsSpec {
    fn kind(&self) -> &'static dyn super::Kind {
        &Acs
    }

    fn resolve<'a>(&'a self, name: &'a str, env: &'a Environment) -> BoxFuture<'a, Binding> {
        Box::pin(async move {
            Binding {
                source: Source::Acs(Box::new(self.source.resolve(name, env))),
                scheme: Scheme::AcsHmac(AcsHmacScheme),
                facts: Facts::default(),
            }
        })
    }

    fn client_env(&self, _route: &RouteView<'_>) -> ClientEnv {
        ClientEnv::Note(
            "requests are signed with the ACS access key (HMAC-SHA256); clients send unsigned requests"
                .to_string(),
        )
    }

    fn key_source(&self) -> Option<&super::key_source::KeySource> {
        Some(&self.source)
    }
}
