//! Configuration: a TOML file (or the embedded default) in three steps, as ripgrep goes
//! from low-level to high-level arguments:
//!
//! 1. **raw**: the document parsed with every value's place ([`crate::fields`]);
//! 2. **validated** ([`Config`], from [`validate`]): every key checked, every problem
//!    reported at once with its line and column; nothing read from the environment;
//! 3. **resolved** ([`Resolved`], from [`resolve`]): the environment read once — regions,
//!    the Foundry resource, `helper_env`, `~` in paths — each credential bound to its
//!    source and scheme, each upstream placeholder filled in or its route disabled with
//!    the reason. Nothing changes a config after it is built.
//!
//! Secrets are referred to (env var, file, helper command), not held, except for an
//! explicit literal that earns a warning.

mod resolve;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use resolve::{Resolved, ResolvedCredential, ResolvedListener, ResolvedRoute};

use crate::fields::{ConfigError, ConfigPath, Problem};
use crate::kinds::{Environment, Spec};
use crate::upstream::Upstream;

/// The configuration used when neither `--config` nor `$CREDPROXY_CONFIG` names a file.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;

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

/// A validated configuration: what the file says, checked.
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
    pub ca_file: Option<ConfigPath>,
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
    pub upstream: UpstreamSpec,
    /// Index into [`Config::credentials`].
    pub credential: usize,
}

/// An upstream as written: a URL, or a URL with placeholders filled in at resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSpec {
    Fixed(Upstream),
    /// Checked with stand-in values; filled in from the route's credential.
    Template(String),
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
    pub spec: Arc<dyn Spec>,
}

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

    /// Reads the environment once and binds every credential and route (see [`resolve`]).
    pub async fn resolve(self, env: &Environment) -> Resolved {
        resolve::resolve(self, env).await
    }

    /// Every route with the listener that serves it, in listener order.
    pub fn routes(&self) -> impl Iterator<Item = (&Listener, &Route)> {
        self.listeners
            .iter()
            .flat_map(|l| l.routes.iter().map(move |r| (l, r)))
    }
}
