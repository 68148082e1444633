//! The serde mirror of the TOML file: every field optional and spanned, unknown keys
//! rejected, so that validation can point at the exact line and column of a mistake.
//!
//! Nothing here is trusted yet; [`super::validate`] turns it into a [`super::Config`].

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// A spanned string: the value and where it stood in the file.
pub type Text = Spanned<String>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<Text>,
    pub allow_non_loopback: Option<Spanned<bool>>,
    #[serde(default)]
    pub allowed_hosts: Vec<Text>,
    #[serde(default)]
    pub allowed_origins: Vec<Text>,
    pub max_body: Option<Text>,
    pub connect_timeout: Option<Text>,
    pub upstream_timeout: Option<Text>,
    pub shutdown_grace: Option<Text>,
    pub ca_file: Option<Text>,
    #[serde(default)]
    pub credentials: BTreeMap<String, Spanned<RawCredential>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// One `[credentials.NAME]` table. It is flat (every kind's keys in one struct) rather
/// than a serde-tagged enum because tagged enums buffer their input and lose the spans;
/// validation checks which keys belong to which kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub kind: Option<Text>,
    pub env: Option<Text>,
    pub file: Option<Text>,
    pub value: Option<Text>,
    pub helper: Option<Text>,
    pub helper_env: Option<Text>,
    pub ttl: Option<Text>,
    pub helper_timeout: Option<Text>,
    pub apply: Option<Text>,
    // kind = "aws"
    pub profile: Option<Text>,
    pub region: Option<Text>,
    pub role_arn: Option<Text>,
    pub external_id: Option<Text>,
    pub session_name: Option<Text>,
    pub service: Option<Text>,
    pub bearer_env: Option<Text>,
    // kind = "google"
    pub key_file: Option<Text>,
    pub scopes: Option<Spanned<Vec<Text>>>,
    pub quota_project: Option<Text>,
    pub project: Option<Text>,
    // kind = "azure"
    pub method: Option<Text>,
    pub scope: Option<Text>,
    pub authority_host: Option<Text>,
    pub tenant_id: Option<Text>,
    pub client_id: Option<Text>,
    pub key_env: Option<Text>,
}

impl RawCredential {
    /// Every key that is set, by name and place, except `kind`.
    pub fn present(&self) -> Vec<(&'static str, Range<usize>)> {
        [
            ("env", &self.env),
            ("file", &self.file),
            ("value", &self.value),
            ("helper", &self.helper),
            ("helper_env", &self.helper_env),
            ("ttl", &self.ttl),
            ("helper_timeout", &self.helper_timeout),
            ("apply", &self.apply),
            ("profile", &self.profile),
            ("region", &self.region),
            ("role_arn", &self.role_arn),
            ("external_id", &self.external_id),
            ("session_name", &self.session_name),
            ("service", &self.service),
            ("bearer_env", &self.bearer_env),
            ("key_file", &self.key_file),
            ("quota_project", &self.quota_project),
            ("project", &self.project),
            ("method", &self.method),
            ("scope", &self.scope),
            ("authority_host", &self.authority_host),
            ("tenant_id", &self.tenant_id),
            ("client_id", &self.client_id),
            ("key_env", &self.key_env),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v.span())))
        .chain(self.scopes.as_ref().map(|s| ("scopes", s.span())))
        .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: Text,
    pub upstream: Text,
    pub credential: Text,
    pub listen: Option<Text>,
}
