//! The ledger: every scope's counters in this process, the quota check made from them at
//! admission ([`Ledger::admit`]), and the charge made when an answer ends
//! ([`ticket::Ticket`]). Admission reads only what is held here (no round trip on a
//! request's path); in the background ([`background`]) the embedded store saves the
//! counters to the state file every few seconds, and with a shared store they are
//! exchanged with it every quarter second.
//!
//! The bound on overshoot: a request is admitted while its windows' committed use plus
//! what requests in flight have reserved is below the limit. A request reserves what
//! requests of that window have used on average (before any answer: its body's size in
//! tokens, roughly, plus 1,024). Concurrent requests of one caller therefore fill the
//! window with reservations instead of each slipping in below the limit: a window
//! overshoots by what the requests admitted last used beyond their reservations — about
//! one request when requests resemble their average — plus, with replicas, what other
//! instances admitted in the same quarter second.

mod background;
mod ticket;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::usage::{OnStoreError, Prices, Quota};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{QuotaLabels, SpendLabels, TokenLabels};

use super::counters::{Series, Totals};
use super::quota::{self, Spent, Use};
use super::record::UsageLog;
use super::redis_store::{RedisStore, Remote};
use super::scope::{Facts, Scope};
use super::state_file::StateFile;
use super::window::{self, Window};

pub use ticket::{Outcome, Ticket};

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

/// The cost of `tokens` of `model` at `prices`; `None` when the model has no price.
fn cost(prices: &Prices, model: Option<&str>, tokens: &super::meter::Tokens) -> Option<f64> {
    let price = prices.of(model?)?;
    let per_token = |n: u64, usd_per_million: f64| n as f64 * usd_per_million / 1e6;
    Some(
        per_token(tokens.input, price.input)
            + per_token(tokens.output, price.output)
            + per_token(tokens.cache_read, price.cache_read)
            + per_token(tokens.cache_creation, price.cache_write),
    )
}

/// Distinct model names counted (in reports and metric labels) before the rest are
/// `other`: a model name comes from the client.
const MODELS_NAMED: usize = 200;

#[derive(Debug)]
pub struct Ledger {
    rules: ArcSwap<Rules>,
    book: Mutex<Book>,
    backing: Backing,
    metrics: Arc<Metrics>,
    /// Serialises writes of the state file (the periodic one and the one at shutdown).
    saving: Mutex<()>,
    /// The models named in reports and metric labels so far (read on every answer,
    /// written 200 times at most).
    models_named: std::sync::RwLock<HashSet<String>>,
    /// The token and spend counters of each route and named model, looked up once: a
    /// metric family's lookup builds its labels (two strings) on every call.
    counters: std::sync::RwLock<HashMap<String, HashMap<String, Arc<ModelCounters>>>>,
}

/// One route's and model's `credproxy_tokens_total` (by type) and `credproxy_spend_usd_total`.
#[derive(Debug)]
struct ModelCounters {
    /// Input, output, cache creation, cache read.
    tokens: [prometheus_client::metrics::counter::Counter; 4],
    spend: prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Default)]
struct Book {
    entries: HashMap<Scope, Entry>,
    /// Whether anything was charged since the last save.
    dirty: bool,
    /// Whether the last exchange with the shared store failed.
    store_down: bool,
    /// Counts sent to the shared store and not yet acknowledged: sent again, under the
    /// same id, until they are (the store applies a batch once).
    batch: Option<background::Batch>,
    batches_sent: u64,
}

#[derive(Debug, Default)]
struct Entry {
    /// Counted here: everything (embedded), or since the last exchange (shared store).
    local: Series,
    /// In a batch the shared store has not acknowledged yet.
    in_transit: Option<Series>,
    /// The shared store's view, as of the last exchange.
    remote: Remote,
    reserved_tokens: u64,
    reserved_cost: f64,
    /// What one request of this scope has used, on average (tokens, dollars).
    average: Option<(f64, f64)>,
}

impl Entry {
    fn used(&self, second: u64) -> Use {
        let view = |window: Window| {
            let mut sum = self.local.in_window(window, second);
            if let Some(transit) = &self.in_transit {
                sum.add(&transit.in_window(window, second));
            }
            sum.add(&self.remote.in_window(window, second));
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
    StoreDown,
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
            saving: Mutex::new(()),
            models_named: Default::default(),
            counters: Default::default(),
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

    /// The book; a panic elsewhere while it was held leaves counts that are still counts.
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the shared store answered the last exchange (always, without one).
    pub fn store_reachable(&self) -> bool {
        !self.book().store_down
    }

    /// Whether model requests are refused for the store (`on_store_error = "deny"` while
    /// it cannot be reached): `/readyz` says so.
    pub fn refusing(&self) -> bool {
        self.rules.load().on_store_error == Some(OnStoreError::Deny) && !self.store_reachable()
    }

    /// Checks every quota window `facts` falls under; on success reserves in each and
    /// counts the request. `body_len`: the request body's size, for a first estimate.
    pub fn admit(self: &Arc<Self>, facts: Facts, body_len: usize) -> Result<Ticket, Refusal> {
        let rules = self.rules.load();
        let arrived = SystemTime::now();
        let charged = quota::windows(&rules.quotas, &facts);
        let mut ticket = Ticket::new(Arc::clone(self), facts, charged, arrived);
        let second = window::epoch_seconds(arrived);
        let mut book = self.book();
        if book.store_down && rules.on_store_error == Some(OnStoreError::Deny) {
            drop(book);
            ticket.refused(503, None);
            return Err(Refusal::StoreDown);
        }
        if ticket.charged.is_empty() {
            return Ok(ticket);
        }
        for charged in &ticket.charged {
            let entry = book.entries.entry(charged.scope.clone()).or_default();
            let used = entry.used(second);
            let local = &entry.local;
            let checked = quota::check(
                &rules.quotas[charged.quota],
                &used,
                second,
                |limit, measure| {
                    let here = measure(&local.in_window(Window::Minute, second));
                    let carried = measure(&used.minute).saturating_sub(here);
                    local.minute_frees_in(second, carried, limit, measure)
                },
            );
            if let Err(spent) = checked {
                drop(book);
                self.metrics
                    .quota_rejections
                    .get_or_create(&QuotaLabels {
                        quota: spent.quota.clone(),
                    })
                    .inc();
                ticket.refused(429, Some(spent.quota.clone()));
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

    /// A request refused before it was admitted (a caller refused): its record only.
    pub fn refused(&self, facts: &Facts, status: u16, arrived: SystemTime) {
        if let Some(log) = &self.rules.load().log {
            log.write(&ticket::refusal_record(facts, status, None, arrived));
        }
    }

    /// `model` as reports and metric labels name it: one of the first 200 models that
    /// answered with usage, else `other`.
    fn model_named(&self, model: Option<&str>) -> String {
        let Some(model) = model else {
            return "unknown".to_string();
        };
        let named = |set: &HashSet<String>| set.contains(model);
        if named(
            &self
                .models_named
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        ) {
            return model.to_string();
        }
        let mut set = self
            .models_named
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if named(&set) || set.len() < MODELS_NAMED {
            set.insert(model.to_string());
            return model.to_string();
        }
        "other".to_string()
    }

    /// The metric counters of `route` and (named) `model`.
    fn counters(&self, route: &str, model: &str) -> Arc<ModelCounters> {
        let found = self
            .counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route)
            .and_then(|models| models.get(model))
            .cloned();
        if let Some(found) = found {
            return found;
        }
        let labels = |kind| TokenLabels {
            route: route.to_string(),
            model: model.to_string(),
            r#type: kind,
        };
        let made = Arc::new(ModelCounters {
            tokens: ["input", "output", "cache_creation", "cache_read"]
                .map(|kind| self.metrics.tokens.get_or_create(&labels(kind)).clone()),
            spend: self
                .metrics
                .spend
                .get_or_create(&SpendLabels {
                    route: route.to_string(),
                    model: model.to_string(),
                })
                .clone(),
        });
        self.counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(route.to_string())
            .or_default()
            .insert(model.to_string(), Arc::clone(&made));
        made
    }

    /// Every report scope's totals in `window` now: this process's, or with a shared
    /// store every instance's.
    pub async fn totals(&self, window: Window) -> Result<Vec<(Scope, Totals)>, String> {
        let second = window::epoch_seconds(SystemTime::now());
        if let Backing::Redis(store) = &self.backing {
            return store.report(window, second).await.map_err(|e| {
                tracing::warn!(target: "credproxy::usage", store = %store.shown(), error = %e, "usage report failed");
                "the usage store did not answer; see credproxy's log".to_string()
            });
        }
        let book = self.book();
        Ok(book
            .entries
            .iter()
            .map(|(scope, entry)| (scope.clone(), entry.local.in_window(window, second)))
            .filter(|(_, totals)| !totals.is_zero())
            .collect())
    }
}
