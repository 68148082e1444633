//! The ledger's background work: saving the state file (embedded store), exchanging
//! counts with the shared store, and dropping counters nobody needs any more.
//!
//! An exchange with the shared store sends the counts made since the last one as one
//! batch with an id of its own; the store applies a batch once (a second delivery of the
//! same id is ignored), so a batch whose answer was lost — a timeout, a dropped
//! connection — is simply sent again, never counted twice. Counts made meanwhile wait for
//! the next batch. Then the windows of every quota subject any instance charged today or
//! this month are read back.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Backing, Book, Ledger};
use crate::usage::counters::Series;
use crate::usage::quota;
use crate::usage::redis_store::{RedisStore, Watched};
use crate::usage::scope::Scope;
use crate::usage::window::{self, Window};

/// Counts on their way to the shared store.
#[derive(Debug)]
pub(super) struct Batch {
    id: String,
    deltas: Vec<(Scope, Series)>,
}

/// How often the shared store is exchanged with: a charge on one instance reaches the
/// others' admission within two of these.
const EXCHANGE_EVERY: Duration = Duration::from_millis(250);

impl Ledger {
    /// Runs until the process ends; `save_every` for the embedded store.
    pub async fn run(self: Arc<Self>, save_every: Duration) {
        let every = match self.backing {
            Backing::Redis(_) => EXCHANGE_EVERY,
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
                Backing::Embedded(_) => {
                    let ledger = Arc::clone(&self);
                    let _ = tokio::task::spawn_blocking(move || ledger.save()).await;
                }
                Backing::Redis(store) => self.exchange(store, second).await,
            }
        }
    }

    /// At shutdown: the state file written, or the counts not yet sent to the shared
    /// store sent (within a few seconds).
    pub async fn flush(&self) {
        if let Some(log) = self.rules.load_full().log.clone() {
            let _ = tokio::task::spawn_blocking(move || log.flush()).await;
        }
        match &self.backing {
            Backing::Memory => {}
            Backing::Embedded(_) => self.save(),
            Backing::Redis(store) => {
                let second = window::epoch_seconds(SystemTime::now());
                let sent = tokio::time::timeout(Duration::from_secs(3), async {
                    // A batch still unacknowledged first, then what was counted since.
                    self.exchange(store, second).await;
                    self.exchange(store, second).await;
                });
                if sent.await.is_err() || !self.book().entries.values().all(|e| e.local.is_empty())
                {
                    tracing::warn!(target: "credproxy::usage", store = %store.shown(),
                        "usage counts of the last moments could not be sent to the usage store");
                }
            }
        }
    }

    /// Writes the state file if anything changed.
    pub fn save(&self) {
        let Backing::Embedded(file) = &self.backing else {
            return;
        };
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let snapshot: Vec<(String, Series)> = {
            let mut book = self.book();
            if !book.dirty {
                return;
            }
            book.dirty = false;
            book.entries
                .iter()
                .map(|(k, e)| (k.to_string(), e.local.calendar()))
                .collect()
        };
        if let Err(e) = file.save(snapshot.iter().map(|(k, v)| (k.as_str(), v))) {
            tracing::error!(target: "credproxy::usage", error = %e, "usage counters not saved");
            self.book().dirty = true;
        }
    }

    /// Drops the counters of scopes with nothing left in any window, nothing reserved,
    /// nothing on its way to the store and nothing the store says for today.
    fn prune(&self, second: u64) {
        let mut book = self.book();
        book.entries.retain(|_, entry| {
            let empty = entry.local.prune(second);
            let busy = entry.reserved_tokens > 0 || entry.in_transit.is_some();
            let remote = !entry.remote.in_window(Window::Month, second).is_zero()
                || !entry.remote.in_window(Window::Minute, second).is_zero();
            !empty || busy || remote
        });
    }

    async fn exchange(&self, store: &RedisStore, second: u64) {
        let (batch_id, deltas) = self.next_batch();
        let sent = match &deltas {
            Some(deltas) => store.apply(&batch_id, deltas).await,
            None => Ok(()),
        };
        if let Err(error) = sent {
            self.store_failed(store, &error);
            return;
        }
        let watched = {
            let mut book = self.book();
            if deltas.is_some()
                && let Some(batch) = book.batch.take()
            {
                for (scope, _) in &batch.deltas {
                    if let Some(entry) = book.entries.get_mut(scope) {
                        entry.in_transit = None;
                    }
                }
            }
            watched(&book, &self.rules.load().quotas)
        };
        match store.read(&watched, second).await {
            Ok((remotes, charged_elsewhere)) => {
                let mut book = self.book();
                for (watch, remote) in watched.iter().zip(remotes) {
                    book.entries.entry(watch.scope.clone()).or_default().remote = remote;
                }
                // Quota subjects other instances charged: watched from the next exchange.
                for scope in charged_elsewhere {
                    book.entries.entry(scope).or_default();
                }
                if book.store_down {
                    tracing::info!(target: "credproxy::usage", store = %store.shown(),
                        "the usage store is reachable again; counts made meanwhile are sent");
                }
                book.store_down = false;
            }
            Err(error) => self.store_failed(store, &error),
        }
    }

    /// The batch to send: the one not yet acknowledged, else the counts made since.
    fn next_batch(&self) -> (String, Option<Vec<(Scope, Series)>>) {
        let mut book = self.book();
        if let Some(batch) = &book.batch {
            return (batch.id.clone(), Some(batch.deltas.clone()));
        }
        let mut deltas = Vec::new();
        for (scope, entry) in book.entries.iter_mut() {
            if !entry.local.is_empty() {
                let taken = entry.local.take();
                entry.in_transit = Some(taken.clone());
                deltas.push((scope.clone(), taken));
            }
        }
        if deltas.is_empty() {
            return (String::new(), None);
        }
        book.batches_sent += 1;
        let id = format!("{}:{}", batch_origin(), book.batches_sent);
        book.batch = Some(Batch {
            id: id.clone(),
            deltas: deltas.clone(),
        });
        (id, Some(deltas))
    }

    fn store_failed(&self, store: &RedisStore, error: &redis::RedisError) {
        self.metrics.usage_store_errors.inc();
        let mut book = self.book();
        if !book.store_down {
            tracing::error!(target: "credproxy::usage", store = %store.shown(), %error,
                "the usage store cannot be reached; counting locally until it is back");
        }
        book.store_down = true;
    }
}

/// The quota subjects whose shared windows admission needs, with which windows.
fn watched(book: &Book, quotas: &[crate::config::usage::Quota]) -> Vec<Watched> {
    book.entries
        .keys()
        .filter_map(|scope| {
            let name = scope.quota_name()?;
            let quota = quotas.iter().find(|q| q.name == name)?;
            Some(Watched {
                scope: scope.clone(),
                minute: quota::needs(quota, Window::Minute),
            })
        })
        .collect()
}

/// What makes this process's batch ids its own: host, process id and start time.
fn batch_origin() -> &'static str {
    static ORIGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("{host}:{}:{started}", std::process::id())
    })
}
