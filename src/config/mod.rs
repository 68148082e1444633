//! Configuration: a TOML file (or the embedded default) read once at start.
//!
//! [`raw`] mirrors the file with spans; [`validate`] checks all of it and builds the typed
//! [`Config`] the rest of credproxy uses. Secrets are referred to (env var, file, helper
//! command), not held, except for an explicit literal that earns a warning.

mod location;
pub mod raw;
pub mod units;
mod validate;

pub use validate::is_region;

/// The Foundry endpoint from the variables Claude Code uses for it.
pub fn foundry_base_from_env() -> Option<String> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    var("ANTHROPIC_FOUNDRY_BASE_URL")
        .map(|url| url.trim_end_matches('/').to_string())
        .or_else(|| {
            var("ANTHROPIC_FOUNDRY_RESOURCE")
                .map(|r| format!("https://{r}.services.ai.azure.com/anthropic"))
        })
}

/// The Vertex AI host for a region: `global` and the `us`/`eu` multi-regions have their own.
pub fn vertex_host(region: &str) -> String {
    match region {
        "global" => "aiplatform.googleapis.com".to_string(),
        "us" | "eu" => format!("aiplatform.{region}.rep.googleapis.com"),
        _ => format!("{region}-aiplatform.googleapis.com"),
    }
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme};

use crate::credentials::Secret;
pub use location::{ConfigError, Problem};

/// The configuration used when neither `--config` nor `$CREDPROXY_CONFIG` names a file.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// Where the configuration text came from; decides how relative paths resolve.
#[derive(Debug, Clone)]
pub enum ConfigOrigin {
    File(PathBuf),
    Embedded,
}

impl ConfigOrigin {
    pub fn display_name(&self) -> String {
        match self {
            ConfigOrigin::File(path) => path.display().to_string(),
            ConfigOrigin::Embedded => "<embedded default config>".to_string(),
        }
    }

    /// Relative key files are read relative to the config file, like includes in most tools.
    fn base_dir(&self) -> Option<&Path> {
        match self {
            ConfigOrigin::File(path) => path.parent(),
            ConfigOrigin::Embedded => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub origin: ConfigOrigin,
    pub listeners: Vec<Listener>,
    pub credentials: Vec<CredentialConfig>,
    pub max_body: usize,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub shutdown_grace: Duration,
    pub guard: GuardConfig,
    pub ca_file: Option<PathBuf>,
    /// Each credential's region (same index), once [`Config::resolve_templates`] ran.
    pub regions: Vec<Option<String>>,
}

/// One bound address and the routes it serves.
#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    /// In config order; the proxy's route table orders them for matching.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Starts with `/`, never ends with `/` unless it is exactly `/`.
    pub prefix: String,
    /// Final once [`Config::resolve_templates`] ran for a route written with placeholders.
    pub upstream: Upstream,
    /// The upstream as written, when it has placeholders (`{region}`, `{vertex_host}`,
    /// `{foundry_base}`) filled in at start.
    pub template: Option<String>,
    /// Why the route cannot serve (a placeholder nobody set); requests get this as a 502.
    pub disabled: Option<String>,
    /// Index into [`Config::credentials`].
    pub credential: usize,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    /// Host and port, the port only when it is not the scheme's default.
    pub authority: Authority,
    /// The upstream URL's path without a trailing `/` (empty for the root).
    pub base_path: String,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// Who may talk to credproxy, beyond loopback clients that name a loopback host.
#[derive(Debug, Clone, Default)]
pub struct GuardConfig {
    /// Extra `Host` names accepted (lower case, without port).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call credproxy (exact `scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CredentialConfig {
    pub name: String,
    pub spec: CredentialSpec,
}

/// What a credential is and where it comes from; one variant per kind.
#[derive(Debug, Clone)]
pub enum CredentialSpec {
    /// An API key or bearer token (`kind = "api_key"`, or `"bedrock_api_key"`).
    Key(KeySpec),
    /// AWS credentials from the AWS chain, applied with SigV4 (`kind = "aws"`).
    Aws(AwsSpec),
    /// A Google OAuth access token from Google's credential chain (`kind = "google"`).
    Google(GoogleSpec),
    /// A Microsoft Entra ID token from the Azure chain (`kind = "azure"`).
    Azure(AzureSpec),
    /// An Azure Communication Services access key, applied with HMAC-SHA256 (`kind = "acs"`).
    Acs(KeySpec),
}

impl CredentialSpec {
    pub fn kind_name(&self) -> &'static str {
        match self {
            CredentialSpec::Key(key) => match key.rejection {
                Rejection::Unauthorized => "api_key",
                Rejection::BedrockApiKey => "bedrock_api_key",
            },
            CredentialSpec::Aws(_) => "aws",
            CredentialSpec::Google(_) => "google",
            CredentialSpec::Azure(_) => "azure",
            CredentialSpec::Acs(_) => "acs",
        }
    }
}

/// `kind = "google"`: a service-account key file, or Google's application-default chain
/// (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application-default login, the metadata
/// server, the `gcloud` CLI); applied as `Authorization: Bearer`.
#[derive(Debug, Clone, Default)]
pub struct GoogleSpec {
    pub key_file: Option<PathBuf>,
    pub scopes: Vec<String>,
    /// Sent as `x-goog-user-project` (billing and quota for user credentials).
    pub quota_project: Option<String>,
    /// For `credproxy env` (`ANTHROPIC_VERTEX_PROJECT_ID`).
    pub project: Option<String>,
    /// For `{region}` and `{vertex_host}` in upstream URLs (else `$CLOUD_ML_REGION`).
    pub region: Option<String>,
}

/// `kind = "azure"`: a Microsoft Entra ID token from azure_identity, by the chain below or
/// one method named in config; or, when `key_env` names a set variable, that key.
#[derive(Debug, Clone)]
pub struct AzureSpec {
    pub method: AzureMethod,
    pub scope: String,
    /// `https://login.microsoftonline.us` and the like; else `$AZURE_AUTHORITY_HOST`, else public.
    pub authority_host: Option<String>,
    /// Override `$AZURE_TENANT_ID` / `$AZURE_CLIENT_ID` (the client id also picks a
    /// user-assigned managed identity).
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    /// A variable that, when set, holds an API key used instead of Entra (Foundry keys).
    pub key_env: Option<String>,
    /// How that key is applied (`api-key` unless configured).
    pub key_apply: Apply,
}

/// Which Entra credential to use; `Auto` tries them in the usual order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureMethod {
    Auto,
    ClientSecret,
    WorkloadIdentity,
    ManagedIdentity,
    AzureCli,
    AzureDeveloperCli,
}

impl AzureMethod {
    pub const NAMES: &[(&str, AzureMethod)] = &[
        ("auto", AzureMethod::Auto),
        ("client_secret", AzureMethod::ClientSecret),
        ("workload_identity", AzureMethod::WorkloadIdentity),
        ("managed_identity", AzureMethod::ManagedIdentity),
        ("azure_cli", AzureMethod::AzureCli),
        ("azure_developer_cli", AzureMethod::AzureDeveloperCli),
    ];
}

pub const DEFAULT_AZURE_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

pub const DEFAULT_GOOGLE_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How an upstream says a key went bad; decides which answers trigger refresh-and-replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Any 401 (Anthropic, Azure, most bearer APIs).
    Unauthorized,
    /// Bedrock API keys: 403 whose body starts `{"Message":"Authentication failed` (and 401).
    BedrockApiKey,
}

/// `kind = "aws"`: aws-config's default chain (env, profile, SSO, credential_process, web
/// identity, container, IMDS), optionally assuming a role on top, signed with SigV4.
#[derive(Debug, Clone, Default)]
pub struct AwsSpec {
    pub profile: Option<String>,
    /// Region for the chain (STS, SSO) and for `{region}` in upstream URLs; signing uses
    /// the region in the upstream host when it names one.
    pub region: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub session_name: Option<String>,
    /// SigV4 service name (`bedrock` unless configured).
    pub service: String,
    /// A variable that, when set, holds a Bedrock API key used as a bearer instead of SigV4.
    pub bearer_env: Option<String>,
}

#[derive(Debug, Clone)]
pub struct KeySpec {
    /// A variable that, when set, holds a helper command used instead of `from`.
    pub helper_env: Option<String>,
    pub from: Option<KeyFrom>,
    /// Used by a helper named through `helper_env`, and by `from` when it is a helper.
    pub helper_ttl: Duration,
    pub helper_timeout: Duration,
    pub apply: Apply,
    pub rejection: Rejection,
}

#[derive(Debug, Clone)]
pub enum KeyFrom {
    Env(String),
    File {
        path: PathBuf,
        ttl: Option<Duration>,
    },
    Literal(Secret),
    Helper(String),
}

/// How a key goes onto the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apply {
    /// The key alone as the value of this header (`x-api-key`, `api-key`, ...).
    Header(HeaderName),
    /// `Authorization: Bearer <key>`.
    Bearer,
}

impl std::fmt::Display for Apply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Apply::Header(name) => write!(f, "{name}"),
            Apply::Bearer => f.write_str("authorization: Bearer"),
        }
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;
pub const DEFAULT_HELPER_TTL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(60);

impl Config {
    /// Parses and validates configuration text; every problem is reported at once.
    pub fn parse(text: &str, origin: ConfigOrigin) -> Result<Config, ConfigError> {
        validate::validate(text, origin)
    }

    /// Reads `--config PATH`, else `$CREDPROXY_CONFIG`, else the embedded default.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let from_env = std::env::var_os("CREDPROXY_CONFIG").filter(|v| !v.is_empty());
        let path = explicit
            .map(Path::to_path_buf)
            .or(from_env.map(PathBuf::from));
        match path {
            None => Config::parse(EMBEDDED_DEFAULT, ConfigOrigin::Embedded),
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
                    file: path.display().to_string(),
                    problems: vec![Problem {
                        line: 1,
                        column: 1,
                        message: format!("cannot read the config file: {e}"),
                        hint: Some(
                            "pass an existing file with --config, or omit it to use the embedded default"
                                .to_string(),
                        ),
                    }],
                })?;
                Config::parse(&text, ConfigOrigin::File(path))
            }
        }
    }

    /// Fills in the placeholders of upstream URLs: `{region}` and `{vertex_host}` from the
    /// region of each route's credential (`regions[i]` for credential `i`), `{foundry_base}`
    /// from `foundry_base`. A route whose value nobody set is disabled, with the reason,
    /// rather than failing the whole start: the other routes still work.
    pub fn resolve_templates(
        &mut self,
        regions: Vec<Option<String>>,
        foundry_base: Option<String>,
    ) {
        for listener in &mut self.listeners {
            for route in &mut listener.routes {
                let Some(template) = &route.template else {
                    continue;
                };
                let credential = &self.credentials[route.credential];
                let name = &credential.name;
                let region = regions.get(route.credential).cloned().flatten();
                let needs_region = [
                    validate::REGION_PLACEHOLDER,
                    validate::VERTEX_HOST_PLACEHOLDER,
                ]
                .iter()
                .any(|p| template.contains(p));
                let missing = if needs_region && region.is_none() {
                    let set = match credential.spec {
                        CredentialSpec::Google(_) => "CLOUD_ML_REGION",
                        _ => "AWS_REGION",
                    };
                    Some(format!(
                        "no region is known for credential `{name}`; set {set} (or `region` in [credentials.{name}]) and restart credproxy"
                    ))
                } else if template.contains(validate::FOUNDRY_BASE_PLACEHOLDER)
                    && foundry_base.is_none()
                {
                    Some("no Foundry resource is known; set ANTHROPIC_FOUNDRY_RESOURCE (or ANTHROPIC_FOUNDRY_BASE_URL) and restart credproxy".to_string())
                } else {
                    None
                };
                if let Some(reason) = missing {
                    route.disabled = Some(reason);
                    continue;
                }
                let region = region.unwrap_or_default();
                let url = template
                    .replace(validate::REGION_PLACEHOLDER, &region)
                    .replace(validate::VERTEX_HOST_PLACEHOLDER, &vertex_host(&region))
                    .replace(
                        validate::FOUNDRY_BASE_PLACEHOLDER,
                        foundry_base.as_deref().unwrap_or_default(),
                    );
                match validate::parse_upstream(&url) {
                    Ok(upstream) => route.upstream = upstream,
                    Err((message, _)) => route.disabled = Some(message),
                }
            }
        }
        self.regions = regions;
    }

    /// Every route with the listener that serves it, in listener order.
    pub fn routes(&self) -> impl Iterator<Item = (&Listener, &Route)> {
        self.listeners
            .iter()
            .flat_map(|l| l.routes.iter().map(move |r| (l, r)))
    }
}
