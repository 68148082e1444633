//! Configuration: a TOML file (or the embedded default) read once at start.
//!
//! [`raw`] mirrors the file with spans; [`validate`] checks all of it and builds the typed
//! [`Config`] the rest of credproxy uses. Secrets are referred to (env var, file, helper
//! command), not held, except for an explicit literal that earns a warning.

mod location;
pub mod raw;
pub mod units;
mod validate;

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
    pub upstream: Upstream,
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
    /// An API key or bearer token (`kind = "api_key"`).
    Key(KeySpec),
}

impl CredentialSpec {
    pub fn kind_name(&self) -> &'static str {
        match self {
            CredentialSpec::Key(_) => "api_key",
        }
    }
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

    /// Every route with the listener that serves it, in listener order.
    pub fn routes(&self) -> impl Iterator<Item = (&Listener, &Route)> {
        self.listeners
            .iter()
            .flat_map(|l| l.routes.iter().map(move |r| (l, r)))
    }
}
