//! Configuration: a TOML file (or the embedded default) in three steps, as ripgrep goes
//! from low-level to high-level arguments:
//!
//! 1. **raw**: the document parsed with every value's place (`fields`);
//! 2. **validated** ([`Config`], from [`validate`]): every key checked, every problem
//!    reported at once with its line and column; nothing read from the environment;
//! 3. **resolved** ([`Resolved`], from [`resolve`]): the environment read once — regions,
//!    the Foundry resource, `helper_env`, `~` in paths — each credential bound to its
//!    source and scheme, each upstream placeholder filled in or its route disabled with
//!    the reason. Nothing changes a validated config after it is built; a resolved one
//!    changes in one way only: a reload (`app::Generation::build`) hands each unchanged
//!    credential the previous generation's cache cell, so its value survives the reload.
//!
//! Secrets are referred to (env var, file, helper command), not held, except for an
//! explicit literal that earns a warning.

mod callers;
pub mod egress;
mod resolve;
pub mod targets;
pub mod translate;
pub mod usage;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use callers::{CallersConfig, JwtConfig, KeysFrom, StaticToken};
pub use resolve::{
    Resolved, ResolvedCredential, ResolvedListener, ResolvedRoute, ResolvedTarget, TlsFiles,
    Unready,
};
pub use targets::{Failover, Strategy, Target};

use http::HeaderName;

use crate::fields::{ConfigError, ConfigPath, Problem};
use crate::kinds::{Environment, Spec};
use crate::upstream::Upstream;

/// The configuration used when neither `--config` nor `$CREDPROXY_CONFIG` names a file.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9787";
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
    pub limits: Limits,
    pub guard: GuardConfig,
    pub ca_file: Option<ConfigPath>,
    /// Request headers removed on every route besides the built-in list (credentials of
    /// other gateways: `ocp-apim-subscription-key`, `x-auth-token`, ...).
    pub strip_headers: Vec<HeaderName>,
    /// Who may use the proxy listeners; `None`: everyone who can reach them (a personal
    /// set-up on loopback).
    pub callers: Option<CallersConfig>,
    /// HTTPS on every proxy listener.
    pub tls: Option<TlsConfig>,
    /// Where `/healthz`, `/readyz`, `/metrics` and `/status` are served.
    pub admin: AdminListen,
    /// Reload when the config file changes (besides SIGHUP).
    pub watch_config: bool,
    /// `egress_proxy`: the corporate proxy upstream connections go through (else the
    /// environment's `HTTPS_PROXY`/`HTTP_PROXY`, if any), and `no_proxy` exceptions.
    pub egress_proxy: Option<crate::credentials::Secret>,
    pub no_proxy: Vec<String>,
    /// `workers`: serving threads, each with its own connections and upstream pool; 0
    /// (the default) means one per CPU. Read at start only.
    pub workers: usize,
    /// `[usage]`: where usage records go and where the counters live.
    pub usage: usage::UsageConfig,
    /// `[prices."MODEL"]`: what tokens cost, for spend.
    pub prices: usage::Prices,
    /// `[[quotas]]`: who may spend how much, per window.
    pub quotas: Vec<usage::Quota>,
}

/// The admin listener: never mixed with proxied routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    Off,
    /// Not written in the file: if the port is taken (a second credproxy on the machine),
    /// credproxy runs without admin endpoints and says so.
    Default(std::net::SocketAddr),
    /// Written in the file: failing to bind it stops the start.
    Explicit(std::net::SocketAddr),
}

impl AdminListen {
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            AdminListen::Off => None,
            AdminListen::Default(addr) | AdminListen::Explicit(addr) => Some(*addr),
        }
    }
}

/// The listener's certificate chain and key, PEM files re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: ConfigPath,
    pub key: ConfigPath,
}

/// What one client, connection or burst may hold. Every limit has a default that suits a
/// laptop and is configurable for a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a complete HTTP/1 request head, counted from its first
    /// byte; and to start its first request, counted from the connection's opening (TLS:
    /// the handshake's end, which itself has this long).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A request body that sends no bytes for this long gets 408.
    pub body_read_timeout: Duration,
    /// Client connections open at once on one listener; at the limit, connections with no
    /// request in flight are closed to make room for new ones (`server::room`).
    pub max_connections: usize,
    /// Upstream requests in flight at once on one route (unless the route sets its own);
    /// more wait up to `queue_timeout`, then get 503.
    pub max_in_flight: usize,
    pub queue_timeout: Duration,
    /// Idle upstream connections kept per host, and for how long.
    pub pool_max_idle_per_host: usize,
    pub pool_idle_timeout: Duration,
    /// HTTP/2 connections open at once to one upstream host, all serving workers
    /// together; a request that finds every stream of every one in use waits up to
    /// `queue_timeout`, then gets 503.
    pub pool_max_connections_per_host: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(90),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_in_flight: 1024,
            queue_timeout: Duration::from_secs(30),
            pool_max_idle_per_host: 64,
            pool_idle_timeout: Duration::from_secs(30),
            // 10,000 streams fit even when an upstream allows only 20 per connection.
            pool_max_connections_per_host: 512,
        }
    }
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
    /// Overrides [`Limits::max_in_flight`] for this route.
    pub max_in_flight: Option<usize>,
    /// A response body that sends nothing for this long is ended (off unless set).
    pub stream_idle_timeout: Option<Duration>,
    /// Request headers removed on this route besides the global list.
    pub strip_headers: Vec<HeaderName>,
    /// Only callers in one of these groups may use the route; `None`: every caller.
    pub groups: Option<Vec<String>>,
    /// `client_cert` / `client_key`: the certificate presented to the upstream (mTLS).
    pub identity: Option<TlsConfig>,
    /// `translate`: the Anthropic API served in front of Bedrock or Vertex.
    pub translate: Option<translate::Translate>,
    /// `upstream_http2`: whether requests go to the upstream over HTTP/2.
    pub http2: Http2,
    /// Where requests go, at least one; the fields above are the first one's (all that the
    /// one-target form writes).
    pub targets: Vec<Target>,
    /// `strategy`, `max_attempts`, `max_cooldown`: how the targets are used.
    pub failover: Failover,
}

/// `upstream_http2` on a route: which HTTP version credproxy speaks to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Http2 {
    /// HTTP/2 where TLS's ALPN offers it, else HTTP/1.1 (plain `http://` is HTTP/1.1).
    #[default]
    Auto,
    /// HTTP/1.1 only (a pool of HTTP/1.1 connections).
    Never,
    /// HTTP/2 only: ALPN must choose it; on `http://`, h2c with prior knowledge.
    Always,
}

impl Http2 {
    pub fn name(self) -> &'static str {
        match self {
            Http2::Auto => "auto",
            Http2::Never => "never",
            Http2::Always => "always",
        }
    }
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

    /// The file the config comes from: `--config PATH`, else `$CREDPROXY_CONFIG`; `None`
    /// for the embedded default.
    pub fn file(explicit: Option<&Path>) -> Option<PathBuf> {
        let from_env = std::env::var_os("CREDPROXY_CONFIG").filter(|v| !v.is_empty());
        explicit
            .map(Path::to_path_buf)
            .or(from_env.map(PathBuf::from))
    }

    /// Reads `--config PATH`, else `$CREDPROXY_CONFIG`, else the embedded default.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match Config::file(explicit) {
            None => Config::parse(EMBEDDED_DEFAULT, ConfigOrigin::Embedded),
            Some(path) => {
                let one = |line, column, message: String, hint: &str| ConfigError {
                    file: path.display().to_string(),
                    problems: vec![Problem {
                        line,
                        column,
                        message,
                        hint: Some(hint.to_string()),
                    }],
                };
                let bytes = std::fs::read(&path).map_err(|e| {
                    one(
                        1,
                        1,
                        format!("cannot read the config file: {e}"),
                        "pass an existing file with --config, or omit it to use the embedded default",
                    )
                })?;
                let text = String::from_utf8(bytes).map_err(|e| {
                    let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                    let valid = std::str::from_utf8(valid).expect("valid up to here");
                    let (line, column) =
                        crate::fields::SourceText::new(valid).line_column(valid.len());
                    one(
                        line,
                        column,
                        "the config file is not UTF-8 text: this byte starts no UTF-8 character"
                            .to_string(),
                        "save the file as UTF-8 (TOML files are UTF-8)",
                    )
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
