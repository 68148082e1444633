//! Validated → resolved: the one step that reads the environment. Each credential is
//! bound to its source and scheme by its kind; each upstream with placeholders is filled
//! in from its credential, or its route is disabled with what to set (the other routes
//! still work).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::{Config, Failover, KeysFrom, Route, Target, UpstreamSpec};
use crate::credentials::Cached;
use crate::kinds::{ClientEnv, Environment, Facts, Placeholder, RouteView, Spec};
use crate::schemes::Scheme;
use crate::upstream::Upstream;

/// A configuration bound to the environment it runs in.
#[derive(Debug)]
pub struct Resolved {
    pub config: Config,
    /// Same order as [`Config::credentials`].
    pub credentials: Vec<ResolvedCredential>,
    pub listeners: Vec<ResolvedListener>,
    /// `ca_file` with `~` expanded.
    pub ca_file: Option<PathBuf>,
    /// `tls_cert` and `tls_key` with `~` expanded.
    pub tls: Option<TlsFiles>,
    /// `[callers] jwks_file` with `~` expanded.
    pub jwks_file: Option<PathBuf>,
    /// The egress proxy (config or environment), or why the environment's does not parse.
    pub egress: Result<Option<super::egress::Egress>, String>,
    /// `[usage] log` with `~` expanded.
    pub usage_log: Option<PathBuf>,
    /// Where the embedded usage store keeps its state file: `[usage] state_dir`, else the
    /// platform's state directory; `None` when neither is known (no `HOME`).
    pub usage_state_dir: Option<PathBuf>,
}

/// What keeps a route from being ready (see [`Resolved::unready`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unready {
    /// A credential (by index) that a route needs holds no value.
    Credential(usize),
    /// None of these credentials of a route's targets holds a value.
    Route {
        prefix: String,
        credentials: Vec<usize>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
pub struct ResolvedCredential {
    pub name: String,
    pub spec: Arc<dyn Spec>,
    /// The source and the value the cache holds for it.
    pub cached: Arc<Cached>,
    pub scheme: Scheme,
    pub facts: Facts,
}

#[derive(Debug, Clone)]
pub struct ResolvedListener {
    pub addr: SocketAddr,
    pub routes: Vec<ResolvedRoute>,
}

#[derive(Debug, Clone)]
pub struct ResolvedRoute {
    pub prefix: String,
    /// Where requests go, or why the route cannot serve (a placeholder nobody set);
    /// requests get that reason as a 502.
    pub upstream: Result<Upstream, String>,
    /// The upstream as written, when it has placeholders.
    pub template: Option<String>,
    /// Index into [`Resolved::credentials`].
    pub credential: usize,
    /// Upstream requests in flight at once on this route.
    pub max_in_flight: usize,
    pub stream_idle_timeout: Option<Duration>,
    /// Request headers removed besides the built-in list (global ones included).
    pub strip_headers: Vec<HeaderName>,
    /// Only callers in one of these groups are admitted; `None`: every caller.
    pub groups: Option<Arc<[String]>>,
    /// The client certificate presented to this route's upstream (mTLS).
    pub identity: Option<TlsFiles>,
    /// `translate`: the Anthropic API served in front of Bedrock or Vertex.
    pub translate: Option<Arc<super::translate::Translation>>,
    /// `upstream_http2`: the HTTP version spoken to the upstream.
    pub http2: super::Http2,
    /// Every target, at least one; the per-target fields above are the first one's (what
    /// the one-target form names, and what `credproxy env` describes).
    pub targets: Vec<ResolvedTarget>,
    /// `strategy`, `max_attempts`, `max_cooldown`.
    pub failover: Failover,
}

/// One of a route's targets, bound to the environment.
#[derive(Debug, Clone)]
pub struct ResolvedTarget {
    /// Its `name`, else its index in `targets` (`x-credproxy-target`, metrics, `/status`).
    pub name: String,
    /// Where requests go, or why this target cannot serve.
    pub upstream: Result<Upstream, String>,
    pub template: Option<String>,
    /// Index into [`Resolved::credentials`].
    pub credential: usize,
    pub stream_idle_timeout: Option<Duration>,
    pub identity: Option<TlsFiles>,
    pub translate: Option<Arc<super::translate::Translation>>,
    pub http2: super::Http2,
    pub weight: u32,
}

impl ResolvedTarget {
    /// The upstream for people: the URL, or the template of a disabled target.
    pub fn upstream_text(&self) -> String {
        match (&self.upstream, &self.template) {
            (Ok(upstream), _) => upstream.to_string(),
            (Err(_), Some(template)) => template.clone(),
            (Err(reason), None) => reason.clone(),
        }
    }

    /// Whether `other` sends requests to the same place the same way (upstream,
    /// translation, client certificate, HTTP version); with the same credential (which
    /// the caller compares, as indexes differ between generations) a reload keeps such a
    /// target's health.
    pub fn same_as(&self, other: &ResolvedTarget) -> bool {
        self.upstream == other.upstream
            && self.translate == other.translate
            && self.identity == other.identity
            && self.http2 == other.http2
    }
}

impl ResolvedRoute {
    /// Why the route cannot serve: its one target's reason, or the first target's when
    /// none of several can serve.
    pub fn disabled(&self) -> Option<&str> {
        if self.targets.len() > 1 && self.targets.iter().any(|t| t.upstream.is_ok()) {
            return None;
        }
        self.upstream.as_ref().err().map(String::as_str)
    }

    /// The upstream for people: the URL, or the template of a disabled route.
    pub fn upstream_text(&self) -> String {
        match (&self.upstream, &self.template) {
            (Ok(upstream), _) => upstream.to_string(),
            (Err(_), Some(template)) => template.clone(),
            (Err(reason), None) => reason.clone(),
        }
    }
}

pub(super) async fn resolve(config: Config, env: &Environment) -> Resolved {
    let mut credentials = Vec::with_capacity(config.credentials.len());
    for credential in &config.credentials {
        let binding = credential.spec.resolve(&credential.name, env).await;
        credentials.push(ResolvedCredential {
            name: credential.name.clone(),
            spec: Arc::clone(&credential.spec),
            cached: Cached::new(credential.name.clone(), binding.source),
            scheme: binding.scheme,
            facts: binding.facts,
        });
    }
    let listeners = config
        .listeners
        .iter()
        .map(|listener| ResolvedListener {
            addr: listener.addr,
            routes: listener
                .routes
                .iter()
                .map(|route| resolve_route(&config, route, &credentials, env.home().as_deref()))
                .collect(),
        })
        .collect();
    let ca_file = config
        .ca_file
        .as_ref()
        .map(|path| path.resolve(env.home().as_deref()));
    let tls = config.tls.as_ref().map(|tls| TlsFiles {
        cert: tls.cert.resolve(env.home().as_deref()),
        key: tls.key.resolve(env.home().as_deref()),
    });
    let jwks_file = config
        .callers
        .as_ref()
        .and_then(|c| c.jwt.as_ref())
        .and_then(|jwt| match &jwt.keys {
            KeysFrom::File(path) => Some(path.resolve(env.home().as_deref())),
            _ => None,
        });
    let egress = super::egress::resolve(config.egress_proxy.as_ref(), &config.no_proxy, env);
    let home = env.home();
    let usage_log = config
        .usage
        .log
        .as_ref()
        .map(|p| p.resolve(home.as_deref()));
    let usage_state_dir = match &config.usage.state_dir {
        Some(dir) => Some(dir.resolve(home.as_deref())),
        None => crate::files::state_dir(env.get("XDG_STATE_HOME"), home.as_deref()),
    };
    Resolved {
        config,
        credentials,
        listeners,
        ca_file,
        tls,
        jwks_file,
        egress,
        usage_log,
        usage_state_dir,
    }
}

fn resolve_route(
    config: &Config,
    route: &Route,
    credentials: &[ResolvedCredential],
    home: Option<&std::path::Path>,
) -> ResolvedRoute {
    let targets: Vec<ResolvedTarget> = route
        .targets
        .iter()
        .enumerate()
        .map(|(index, target)| {
            resolve_target(index, target, &credentials[target.credential].facts, home)
        })
        .collect();
    let first = targets[0].clone();
    ResolvedRoute {
        prefix: route.prefix.clone(),
        upstream: first.upstream,
        template: first.template,
        credential: first.credential,
        max_in_flight: route.max_in_flight.unwrap_or(config.limits.max_in_flight),
        stream_idle_timeout: first.stream_idle_timeout,
        // The caller's own token header never goes upstream.
        strip_headers: config
            .strip_headers
            .iter()
            .chain(&route.strip_headers)
            .chain(config.callers.as_ref().and_then(|c| c.header.as_ref()))
            .cloned()
            .collect(),
        groups: route.groups.as_deref().map(Arc::from),
        identity: first.identity,
        translate: first.translate,
        http2: first.http2,
        targets,
        failover: route.failover,
    }
}

fn resolve_target(
    index: usize,
    target: &Target,
    facts: &Facts,
    home: Option<&std::path::Path>,
) -> ResolvedTarget {
    let (mut upstream, template) = match &target.upstream {
        UpstreamSpec::Fixed(upstream) => (Ok(upstream.clone()), None),
        UpstreamSpec::Template(template) => (fill(template, facts), Some(template.clone())),
    };
    let translate = target.translate.as_ref().map(|t| {
        Arc::new(super::translate::Translation {
            to: t.to,
            models: t.models.clone(),
            project: facts.project.clone(),
            region: facts.region.clone(),
        })
    });
    // Vertex paths name the project and region: without them the target cannot serve.
    if let Some(t) = &translate
        && t.to == super::translate::TranslateTo::Vertex
        && upstream.is_ok()
    {
        if t.project.is_none() {
            upstream = Err("translate = \"vertex\" needs the Google project: set `project` in the credential or ANTHROPIC_VERTEX_PROJECT_ID, and restart credproxy".to_string());
        } else if t.region.is_none() {
            upstream = Err("translate = \"vertex\" needs the region: set `region` in the credential or CLOUD_ML_REGION, and restart credproxy".to_string());
        }
    }
    ResolvedTarget {
        name: target.name.clone().unwrap_or_else(|| index.to_string()),
        upstream,
        template,
        credential: target.credential,
        stream_idle_timeout: target.stream_idle_timeout,
        identity: target.identity.as_ref().map(|files| TlsFiles {
            cert: files.cert.resolve(home),
            key: files.key.resolve(home),
        }),
        translate,
        http2: target.http2,
        weight: target.weight,
    }
}

fn fill(template: &str, facts: &Facts) -> Result<Upstream, String> {
    let mut url = template.to_string();
    for placeholder in Placeholder::ALL {
        if !url.contains(placeholder.text()) {
            continue;
        }
        match facts.fill(placeholder) {
            Some(Ok(value)) => url = url.replace(placeholder.text(), value),
            Some(Err(what_to_set)) => return Err(what_to_set.clone()),
            None => {
                return Err(format!(
                    "nothing fills `{}` for this route's credential",
                    placeholder.text()
                ));
            }
        }
    }
    Upstream::parse(&url).map_err(|(message, _)| message)
}

impl Resolved {
    /// The base URL a client uses for a listener and prefix: over TLS, by the first name in
    /// `allowed_hosts` (the name on the certificate); else from this machine.
    pub fn base_url(&self, addr: SocketAddr, prefix: &str) -> String {
        let tls = self.tls.is_some();
        let scheme = if tls { "https" } else { "http" };
        let named = self
            .config
            .guard
            .allowed_hosts
            .first()
            .filter(|_| tls)
            .cloned();
        let host = if let Some(name) = named {
            name
        } else if addr.ip().is_unspecified() {
            if addr.is_ipv4() {
                "127.0.0.1".to_string()
            } else {
                "[::1]".to_string()
            }
        } else {
            match addr {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            }
        };
        let path = if prefix == "/" { "" } else { prefix };
        format!("{scheme}://{host}:{}{path}", addr.port())
    }

    /// Every route with the listener that serves it, in listener order.
    pub fn routes(&self) -> impl Iterator<Item = (&ResolvedListener, &ResolvedRoute)> {
        self.listeners
            .iter()
            .flat_map(|l| l.routes.iter().map(move |r| (l, r)))
    }

    /// Why credential `index` is not fetched: no route uses it, or all its routes are
    /// disabled.
    pub fn unused_reason(&self, index: usize) -> Option<String> {
        let routes: Vec<&ResolvedRoute> = self
            .routes()
            .map(|(_, r)| r)
            .filter(|r| r.targets.iter().any(|t| t.credential == index))
            .collect();
        if routes.is_empty() {
            return Some("unused: no route refers to it".to_string());
        }
        if routes.iter().all(|r| r.disabled().is_some()) {
            return routes[0]
                .disabled()
                .map(|reason| format!("unused: its routes are disabled ({reason})"));
        }
        None
    }

    /// What keeps the enabled routes from serving, given which credentials hold a value
    /// (`holds`, by index): each credential a one-target route needs and lacks, and each
    /// route with several targets none of whose credentials holds one (a route is ready
    /// when one of its targets can be sent a request). `/readyz` and `check` ask this.
    pub fn unready(&self, holds: impl Fn(usize) -> bool) -> Vec<Unready> {
        let mut missing = Vec::new();
        for (_, route) in self.routes() {
            if route.disabled().is_some() {
                continue;
            }
            let usable: Vec<usize> = route
                .targets
                .iter()
                .filter(|t| t.upstream.is_ok())
                .map(|t| t.credential)
                .collect();
            if usable.iter().any(|&c| holds(c)) {
                continue;
            }
            let found = if let [one] = usable[..] {
                Unready::Credential(one)
            } else {
                Unready::Route {
                    prefix: route.prefix.clone(),
                    credentials: usable,
                }
            };
            if !missing.contains(&found) {
                missing.push(found);
            }
        }
        missing
    }

    /// A route as `credproxy env` and the kinds see it (a disabled route has none).
    /// What a route's clients must be told (`credproxy env`), `None` while it is disabled:
    /// a translating route speaks the Anthropic API whatever its credential; a route to a
    /// gateway's cloud route speaks that cloud's mode; else the credential kind says.
    pub fn client_env(&self, route: &ResolvedRoute) -> Option<ClientEnv> {
        if route.disabled().is_none() && route.targets.iter().any(|t| t.translate.is_some()) {
            return Some(ClientEnv::Anthropic);
        }
        let view = self.route_view(route)?;
        if let Some(mode) = ClientEnv::of_gateway_path(&view.upstream.base_path) {
            return Some(mode);
        }
        Some(self.credentials[route.credential].spec.client_env(&view))
    }

    pub fn route_view<'a>(&'a self, route: &'a ResolvedRoute) -> Option<RouteView<'a>> {
        let credential = &self.credentials[route.credential];
        Some(RouteView {
            upstream: route.upstream.as_ref().ok()?,
            template: route.template.as_deref(),
            facts: &credential.facts,
            scheme: &credential.scheme,
        })
    }
}
