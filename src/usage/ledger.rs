//! The ledger: every scope's counters in this process, the quota check made from them at
//! admission, and the charge made when an answer ends. Admission reads only what is held
//! here (no round trip on a request's path); with a shared store, a task exchanges counts
//! with it every quarter second ([`super::redis_store`]); the embedded store saves them
//! to the state file every few seconds ([`super::state_file`]).
//!
//! The bound on overshoot: a request is admitted while its windows' use plus what
//! requests in flight have reserved is below the limit. A request reserves what requests
//! of that window have used on average (until it has one answer: its body's size in
//! tokens, roughly, plus 1,024), so concurrent requests of one caller fill the window
//! with reservations, not with unbounded charges: a window overshoots by at most the
//! last admitted request's excess over its reservation, plus what other instances
//! charged in the last exchange interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::usage::{OnStoreError, Price, Prices, Quota};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{QuotaLabels, SpendLabels, TokenLabels};

use super::counters::{Series, Totals};
use super::meter::Tokens;
use super::quota::{self, Charged, Spent, Use};
use super::record::{Record, UsageLog};
use super::redis_store::{RedisStore, Remote};
use super::scope::{Facts, Scope};
use super::state_file::StateFile;
use super::window::{self, Window};

/// What the config says, swapped whole on a reload (the counters stay).
#[derive(Debug, Default)]
pub struct Rules {
    pub quotas: Vec<Quota>,
    pub prices: Prices,
    pub on_store_error: Option<OnStoreError>,
    pub log: Option<Arc<UsageLog>>,
}

/// Where counts go besides this process.
#[derive(Debug)]
pub enum Backing {
    /// In memory only (no state directory, or another instance holds its file).
    Memory,
    Embedded(StateFile),
    Redis(RedisStore),
}

impl Backing {
    pub fn name(&self) -> &'static str {
        match self {
            Backing::Memory => "memory",
            Backing::Embedded(_) => "embedded",
            Backing::Redis(_) => "redis",
        }
    }
}

/// Distinct model names the metrics label before the rest are `other`.
const MODEL_LABELS: usize = 200;

#[derive(Debug)]
pub struct Ledger {
    rules: ArcSwap<Rules>,
    book: Mutex<Book>,
    backing: Backing,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Book {
    entries: HashMap<Scope, Entry>,
    /// Whether anything was charged since the last save.
    dirty: bool,
    /// Whether the last exchange with the shared store failed.
    store_down: bool,
    models_labelled: std::collections::HashSet<String>,
}

#[derive(Debug, Default)]
struct Entry {
    /// Counted here: everything (embedded), or since the last exchange (shared store).
    local: Series,
    /// Taken for an exchange that has not answered yet.
    in_transit: Option<Series>,
    /// The shared store's view, as of the last exchange.
    remote: Remote,
    reserved_tokens: u64,
    reserved_cost: f64,
    /// What one request of this scope has used, on average (tokens, dollars).
    average: Option<(f64, f64)>,
    /// When admission last looked at this scope (a shared store refreshes those).
    watched_at: u64,
}

impl Entry {
    fn used(&self, second: u64) -> Use {
        let view = |window: Window| {
            let mut sum = self.local.in_window(window, second);
            if let Some(transit) = &self.in_transit {
                sum.add(&transit.in_window(window, second));
            }
            let remote = match window {
                Window::Minute => self.remote.minute,
                Window::Day if self.remote.day.0 == window::day_of(second) => self.remote.day.1,
                Window::Month
                    if self.remote.month.0 == window::month_of_day(window::day_of(second)) =>
                {
                    self.remote.month.1
                }
                _ => Totals::default(),
            };
            sum.add(&remote);
            sum
        };
        Use {
            minute: view(Window::Minute),
            day: view(Window::Day),
            month: view(Window::Month),
            reserved_tokens: self.reserved_tokens,
            reserved_cost: self.reserved_cost,
        }
    }
}

/// Why admission refused.
#[derive(Debug)]
pub enum Refusal {
    Spent(Spent),
    /// `on_store_error = "deny"` while the shared store is unreachable.
    StoreDown {
        store: String,
    },
}

/// A request admitted: what it reserved, and its record to finish when the answer ends.
/// Dropped without [`Ticket::finish`] (a request that failed before an answer), it
/// releases its reservations and records nothing.
#[derive(Debug)]
pub struct Ticket {
    ledger: Arc<Ledger>,
    pub facts: Facts,
    charged: Vec<Charged>,
    reserved: (u64, f64),
    arrived: SystemTime,
    open: bool,
}

/// How a request ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub status: u16,
    pub tokens: Option<Tokens>,
    pub retried: bool,
    pub upstream_request_id: Option<String>,
    pub cut: Option<&'static str>,
}

impl Ledger {
    pub fn new(backing: Backing, loaded: HashMap<String, Series>, metrics: Arc<Metrics>) -> Self {
        let entries = loaded
            .into_iter()
            .map(|(scope, local)| {
                let entry = Entry {
                    local,
                    ..Entry::default()
                };
                (Scope::from(scope), entry)
            })
            .collect();
        Ledger {
            rules: ArcSwap::from_pointee(Rules::default()),
            book: Mutex::new(Book {
                entries,
                ..Book::default()
            }),
            backing,
            metrics,
        }
    }

    /// The config's quotas and prices, now and on each reload: the running windows stay
    /// and are judged by the new limits.
    pub fn configure(&self, rules: Arc<Rules>) {
        self.rules.store(rules);
    }

    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    pub fn rules(&self) -> arc_swap::Guard<Arc<Rules>> {
        self.rules.load()
    }

    /// Checks every quota window `facts` falls under; on success reserves in each and
    /// counts the request. `body_len`: the request body's size, for a first estimate.
    pub fn admit(self: &Arc<Self>, facts: Facts, body_len: usize) -> Result<Ticket, Refusal> {
        let rules = self.rules.load();
        let arrived = SystemTime::now();
        let charged = quota::windows(&rules.quotas, &facts);
        let mut ticket = Ticket {
            ledger: Arc::clone(self),
            facts,
            charged,
            reserved: (0, 0.0),
            arrived,
            open: true,
        };
        if ticket.charged.is_empty() {
            return Ok(ticket);
        }
        let second = window::epoch_seconds(arrived);
        let mut book = self.book.lock().expect("usage book");
        if book.store_down && rules.on_store_error == Some(OnStoreError::Deny) {
            let store = match &self.backing {
                Backing::Redis(store) => store.shown().to_string(),
                _ => "the usage store".to_string(),
            };
            drop(book);
            self.refused(&ticket.facts, 503, None, arrived);
            ticket.open = false;
            return Err(Refusal::StoreDown { store });
        }
        for charged in &ticket.charged {
            let entry = book.entries.entry(charged.scope.clone()).or_default();
            entry.watched_at = second;
            let used = entry.used(second);
            let local = &entry.local;
            let carried = |measure: fn(&Totals) -> u64| {
                measure(&used.minute) - measure(&local.in_window(Window::Minute, second))
            };
            let checked = quota::check(
                &rules.quotas[charged.quota],
                &used,
                second,
                |limit, measure| local.minute_frees_in(second, carried(measure), limit, measure),
            );
            if let Err(spent) = checked {
                drop(book);
                self.metrics
                    .quota_rejections
                    .get_or_create(&QuotaLabels {
                        quota: spent.quota.clone(),
                    })
                    .inc();
                self.refused(&ticket.facts, 429, Some(spent.quota.clone()), arrived);
                ticket.open = false;
                return Err(Refusal::Spent(spent));
            }
        }
        let first = book.entries.get(&ticket.charged[0].scope);
        let fallback = (body_len / 4 + 1024) as f64;
        let (tokens, cost) = first.and_then(|e| e.average).unwrap_or_else(|| {
            let price = ticket
                .facts
                .model
                .as_deref()
                .and_then(|m| rules.prices.of(m));
            (fallback, price.map_or(0.0, |p| fallback * p.input / 1e6))
        });
        ticket.reserved = (tokens.ceil() as u64, cost);
        let request = Totals {
            requests: 1,
            ..Totals::default()
        };
        for charged in &ticket.charged {
            let entry = book.entries.entry(charged.scope.clone()).or_default();
            entry.reserved_tokens += ticket.reserved.0;
            entry.reserved_cost += ticket.reserved.1;
            entry.local.charge(second, &request);
        }
        book.dirty = true;
        Ok(ticket)
    }

    /// The cost of `tokens` of `model`; `None` when the model has no price.
    fn cost(prices: &Prices, model: Option<&str>, tokens: &Tokens) -> Option<f64> {
        let price: &Price = prices.of(model?)?;
        let per_token = |n: u64, usd_per_million: f64| n as f64 * usd_per_million / 1e6;
        Some(
            per_token(tokens.input, price.input)
                + per_token(tokens.output, price.output)
                + per_token(tokens.cache_read, price.cache_read)
                + per_token(tokens.cache_creation, price.cache_write),
        )
    }

    /// A request refused before it was admitted (401, 403, 429, 503): its record only.
    pub fn refused(&self, facts: &Facts, status: u16, quota: Option<String>, arrived: SystemTime) {
        let rules = self.rules.load();
        if let Some(log) = &rules.log {
            log.write(&Record {
                time: rfc3339(arrived),
                caller: facts.caller.clone(),
                groups: facts.groups.clone(),
                tag: facts.tag.clone(),
                route: facts.route.clone(),
                model: facts.model.clone(),
                status,
                input_tokens: None,
                output_tokens: None,
                cache_creation_input_tokens: None,
                cache_read_input_tokens: None,
                cost_usd: 0.0,
                unpriced: false,
                tokens_unknown: true,
                duration_ms: 0,
                retried: false,
                upstream_request_id: None,
                quota,
                cut: None,
            });
        }
    }

    fn label_model(&self, book: &mut Book, model: Option<&str>) -> String {
        let Some(model) = model else {
            return "unknown".to_string();
        };
        if book.models_labelled.contains(model) {
            return model.to_string();
        }
        if book.models_labelled.len() < MODEL_LABELS {
            book.models_labelled.insert(model.to_string());
            return model.to_string();
        }
        "other".to_string()
    }
}

impl Ticket {
    /// Charges what the answer used in every scope of the request, releases the
    /// reservations and writes the record.
    pub fn finish(mut self, outcome: Outcome) {
        self.open = false;
        let ledger = Arc::clone(&self.ledger);
        let rules = ledger.rules.load();
        let ended = SystemTime::now();
        let second = window::epoch_seconds(ended);
        let model = self.facts.model.as_deref();
        let cost = outcome
            .tokens
            .as_ref()
            .and_then(|t| Ledger::cost(&rules.prices, model, t));
        let tokens = outcome.tokens.unwrap_or_default();
        let used = Totals {
            requests: 0,
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            cache_creation_input_tokens: tokens.cache_creation,
            cache_read_input_tokens: tokens.cache_read,
            cost_usd: cost.unwrap_or(0.0),
            unknown_tokens: u64::from(outcome.tokens.is_none()),
            unpriced: u64::from(outcome.tokens.is_some() && cost.is_none()),
        };
        let model_label = {
            let mut book = ledger.book.lock().expect("usage book");
            for charged in &self.charged {
                let entry = book.entries.entry(charged.scope.clone()).or_default();
                entry.reserved_tokens = entry.reserved_tokens.saturating_sub(self.reserved.0);
                entry.reserved_cost = (entry.reserved_cost - self.reserved.1).max(0.0);
                entry.local.charge(second, &used);
                if outcome.tokens.is_some() {
                    let this = (used.tokens() as f64, used.cost_usd);
                    entry.average = Some(match entry.average {
                        None => this,
                        Some((t, c)) => (0.8 * t + 0.2 * this.0, 0.8 * c + 0.2 * this.1),
                    });
                }
            }
            let counted = Totals {
                requests: 1,
                ..used
            };
            for scope in self.facts.report_scopes() {
                book.entries
                    .entry(scope)
                    .or_default()
                    .local
                    .charge(second, &counted);
            }
            book.dirty = true;
            outcome
                .tokens
                .is_some()
                .then(|| ledger.label_model(&mut book, model))
        };
        if let Some(model) = model_label {
            let route = &self.facts.route;
            for (kind, n) in [
                ("input", tokens.input),
                ("output", tokens.output),
                ("cache_creation", tokens.cache_creation),
                ("cache_read", tokens.cache_read),
            ] {
                ledger
                    .metrics
                    .tokens
                    .get_or_create(&TokenLabels {
                        route: route.clone(),
                        model: model.clone(),
                        r#type: kind,
                    })
                    .inc_by(n);
            }
            if let Some(cost) = cost {
                ledger
                    .metrics
                    .spend
                    .get_or_create(&SpendLabels {
                        route: route.clone(),
                        model,
                    })
                    .inc_by(cost);
            }
        }
        if let Some(log) = &rules.log {
            let known = |n: u64| outcome.tokens.is_some().then_some(n);
            log.write(&Record {
                time: rfc3339(self.arrived),
                caller: self.facts.caller.clone(),
                groups: self.facts.groups.clone(),
                tag: self.facts.tag.clone(),
                route: self.facts.route.clone(),
                model: self.facts.model.clone(),
                status: outcome.status,
                input_tokens: known(tokens.input),
                output_tokens: known(tokens.output),
                cache_creation_input_tokens: known(tokens.cache_creation),
                cache_read_input_tokens: known(tokens.cache_read),
                cost_usd: used.cost_usd,
                unpriced: used.unpriced == 1,
                tokens_unknown: outcome.tokens.is_none(),
                duration_ms: ended
                    .duration_since(self.arrived)
                    .unwrap_or_default()
                    .as_millis() as u64,
                retried: outcome.retried,
                upstream_request_id: outcome.upstream_request_id,
                quota: None,
                cut: outcome.cut,
            });
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.open || self.charged.is_empty() {
            return;
        }
        let mut book = self.ledger.book.lock().expect("usage book");
        for charged in &self.charged {
            if let Some(entry) = book.entries.get_mut(&charged.scope) {
                entry.reserved_tokens = entry.reserved_tokens.saturating_sub(self.reserved.0);
                entry.reserved_cost = (entry.reserved_cost - self.reserved.1).max(0.0);
            }
        }
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Background work: saving (embedded) or exchanging with the shared store, and dropping
/// counters nobody needs any more.
impl Ledger {
    /// Runs until the process ends; `save_every` for the embedded store.
    pub async fn run(self: Arc<Self>, save_every: Duration) {
        let every = match self.backing {
            Backing::Redis(_) => Duration::from_millis(250),
            _ => save_every,
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pruned_at = 0;
        loop {
            tick.tick().await;
            let second = window::epoch_seconds(SystemTime::now());
            if second >= pruned_at + 60 {
                self.prune(second);
                pruned_at = second;
            }
            match &self.backing {
                Backing::Memory => {}
                Backing::Embedded(_) => self.save(),
                Backing::Redis(store) => self.exchange(store, second).await,
            }
        }
    }

    /// Writes the state file if anything changed (also at shutdown).
    pub fn save(&self) {
        let Backing::Embedded(file) = &self.backing else {
            return;
        };
        let mut book = self.book.lock().expect("usage book");
        if !book.dirty {
            return;
        }
        book.dirty = false;
        let snapshot: Vec<(String, Series)> = book
            .entries
            .iter()
            .map(|(k, e)| (k.to_string(), e.local.clone()))
            .collect();
        drop(book);
        if let Err(e) = file.save(snapshot.iter().map(|(k, v)| (k.as_str(), v))) {
            tracing::error!(error = %e, "usage counters not saved");
            self.book.lock().expect("usage book").dirty = true;
        }
    }

    fn prune(&self, second: u64) {
        let mut book = self.book.lock().expect("usage book");
        book.entries.retain(|_, entry| {
            let empty = entry.local.prune(second);
            let busy = entry.reserved_tokens > 0 || entry.in_transit.is_some();
            let remote =
                entry.remote.day.0 == window::day_of(second) && entry.watched_at + 600 > second;
            !empty || busy || remote
        });
    }

    async fn exchange(&self, store: &RedisStore, second: u64) {
        let (deltas, watched) = {
            let mut book = self.book.lock().expect("usage book");
            let mut deltas = Vec::new();
            let mut watched = Vec::new();
            for (scope, entry) in book.entries.iter_mut() {
                if entry.in_transit.is_none() && !entry.local.prune(second) {
                    let taken = entry.local.take();
                    entry.in_transit = Some(taken.clone());
                    deltas.push((scope.clone(), taken));
                }
                if entry.watched_at + 600 > second {
                    watched.push(scope.clone());
                }
            }
            (deltas, watched)
        };
        let result = store.exchange(&deltas, &watched, second).await;
        let mut book = self.book.lock().expect("usage book");
        match result {
            Ok(remotes) => {
                for (scope, _) in &deltas {
                    if let Some(entry) = book.entries.get_mut(scope) {
                        entry.in_transit = None;
                    }
                }
                for (scope, remote) in watched.iter().zip(remotes) {
                    if let Some(entry) = book.entries.get_mut(scope) {
                        entry.remote = remote;
                    }
                }
                if book.store_down {
                    tracing::info!(store = %store.shown(), "the usage store is reachable again; counts made meanwhile are sent");
                }
                book.store_down = false;
            }
            Err(error) => {
                for (scope, taken) in deltas {
                    if let Some(entry) = book.entries.get_mut(&scope) {
                        entry.in_transit = None;
                        entry.local.merge(&taken);
                    }
                }
                self.metrics.usage_store_errors.inc();
                if !book.store_down {
                    tracing::error!(store = %store.shown(), %error,
                        "the usage store cannot be reached; counting locally until it is back");
                }
                book.store_down = true;
            }
        }
    }

    /// Whether the shared store answered the last exchange (always, without one).
    pub fn store_reachable(&self) -> bool {
        !self.book.lock().expect("usage book").store_down
    }

    /// Every report scope's totals in `window` now: this process's, or with a shared
    /// store every instance's.
    pub async fn totals(&self, window: Window) -> Result<Vec<(Scope, Totals)>, String> {
        let second = window::epoch_seconds(SystemTime::now());
        if let Backing::Redis(store) = &self.backing {
            return store
                .report(window, second)
                .await
                .map_err(|e| format!("the usage store {} did not answer: {e}", store.shown()));
        }
        let book = self.book.lock().expect("usage book");
        Ok(book
            .entries
            .iter()
            .map(|(scope, entry)| (scope.clone(), entry.local.in_window(window, second)))
            .filter(|(_, totals)| !totals.is_zero())
            .collect())
    }
}
