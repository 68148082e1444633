//! Phase 2: where the request goes. The longest route prefix (404 without one), the
//! route's `groups` for this caller (403), its credential, its upstream (a disabled route
//! answers 502 with why), and a place among the route's requests in flight (`max_in_flight`;
//! 503 after `queue_timeout`). The place comes before the body is read: a queued request
//! holds its connection, not its body. A route with several targets chooses its target
//! later, for each attempt ([`super::failover`]).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::targets::RouteHealth;
use super::{Injector, Proxy, ProxyError};
use crate::callers::Caller;
use crate::config::{ResolvedRoute, ResolvedTarget};
use crate::telemetry::AccessLog;
use crate::upstream::Upstream;

/// Where a request goes: the one target of its route, or a route with several.
pub(super) enum Chosen<'a> {
    One(Target<'a>),
    Several(Several<'a>),
}

/// The route a request takes and the target it is sent to, with what it needs from them.
pub(super) struct Target<'a> {
    pub route: &'a ResolvedRoute,
    pub target: &'a ResolvedTarget,
    pub injector: &'a Injector,
    pub upstream: &'a Upstream,
    /// Held until the answer ends.
    pub slot: OwnedSemaphorePermit,
}

/// A route with several targets, whose target is chosen for each attempt.
pub(super) struct Several<'a> {
    pub route: &'a ResolvedRoute,
    pub health: &'a RouteHealth,
    pub slot: OwnedSemaphorePermit,
}

impl Proxy {
    pub(super) async fn target<'a>(
        &'a self,
        path: &str,
        caller: Option<&Caller>,
        log: &mut AccessLog<'a>,
    ) -> Result<Chosen<'a>, ProxyError> {
        let entry = self.routes.find(path).ok_or_else(|| ProxyError::NoRoute {
            path: path.chars().take(200).collect(),
            prefixes: self.routes.prefixes().to_string(),
        })?;
        let route = &entry.route;
        if let (Some(callers), Some(caller)) = (&self.shared.callers, caller) {
            callers
                .admit_route(caller, &route.prefix, route.groups.as_deref())
                .map_err(|e| self.caller_error(false, ProxyError::CallerRefused(e)))?;
        }
        log.route = Some(&route.prefix);
        if let Some(health) = &entry.health {
            if let Some(reason) = route.disabled() {
                return Err(ProxyError::RouteDisabled {
                    route: route.prefix.clone(),
                    reason: reason.to_string(),
                });
            }
            let slot = self.slot(route, &entry.slots).await?;
            return Ok(Chosen::Several(Several {
                route,
                health,
                slot,
            }));
        }
        let injector = &self.shared.injectors[route.credential];
        log.credential = Some(injector.cached.name());
        let upstream = route
            .upstream
            .as_ref()
            .map_err(|reason| ProxyError::RouteDisabled {
                route: route.prefix.clone(),
                reason: reason.clone(),
            })?;
        let slot = self.slot(route, &entry.slots).await?;
        Ok(Chosen::One(Target {
            route,
            target: &route.targets[0],
            injector,
            upstream,
            slot,
        }))
    }

    /// Waits up to `queue_timeout` for one of the route's in-flight slots.
    async fn slot(
        &self,
        route: &ResolvedRoute,
        slots: &Arc<Semaphore>,
    ) -> Result<OwnedSemaphorePermit, ProxyError> {
        if let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
            return Ok(permit);
        }
        let waited = self.shared.queue_timeout;
        match tokio::time::timeout(waited, Arc::clone(slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ProxyError::Overloaded {
                route: route.prefix.clone(),
                limit: route.max_in_flight,
                waited,
            }),
        }
    }

    /// The prefix of the route `path` falls under, if any.
    pub(super) fn route_of(&self, path: &str) -> Option<String> {
        self.routes
            .find(path)
            .map(|entry| entry.route.prefix.clone())
    }

    /// Whether the route for `path` serves Claude Code in Bedrock mode.
    pub(super) fn bedrock_clients(&self, path: &str) -> bool {
        !self.bedrock_routes.is_empty()
            && self
                .routes
                .find(path)
                .is_some_and(|entry| self.bedrock_routes.contains(&entry.route.prefix))
    }
}
