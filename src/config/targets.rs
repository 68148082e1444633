//! `targets` on a route: several upstream + credential pairs that serve the same requests
//! (other keys, regions, accounts or clouds), and the route keys that say how requests
//! are spread over them and when one is left for the next (`strategy`, `max_attempts`,
//! `max_cooldown`). The one-target form (`upstream` + `credential`) is a route with one
//! target. Read in `validate::targets`; carried out in `proxy::failover`.

use std::time::Duration;

use super::{Http2, TlsConfig, UpstreamSpec, translate};

/// The cool-down cap when a route sets no `max_cooldown`.
pub const DEFAULT_MAX_COOLDOWN: Duration = Duration::from_secs(60);
/// The attempts per request when a route sets no `max_attempts`: every target, up to this.
pub const DEFAULT_MAX_ATTEMPTS: usize = 3;
/// Targets on one route; more is a config error (and no deployment has that many keys).
pub const MAX_TARGETS: usize = 64;

/// One place a route's requests can go: an upstream and the credential it takes, with
/// the per-upstream keys (its own, or else the route's).
#[derive(Debug, Clone)]
pub struct Target {
    /// `name`: how the target is shown (`x-credproxy-target`, metrics, `/status`); else
    /// its index in `targets`, from 0.
    pub name: Option<String>,
    pub upstream: UpstreamSpec,
    /// Index into `Config::credentials`.
    pub credential: usize,
    pub stream_idle_timeout: Option<Duration>,
    pub identity: Option<TlsConfig>,
    pub translate: Option<translate::Translate>,
    pub http2: Http2,
    /// `weight` under `strategy = "spread"` (default 1).
    pub weight: u32,
}

/// How a route with several targets chooses among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// In order: the first healthy target; the next only when it fails.
    #[default]
    Failover,
    /// Among healthy targets, the one with the fewest requests in flight for its weight
    /// (ties in turn), so N keys give about N times one key's rate limit.
    Spread,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Failover => "failover",
            Strategy::Spread => "spread",
        }
    }
}

/// The route keys `strategy`, `max_attempts` and `max_cooldown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    pub strategy: Strategy,
    /// Targets tried at most per request (never the same one twice).
    pub max_attempts: usize,
    /// The longest a failing target is cooled down for by backoff.
    pub max_cooldown: Duration,
}

impl Failover {
    /// The defaults for a route with `targets` targets.
    pub fn defaults(targets: usize) -> Self {
        Failover {
            strategy: Strategy::default(),
            max_attempts: targets.clamp(1, DEFAULT_MAX_ATTEMPTS),
            max_cooldown: DEFAULT_MAX_COOLDOWN,
        }
    }
}
