//! The health of each target of a route with several targets: cooling until when (and a
//! single trial once that passes), consecutive failures, the last error, requests in
//! flight, requests and failovers counted. [`RouteHealth::pick`] chooses a target by the
//! route's `strategy`; what counts as a failure and how long a cool-down lasts is decided
//! in [`super::retry`], and [`super::failover`] carries both out.
//!
//! The state lives in [`Registry`], one per generation of the config; a reload hands each
//! target that sends requests the same way its previous [`TargetHealth`], so a key that
//! is rate-limited stays cooled down across a reload. A one-target route has no entry:
//! it is served exactly as before targets existed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::stream::Observer;
use crate::config::{Resolved, ResolvedRoute, ResolvedTarget, Strategy};
use crate::telemetry::Cut;

/// The health of every route with several targets, by listener and prefix.
#[derive(Debug, Default)]
pub struct Registry {
    routes: Vec<(SocketAddr, String, Arc<RouteHealth>)>,
}

impl Registry {
    /// One [`RouteHealth`] per route with several targets of `resolved`. A target that is
    /// the same as one of `previous`'s on the same listener and prefix, with the same
    /// credential, keeps its health; call this after the unchanged credentials were handed
    /// their previous cache cells (which is how "the same credential" is told).
    pub fn inheriting(resolved: &Resolved, previous: Option<(&Registry, &Resolved)>) -> Self {
        let mut routes = Vec::new();
        for (listener, route) in resolved.routes() {
            if route.targets.len() < 2 {
                continue;
            }
            let before = previous.and_then(|(registry, old)| {
                let health = registry.find(listener.addr, &route.prefix)?;
                let (_, old_route) = old
                    .routes()
                    .find(|(l, r)| l.addr == listener.addr && r.prefix == route.prefix)?;
                Some(Before {
                    health,
                    route: old_route,
                    resolved: old,
                })
            });
            let targets = route
                .targets
                .iter()
                .map(|target| {
                    let cell = &resolved.credentials[target.credential].cached;
                    before
                        .as_ref()
                        .and_then(|b| b.health_of(target, cell))
                        .unwrap_or_default()
                })
                .collect();
            let health = RouteHealth {
                targets,
                turn: AtomicUsize::new(0),
            };
            routes.push((listener.addr, route.prefix.clone(), Arc::new(health)));
        }
        Registry { routes }
    }

    /// The health of the route `prefix` on the listener configured as `listener`.
    pub fn find(&self, listener: SocketAddr, prefix: &str) -> Option<&Arc<RouteHealth>> {
        self.routes
            .iter()
            .find(|(l, p, _)| *l == listener && p == prefix)
            .map(|(_, _, health)| health)
    }
}

/// The same route in the generation a reload replaces.
struct Before<'a> {
    health: &'a RouteHealth,
    route: &'a ResolvedRoute,
    resolved: &'a Resolved,
}

impl Before<'_> {
    /// The health of the previous target that is `target` with the credential `cell`.
    fn health_of(
        &self,
        target: &ResolvedTarget,
        cell: &Arc<crate::credentials::Cached>,
    ) -> Option<Arc<TargetHealth>> {
        let credentials = &self.resolved.credentials;
        let i = self.route.targets.iter().position(|old| {
            old.same_as(target) && Arc::ptr_eq(&credentials[old.credential].cached, cell)
        })?;
        Some(Arc::clone(&self.health.targets[i]))
    }
}

/// A route's targets, in config order.
#[derive(Debug)]
pub struct RouteHealth {
    targets: Vec<Arc<TargetHealth>>,
    /// Where `spread` starts looking, so ties go round in turn.
    turn: AtomicUsize,
}

/// One target's health and counters.
#[derive(Debug, Default)]
pub struct TargetHealth {
    state: Mutex<State>,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failovers: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Not chosen before this (but for the single trial once it has passed).
    cooling_until: Option<Instant>,
    /// The same, for people (`/status`).
    cooling_until_wall: Option<SystemTime>,
    /// Failures since the last success: the backoff's exponent.
    failures: u32,
    /// The single trial after a cool-down is out: nobody else is sent there meanwhile.
    trial: bool,
    last_error: Option<(SystemTime, String)>,
}

/// What `/status` shows of a target.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `None`: healthy.
    pub cooling_until: Option<SystemTime>,
    pub last_error: Option<(SystemTime, String)>,
    pub requests: u64,
    pub failovers: u64,
    pub in_flight: usize,
}

/// Whether a target may be sent a request now.
enum Availability {
    Healthy,
    /// Its cool-down has passed and nobody is trying it: this request is its trial.
    Trial,
    Cooling(Instant),
}

impl State {
    fn availability(&self, now: Instant) -> Availability {
        match self.cooling_until {
            None => Availability::Healthy,
            Some(until) if now >= until && !self.trial => Availability::Trial,
            Some(until) => Availability::Cooling(until.max(now)),
        }
    }
}

impl TargetHealth {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind; carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.state();
        Snapshot {
            cooling_until: state.cooling_until_wall,
            last_error: state.last_error.clone(),
            requests: self.requests.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

impl RouteHealth {
    pub fn target(&self, index: usize) -> &TargetHealth {
        &self.targets[index]
    }

    /// A target for the next attempt: not in `tried`, able to serve, not cooling (or due
    /// its single trial), chosen by `strategy`. The claim counts the request in flight on
    /// it until dropped.
    pub fn pick(&self, route: &ResolvedRoute, tried: u64, now: Instant) -> Option<Claim> {
        let candidates = (0..self.targets.len())
            .filter(|i| tried & (1 << i) == 0 && route.targets[*i].upstream.is_ok());
        let (chosen, trial) = match route.failover.strategy {
            Strategy::Failover => candidates
                .into_iter()
                .find_map(|i| self.claim(i, now).map(|trial| (i, trial))),
            Strategy::Spread => {
                let best = self.least_loaded(&route.targets, candidates, now)?;
                self.claim(best, now).map(|trial| (best, trial))
            }
        }?;
        let target = Arc::clone(&self.targets[chosen]);
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        target.requests.fetch_add(1, Ordering::Relaxed);
        Some(Claim {
            index: chosen,
            target,
            trial,
        })
    }

    /// The available target with the fewest requests in flight for its weight, looking
    /// from the next in turn so that ties go round.
    fn least_loaded(
        &self,
        targets: &[ResolvedTarget],
        candidates: impl Iterator<Item = usize>,
        now: Instant,
    ) -> Option<usize> {
        let count = self.targets.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % count;
        let mut available: Vec<usize> = candidates
            .filter(|&i| {
                !matches!(
                    self.targets[i].state().availability(now),
                    Availability::Cooling(_)
                )
            })
            .collect();
        available.sort_by_key(|&i| (i + count - start) % count);
        // In flight per unit of weight, compared without division.
        let load = |i: usize| {
            let in_flight = self.targets[i].in_flight.load(Ordering::Relaxed) as u64;
            (in_flight, u64::from(targets[i].weight))
        };
        available.into_iter().reduce(|best, i| {
            let ((li, wi), (lb, wb)) = (load(i), load(best));
            if li * wb < lb * wi { i } else { best }
        })
    }

    /// Claims target `index` for a request: `None` while it cools down, `Some(true)` when
    /// this request is its single trial after the cool-down, `Some(false)` when healthy.
    fn claim(&self, index: usize, now: Instant) -> Option<bool> {
        let mut state = self.targets[index].state();
        match state.availability(now) {
            Availability::Healthy => Some(false),
            Availability::Trial => {
                state.trial = true;
                Some(true)
            }
            Availability::Cooling(_) => None,
        }
    }

    /// Each target's state for the 503 when none could serve, and the shortest time
    /// until one may be tried again (`None` when one is not cooling).
    pub fn describe(&self, route: &ResolvedRoute, now: Instant) -> (String, Option<Duration>) {
        let mut soonest: Option<Duration> = None;
        let mut all_cooling = true;
        let states: Vec<String> = self
            .targets
            .iter()
            .zip(&route.targets)
            .map(|(health, target)| {
                let state = health.state();
                let why = state
                    .last_error
                    .as_ref()
                    .map(|(_, e)| format!(" after {e}"))
                    .unwrap_or_default();
                if let Err(reason) = &target.upstream {
                    return format!("target {} cannot serve ({reason})", target.name);
                }
                match state.availability(now) {
                    Availability::Cooling(until) => {
                        let left = until - now;
                        soonest = Some(soonest.map_or(left, |s| s.min(left)));
                        format!(
                            "target {} cooling for {}s{why}",
                            target.name,
                            left.as_secs_f64().ceil() as u64
                        )
                    }
                    _ => {
                        all_cooling = false;
                        format!("target {} healthy{why}", target.name)
                    }
                }
            })
            .collect();
        (states.join("; "), soonest.filter(|_| all_cooling))
    }
}

/// A request on one target: counted in flight until dropped (for a streamed answer, at
/// its end, as an [`Observer`] of the body). The outcome is recorded once.
#[derive(Debug)]
pub struct Claim {
    pub index: usize,
    target: Arc<TargetHealth>,
    /// This request is the target's single trial after a cool-down.
    trial: bool,
}

impl Claim {
    /// The target answered well: healthy again.
    pub fn succeeded(&mut self) {
        let mut state = self.target.state();
        state.cooling_until = None;
        state.cooling_until_wall = None;
        state.failures = 0;
        state.trial = false;
        self.trial = false;
    }

    /// The target failed with `error`: cooled down for what [`super::retry::cooldown`]
    /// says given the failures so far (its argument), and a failover counted from it.
    pub fn failed(&mut self, error: String, cooldown: impl FnOnce(u32) -> Duration) {
        let mut state = self.target.state();
        state.failures = state.failures.saturating_add(1);
        let cool = cooldown(state.failures);
        state.cooling_until = Some(Instant::now() + cool);
        state.cooling_until_wall = Some(SystemTime::now() + cool);
        state.trial = false;
        state.last_error = Some((SystemTime::now(), error));
        self.trial = false;
    }

    /// Another target takes over this request.
    pub fn count_failover(&self) {
        self.target.failovers.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.trial {
            // The trial ended with no verdict (the client went away): let another try.
            self.target.state().trial = false;
        }
    }
}

impl Observer for Claim {
    fn chunk(&mut self, _data: &Bytes) {}

    fn end(self: Box<Self>, _cut: Option<Cut>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Failover, Http2};
    use crate::upstream::Upstream;

    fn target(index: usize, weight: u32) -> ResolvedTarget {
        ResolvedTarget {
            name: index.to_string(),
            upstream: Ok(Upstream::parse(&format!("https://t{index}.example")).unwrap()),
            template: None,
            credential: index,
            stream_idle_timeout: None,
            identity: None,
            translate: None,
            http2: Http2::Auto,
            weight,
        }
    }

    fn targets(weights: &[u32], strategy: Strategy) -> (ResolvedRoute, RouteHealth) {
        let targets: Vec<ResolvedTarget> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| target(i, *w))
            .collect();
        let first = targets[0].clone();
        let route = ResolvedRoute {
            prefix: "/".to_string(),
            upstream: first.upstream,
            template: None,
            credential: 0,
            max_in_flight: 8,
            stream_idle_timeout: None,
            strip_headers: Vec::new(),
            groups: None,
            identity: None,
            translate: None,
            http2: Http2::Auto,
            failover: Failover {
                strategy,
                ..Failover::defaults(targets.len())
            },
            targets,
        };
        let health = RouteHealth {
            targets: weights.iter().map(|_| Arc::default()).collect(),
            turn: AtomicUsize::new(0),
        };
        (route, health)
    }

    fn cool(claim: &mut Claim, seconds: u64) {
        claim.failed("429".to_string(), |_| Duration::from_secs(seconds));
    }

    #[test]
    fn failover_takes_the_first_untried_target_that_is_not_cooling() {
        let (route, health) = targets(&[1, 1, 1], Strategy::Failover);
        let now = Instant::now();
        let mut first = health.pick(&route, 0, now).unwrap();
        assert_eq!(first.index, 0);
        assert_eq!(
            health.pick(&route, 0b001, now).unwrap().index,
            1,
            "never twice"
        );
        assert!(health.pick(&route, 0b111, now).is_none());
        cool(&mut first, 30);
        assert_eq!(health.pick(&route, 0, Instant::now()).unwrap().index, 1);
        let (states, wait) = health.describe(&route, Instant::now());
        assert!(
            states.starts_with("target 0 cooling for 30s after 429"),
            "{states}"
        );
        assert_eq!(wait, None, "not every target is cooling");
    }

    #[test]
    fn a_cooled_down_target_gets_one_trial_and_is_healthy_after_it_succeeds() {
        let (route, health) = targets(&[1, 1], Strategy::Failover);
        let mut first = health.pick(&route, 0, Instant::now()).unwrap();
        cool(&mut first, 0);
        drop(first);
        let later = Instant::now() + Duration::from_millis(1);
        let mut trial = health.pick(&route, 0, later).unwrap();
        assert_eq!(trial.index, 0, "the trial");
        assert_eq!(
            health.pick(&route, 0, later).unwrap().index,
            1,
            "one trial at a time"
        );
        trial.succeeded();
        drop(trial);
        assert_eq!(
            health.pick(&route, 0, later).unwrap().index,
            0,
            "healthy again"
        );
        // A trial dropped without a verdict (the client left) frees the next trial.
        let soon = || Instant::now() + Duration::from_millis(5);
        let mut again = health.pick(&route, 0, soon()).unwrap();
        cool(&mut again, 0);
        drop(again);
        let abandoned = health.pick(&route, 0, soon()).unwrap();
        assert_eq!(abandoned.index, 0);
        drop(abandoned);
        assert_eq!(health.pick(&route, 0, soon()).unwrap().index, 0);
    }

    #[test]
    fn spread_takes_the_fewest_in_flight_for_the_weight_and_ties_in_turn() {
        let (route, health) = targets(&[1, 1, 1], Strategy::Spread);
        let now = Instant::now();
        let held: Vec<Claim> = (0..3)
            .map(|_| health.pick(&route, 0, now).unwrap())
            .collect();
        let mut seen: Vec<usize> = held.iter().map(|c| c.index).collect();
        seen.sort();
        assert_eq!(seen, [0, 1, 2], "one each while all are in flight");
        drop(held);
        let turns: Vec<usize> = (0..3)
            .map(|_| health.pick(&route, 0, now).unwrap().index)
            .collect();
        let mut sorted = turns.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2], "ties go round: {turns:?}");
        // Weight 2 takes two requests for the others' one.
        let (route, health) = targets(&[2, 1], Strategy::Spread);
        let held: Vec<Claim> = (0..3)
            .map(|_| health.pick(&route, 0, now).unwrap())
            .collect();
        let heavy = held.iter().filter(|c| c.index == 0).count();
        assert_eq!(
            heavy,
            2,
            "{:?}",
            held.iter().map(|c| c.index).collect::<Vec<_>>()
        );
    }

    #[test]
    fn when_every_target_cools_the_shortest_wait_is_given() {
        let (route, health) = targets(&[1, 1], Strategy::Spread);
        let now = Instant::now();
        let mut a = health.pick(&route, 0, now).unwrap();
        let mut b = health.pick(&route, 1 << a.index, now).unwrap();
        cool(&mut a, 40);
        cool(&mut b, 7);
        assert!(health.pick(&route, 0, Instant::now()).is_none());
        let (_, wait) = health.describe(&route, Instant::now());
        let wait = wait.unwrap();
        assert!(
            wait <= Duration::from_secs(40) && wait > Duration::from_secs(6),
            "{wait:?}"
        );
    }
}
