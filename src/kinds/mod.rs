//! Credential kinds, one file each: the keys a `[credentials.NAME]` table of that kind
//! takes and how they are checked, the source and scheme it binds to, the upstream
//! placeholders it fills (`{region}`, `{vertex_host}`, `{foundry_base}`), what
//! `credproxy env` tells its clients, the translations it can sign for and how its own
//! token requests reach the network. Outside `kinds/`, no code names a kind by its string:
//! it asks the kind ([`Kind`], or `spec.kind()`).
//!
//! What adding a kind costs:
//! - **On existing sources and schemes** (a new way to read a key, say): one file here
//!   with a unit struct implementing [`Kind`] and a spec implementing [`Spec`], and one
//!   line in [`KINDS`]. Every method is required, so a forgotten part is a compile error;
//!   the keys a kind takes are the keys its [`Kind::read`] asks for, so there is no second
//!   list to keep in step. `bedrock_api_key` is such a kind: it reuses `api_key`'s spec
//!   with Bedrock's rejection rule.
//! - **With a new source** (where values come from): also a file in `credentials/` with a
//!   `fetch` and a `describe`, and one arm in each of `credentials::Source`'s three
//!   matches (`fetch`, `describe`, and `is_literal`/`is_static` when it can hold a key
//!   written in the file). A value of a new shape (not a token, an AWS key pair or an
//!   ACS key) is a `credentials::Material` variant too, and its `secrets()` arm.
//! - **With a new scheme** (how a value goes onto a request): also a file in `schemes/`
//!   and an arm in each of `schemes::Scheme`'s matches (`apply`, `classify`,
//!   `classify_body`). A new rule for which answers mean "the value went bad" on an
//!   existing header scheme is a `schemes::Rejection` variant.
//! - **A new cloud to translate to**: a [`TranslateTo`] variant, its request and answer
//!   halves in `proxy/translate/`, and the kinds that can sign for it saying so in
//!   [`Kind::translations`].
//!
//! Layering: kinds sit above `fields` (reading TOML), `credentials`
//! (sources) and `schemes`; `config` sits above kinds.

pub mod acs;
pub mod api_key;
#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
pub mod bedrock_api_key;
mod environment;
#[cfg(feature = "google")]
pub mod google;
pub mod key_source;
pub mod oidc;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::OnceLock;

pub use environment::Environment;
#[cfg(feature = "google")]
pub use google::vertex_host;

use crate::credentials::Source;
use crate::fields::{Checker, Table};
use crate::schemes::Scheme;
use crate::upstream::Upstream;

/// Every kind this build knows, in the order `kind = ...` hints list them.
pub static KINDS: &[&dyn Kind] = &[
    &api_key::ApiKey,
    &bedrock_api_key::BedrockApiKey,
    #[cfg(feature = "aws")]
    &aws::Aws,
    #[cfg(feature = "google")]
    &google::Google,
    #[cfg(feature = "azure")]
    &azure::Azure,
    &acs::Acs,
    &oidc::Oidc,
];

/// Kinds this build was compiled without, each with the Cargo feature that brings it.
pub static ABSENT: &[(&str, &str)] = &[
    #[cfg(not(feature = "aws"))]
    ("aws", "aws"),
    #[cfg(not(feature = "google"))]
    ("google", "google"),
    #[cfg(not(feature = "azure"))]
    ("azure", "azure"),
];

/// Which cloud API a translating route speaks upstream (`translate = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TranslateTo {
    Bedrock,
    Vertex,
}

impl TranslateTo {
    pub fn name(self) -> &'static str {
        match self {
            TranslateTo::Bedrock => "bedrock",
            TranslateTo::Vertex => "vertex",
        }
    }

    /// The kinds of this build that can sign its requests.
    pub fn kinds(self) -> Vec<&'static str> {
        KINDS
            .iter()
            .filter(|k| k.translations().contains(&self))
            .map(|k| k.name())
            .collect()
    }
}

/// How a kind's own token requests (its cloud SDK's, not the proxied ones) reach the
/// network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEgress {
    /// Through credproxy's own clients, or there are none.
    Ours,
    /// The SDK follows `HTTPS_PROXY`/`NO_PROXY` from the environment; who it is ("AWS").
    Environment(&'static str),
    /// The SDK cannot use a proxy: the note that says what to allow instead.
    Direct(&'static str),
}

/// A boxed future, for the one async step of a kind (resolving against the environment).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a kind's table is read and checked, and what the rest of credproxy asks of a kind
/// (so nothing outside `kinds/` names a kind by its string).
pub trait Kind: Sync {
    /// The `kind = "..."` value: the only place a kind's name is written.
    fn name(&self) -> &'static str;

    /// The placeholders this kind fills in its routes' upstream URLs.
    fn placeholders(&self) -> &'static [Placeholder];

    /// The clouds whose requests this kind can sign for a translating route
    /// (`translate = "..."`).
    fn translations(&self) -> &'static [TranslateTo];

    /// How this kind's own token requests reach the network (`credproxy check`'s notes
    /// about the egress proxy).
    fn token_egress(&self) -> TokenEgress;

    /// Reads the table (every key the kind takes, whether set or not), reports each
    /// problem, and returns the checked spec when there was none.
    fn read(&self, table: &mut Table, cx: &mut Checker, at: &ReadContext) -> Option<Box<dyn Spec>>;
}

/// What a kind's reader needs besides its table.
#[derive(Debug, Clone, Copy)]
pub struct ReadContext<'a> {
    /// The credential's name, for messages.
    pub name: &'a str,
    /// The config file's folder: relative paths are relative to it.
    pub base_dir: Option<&'a Path>,
}

/// A checked credential of some kind: everything the file said, nothing the environment
/// says yet.
pub trait Spec: std::any::Any + std::fmt::Debug + Send + Sync + SameAs {
    /// The kind that read it (`spec.kind().name()` is its `kind = ...`).
    fn kind(&self) -> &'static dyn Kind;

    /// Reads what the spec depends on in the environment, once, and binds the credential
    /// to its source and scheme. Performs no network I/O.
    fn resolve<'a>(&'a self, name: &'a str, env: &'a Environment) -> BoxFuture<'a, Binding>;

    /// What a client of a route on this credential sets (`credproxy env`).
    fn client_env(&self, route: &RouteView<'_>) -> ClientEnv;

    /// Where its key comes from, for key-shaped kinds (`credproxy secret` writes there).
    fn key_source(&self) -> Option<&key_source::KeySource>;
}

/// Equality across `dyn Spec`: a reload keeps a credential's cached value when its table
/// did not change. Every spec is `PartialEq`, so this needs no code in the kinds.
pub trait SameAs {
    fn same_as(&self, other: &dyn std::any::Any) -> bool;
}

impl<T: PartialEq + 'static> SameAs for T {
    fn same_as(&self, other: &dyn std::any::Any) -> bool {
        other.downcast_ref::<T>() == Some(self)
    }
}

/// A credential bound to the environment: where its value comes from, how it goes onto a
/// request, and what it knows about its placeholders.
#[derive(Debug)]
pub struct Binding {
    pub source: Source,
    pub scheme: Scheme,
    pub facts: Facts,
}

/// What a resolved credential knows that routes and `credproxy env` use.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Its region (AWS or Google), when known.
    pub region: Option<String>,
    /// Its Google project, when known.
    pub project: Option<String>,
    /// Each placeholder's value, or what to set for it.
    pub fills: Vec<(Placeholder, Result<String, String>)>,
}

impl Facts {
    pub fn fill(&self, placeholder: Placeholder) -> Option<&Result<String, String>> {
        self.fills
            .iter()
            .find(|(p, _)| *p == placeholder)
            .map(|(_, v)| v)
    }
}

/// A placeholder in an upstream URL, filled in when the config is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The credential's region.
    Region,
    /// The Vertex AI host for the credential's region.
    VertexHost,
    /// The whole Foundry base URL.
    FoundryBase,
}

impl Placeholder {
    pub const ALL: [Placeholder; 3] = [
        Placeholder::Region,
        Placeholder::VertexHost,
        Placeholder::FoundryBase,
    ];

    pub fn text(self) -> &'static str {
        match self {
            Placeholder::Region => "{region}",
            Placeholder::VertexHost => "{vertex_host}",
            Placeholder::FoundryBase => "{foundry_base}",
        }
    }

    /// What the placeholder stands for, in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Placeholder::Region => "region",
            Placeholder::VertexHost => "host",
            Placeholder::FoundryBase => "base URL",
        }
    }

    /// A placeholder that stands for a whole URL, not a part of one.
    pub fn is_whole_url(self) -> bool {
        self == Placeholder::FoundryBase
    }

    /// The kinds that fill it.
    pub fn filling_kinds(self) -> Vec<&'static str> {
        KINDS
            .iter()
            .filter(|k| k.placeholders().contains(&self))
            .map(|k| k.name())
            .collect()
    }

    /// The kinds that fill it, for messages: ``an `aws` or `google` ``.
    pub fn filled_by(self) -> String {
        let kinds = self.filling_kinds();
        let article = match kinds.first() {
            Some(k) if k.starts_with(['a', 'e', 'i', 'o', 'u']) => "an",
            _ => "a",
        };
        let quoted: Vec<String> = kinds.iter().map(|k| format!("`{k}`")).collect();
        format!("{article} {}", quoted.join(" or "))
    }

    /// A value of the right shape, for checking a URL before the real value is known.
    pub fn stand_in(self) -> &'static str {
        match self {
            Placeholder::Region => "us-east-1",
            Placeholder::VertexHost => "aiplatform.googleapis.com",
            Placeholder::FoundryBase => "https://resource.services.ai.azure.com/anthropic",
        }
    }
}

/// A route as `credproxy env` sees it.
#[derive(Debug)]
pub struct RouteView<'a> {
    pub upstream: &'a Upstream,
    /// The upstream as written, when it had placeholders.
    pub template: Option<&'a str>,
    pub facts: &'a Facts,
    pub scheme: &'a Scheme,
}

/// The client set-up a route calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEnv {
    /// `ANTHROPIC_BASE_URL` (Claude Code, the Anthropic SDKs).
    Anthropic,
    /// Claude Code's Bedrock mode.
    Bedrock { region: Option<String> },
    /// Claude Code's Vertex mode.
    Vertex {
        region: Option<String>,
        project: Option<String>,
    },
    /// Claude Code's Foundry mode.
    Foundry,
    /// No client mode to set: what credproxy does on the route.
    Note(String),
}

impl ClientEnv {
    /// The mode a route to another credproxy's cloud route wants: its upstream ends in the
    /// gateway's `/bedrock`, `/vertex` or `/foundry` (docs/gateway.md), whatever credential
    /// the laptop applies to reach it. The region and project are the gateway's to know.
    pub fn of_gateway_path(base_path: &str) -> Option<ClientEnv> {
        match base_path.rsplit('/').next()? {
            "bedrock" => Some(ClientEnv::Bedrock { region: None }),
            "vertex" => Some(ClientEnv::Vertex {
                region: None,
                project: None,
            }),
            "foundry" => Some(ClientEnv::Foundry),
            _ => None,
        }
    }
}

/// The kind named `name`.
pub fn find(name: &str) -> Option<&'static dyn Kind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

/// `"api_key", "bedrock_api_key", ... or "acs"`, for hints.
pub fn names() -> String {
    let quoted: Vec<String> = KINDS.iter().map(|k| format!("\"{}\"", k.name())).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// The keys each kind takes, learnt by reading an empty table with each kind once.
pub fn fields_of(kind: &dyn Kind) -> &'static [&'static str] {
    static FIELDS: OnceLock<Vec<(&'static str, Vec<&'static str>)>> = OnceLock::new();
    let all = FIELDS.get_or_init(|| {
        let empty = toml::de::DeTable::default();
        KINDS
            .iter()
            .map(|k| {
                let mut table = Table::new(&empty, 0..0);
                let mut scratch = Checker::new("");
                let at = ReadContext {
                    name: "",
                    base_dir: None,
                };
                let _ = k.read(&mut table, &mut scratch, &at);
                (k.name(), table.asked().to_vec())
            })
            .collect()
    });
    all.iter()
        .find(|(name, _)| *name == kind.name())
        .map_or(&[], |(_, fields)| fields.as_slice())
}

/// Whether some kind takes `key` (a key that belongs to another kind is reported as
/// "does not apply", an unknown one as unknown).
pub fn is_known_field(key: &str) -> bool {
    KINDS.iter().any(|k| fields_of(*k).contains(&key))
}

/// Checks that a key naming an environment variable holds a name, not a value.
pub(crate) fn check_env_name(
    cx: &mut Checker,
    var: Option<&crate::fields::Text>,
    hint: &str,
) -> bool {
    match var {
        Some(var) if !is_env_name(var.get_ref()) => {
            cx.report(
                var.span(),
                format!("`{}` is not an environment variable name", var.get_ref()),
                hint.to_string(),
            );
            false
        }
        _ => true,
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A trimmed, non-empty string value.
#[cfg(any(feature = "aws", feature = "google", feature = "azure"))]
pub(crate) fn text(value: &Option<crate::fields::Text>) -> Option<String> {
    value
        .as_ref()
        .map(|t| t.get_ref().trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Lists every kind: runs in the default build (all cloud features).
#[cfg(all(test, feature = "aws", feature = "google", feature = "azure"))]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_with_the_keys_it_reads() {
        let mut names: Vec<_> = KINDS.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
        assert!(fields_of(find("aws").unwrap()).contains(&"role_arn"));
        assert!(fields_of(find("api_key").unwrap()).contains(&"helper_env"));
        assert!(!fields_of(find("acs").unwrap()).contains(&"apply"));
        assert!(is_known_field("scopes") && !is_known_field("envv"));
        assert_eq!(
            names_hint(),
            "\"api_key\", \"bedrock_api_key\", \"aws\", \"google\", \"azure\", \"acs\" or \"oidc\""
        );
    }

    fn names_hint() -> String {
        names()
    }
}
