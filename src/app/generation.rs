//! A generation: everything requests use, built from one resolved config. A reload builds
//! the next generation from the previous one, keeping what did not change — a credential
//! whose table is the same keeps its cell (and so its cached value: no refetch), an
//! unchanged `[callers]` keeps its key set and validated tokens, unchanged TLS files keep
//! their certificate, unchanged client settings keep the upstream connection pool (the
//! clients presenting a route's `client_cert` are built afresh, so a reload picks up a
//! renewed client certificate).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_rustls::TlsAcceptor;

use crate::callers::Callers;
use crate::config::Resolved;
use crate::proxy::{Proxy, Shared};
use crate::server::tls::Certificate;
use crate::telemetry::Metrics;

pub struct Generation {
    pub resolved: Resolved,
    pub shared: Arc<Shared>,
    pub tls: Option<(Arc<Certificate>, TlsAcceptor)>,
    pub loaded_at: SystemTime,
    /// Names of the credentials this generation took over from the previous one.
    pub kept: BTreeSet<String>,
    /// `[usage]`, prices and quotas, handed to the ledger when this generation is applied.
    pub usage_rules: Arc<crate::usage::Rules>,
}

/// What changed between two generations, for the reload's log line.
#[derive(Debug, Default)]
pub struct Changes {
    pub credentials_added: Vec<String>,
    pub credentials_changed: Vec<String>,
    pub credentials_removed: Vec<String>,
    pub routes_before: usize,
    pub routes_after: usize,
}

impl Generation {
    /// Builds a generation; with `previous`, takes over its unchanged parts.
    pub fn build(
        mut resolved: Resolved,
        previous: Option<&Generation>,
        metrics: &Arc<Metrics>,
    ) -> Result<Generation, String> {
        let mut kept = BTreeSet::new();
        if let Some(previous) = previous {
            for credential in &mut resolved.credentials {
                let same = previous.resolved.credentials.iter().find(|old| {
                    old.name == credential.name
                        && credential
                            .spec
                            .same_as(old.spec.as_ref() as &dyn std::any::Any)
                });
                if let Some(old) = same {
                    credential.cached = Arc::clone(&old.cached);
                    kept.insert(credential.name.clone());
                }
            }
        }
        let client = match previous {
            Some(previous) if same_client_settings(&previous.resolved, &resolved) => {
                previous.shared.client.clone()
            }
            _ => crate::client::Clients::build(&resolved)?,
        };
        crate::login::bind(&resolved, client.background());
        let callers = match (&resolved.config.callers, previous) {
            (None, _) => None,
            (Some(config), Some(previous))
                if previous.resolved.config.callers.as_ref() == Some(config)
                    && previous.resolved.jwks_file == resolved.jwks_file
                    && same_client_settings(&previous.resolved, &resolved) =>
            {
                previous.shared.callers.clone()
            }
            (Some(config), _) => Some(Arc::new(Callers::new(
                config,
                resolved.jwks_file.clone(),
                client.background().clone(),
            ))),
        };
        let tls = match (&resolved.tls, previous) {
            (None, _) => None,
            (Some(files), Some(previous)) if previous.resolved.tls.as_ref() == Some(files) => {
                previous.tls.clone()
            }
            (Some(files), _) => {
                let certificate = Certificate::load(files)?;
                let acceptor = certificate.acceptor()?;
                Arc::clone(&certificate).watch();
                Some((certificate, acceptor))
            }
        };
        let mut identity_clients = std::collections::HashMap::new();
        let identities = resolved
            .routes()
            .flat_map(|(_, route)| &route.targets)
            .filter_map(|target| target.identity.as_ref());
        for files in identities {
            if identity_clients.contains_key(files) {
                continue;
            }
            // Built afresh on every reload: a reload is how a renewed client certificate
            // (same file names, new content) is picked up.
            let client = crate::client::Clients::with_identity(&resolved, files)?;
            identity_clients.insert(files.clone(), client);
        }
        // The ledger outlives generations: a reload keeps every counter and judges the
        // running windows by the new quotas once the reload is applied.
        let (usage, usage_rules) = match previous {
            Some(previous) => {
                let usage = Arc::clone(&previous.shared.usage);
                let rules = crate::usage::rules(&resolved, Some(&usage.rules()), metrics)?;
                (usage, Arc::new(rules))
            }
            None => {
                let usage = crate::usage::open(&resolved, metrics)?;
                let rules = usage.rules().clone();
                (usage, rules)
            }
        };
        let mut shared = Shared::new(&resolved, client, callers, Arc::clone(metrics), usage);
        shared.identity_clients = identity_clients;
        shared.health = crate::proxy::targets::Registry::inheriting(
            &resolved,
            previous.map(|p| (&p.shared.health, &p.resolved)),
        );
        let shared = Arc::new(shared);
        Ok(Generation {
            resolved,
            shared,
            tls,
            loaded_at: SystemTime::now(),
            kept,
            usage_rules,
        })
    }

    /// The proxy serving the listener configured at `configured`, bound at `bound`; it
    /// takes over `previous`'s in-flight slots.
    pub fn proxy(
        &self,
        configured: SocketAddr,
        bound: SocketAddr,
        previous: Option<&Proxy>,
    ) -> Option<Arc<Proxy>> {
        let listener = self
            .resolved
            .listeners
            .iter()
            .find(|l| l.addr == configured)?;
        Some(Arc::new(Proxy::new(
            Arc::clone(&self.shared),
            &self.resolved,
            listener,
            bound,
            previous,
        )))
    }

    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.tls.as_ref().map(|(_, acceptor)| acceptor.clone())
    }

    /// What `next` changes compared with this generation.
    pub fn changes(&self, next: &Generation) -> Changes {
        let names = |g: &Generation| -> BTreeSet<String> {
            g.resolved
                .credentials
                .iter()
                .map(|c| c.name.clone())
                .collect()
        };
        let (before, after) = (names(self), names(next));
        Changes {
            credentials_added: after.difference(&before).cloned().collect(),
            credentials_changed: after
                .intersection(&before)
                .filter(|name| !next.kept.contains(*name))
                .cloned()
                .collect(),
            credentials_removed: before.difference(&after).cloned().collect(),
            routes_before: self.resolved.routes().count(),
            routes_after: next.resolved.routes().count(),
        }
    }
}

/// The upstream client depends on these only.
fn same_client_settings(a: &Resolved, b: &Resolved) -> bool {
    a.ca_file == b.ca_file
        && a.egress == b.egress
        && a.config.connect_timeout == b.config.connect_timeout
        && a.config.limits.pool_idle_timeout == b.config.limits.pool_idle_timeout
        && a.config.limits.pool_max_idle_per_host == b.config.limits.pool_max_idle_per_host
        && a.config.limits.pool_max_connections_per_host
            == b.config.limits.pool_max_connections_per_host
}
