//! The cache every request asks for a credential: one [`Cached`] cell per credential,
//! holding its source and its current value.
//!
//! - **Expiry-aware**: a value is used until its credential's expiry (minus a skew for
//!   issuer expiries); a key with no expiry lives until an upstream rejects it.
//! - **Single-flight**: concurrent requests for a cold or expired credential share one
//!   fetch; an error reaches every request that waited for that fetch and is not kept.
//! - **Refresh-ahead**: once three quarters of an issuer's token life has passed, the first
//!   request to notice starts one background fetch and carries on with the current value,
//!   so in steady state no request waits for a source.
//! - **A TTL is a TTL**: a value with our own time-to-live (a helper's output, a re-read
//!   file) is renewed when the TTL is over, never before, so a helper that may prompt the
//!   user runs at most once per `ttl` (plus once per rejection). The first request after
//!   the TTL starts the renewal in the background and keeps the current value for a short
//!   grace; after the grace, requests wait for that same run.
//! - **Serve-last-good**: when that background fetch fails, the current value keeps being
//!   served until it expires, and the refresh is tried again after a pause.
//! - **Conditional invalidation**: an auth failure drops the value only if it is still the
//!   one that failed, so a late rejection cannot throw away a newer value.
//! - **Isolation**: each credential is its own cell; a slow source delays only requests
//!   that need that credential.
//!
//! Reading a current value is a lock-free load; only fetches take the cell's lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;

use super::{Credential, Fetched, Lifetime, SharedCredential, Source, SourceError};

/// How much earlier than the issuer's expiry a value stops being used, at most.
const MAX_SKEW: Duration = Duration::from_secs(60);
/// How long past its TTL a value is still served while its renewal runs, at most.
const MAX_TTL_GRACE: Duration = Duration::from_secs(30);

/// Unique across every cell, so a generation names one fetched value.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// One credential: its name, its source, and its current value.
#[derive(Debug)]
pub struct Cached {
    name: String,
    source: Source,
    current: ArcSwapOption<Entry>,
    /// Held by whoever is fetching (a cold request or a background refresh).
    fetching: tokio::sync::Mutex<()>,
    /// Fetches finished so far; a request that waited for the lock compares it to learn
    /// whether the fetch it waited for has already answered.
    fetches: AtomicU64,
    /// The error of the last fetch when it failed, with that fetch's number.
    last_failure: Mutex<Option<(u64, Arc<SourceError>)>>,
    /// What `/status` and the metrics report; written on fetches and rejections only.
    stats: Mutex<Stats>,
}

/// A credential's history as operators see it. Never holds a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub fetched_ok: u64,
    pub fetch_failed: u64,
    /// When the current value was fetched.
    pub fetched_at: Option<SystemTime>,
    /// The last failed fetch: when, and its message.
    pub last_error: Option<(SystemTime, String)>,
    /// Values dropped because an upstream rejected them.
    pub rejected: u64,
}

#[derive(Debug)]
struct Entry {
    credential: SharedCredential,
    refresh_at: Option<Instant>,
    valid_until: Option<Instant>,
    refreshing: AtomicBool,
}

impl Entry {
    fn is_valid(&self, now: Instant) -> bool {
        self.valid_until.is_none_or(|until| now < until)
    }
}

impl Cached {
    pub fn new(name: impl Into<String>, source: Source) -> Arc<Self> {
        Arc::new(Cached {
            name: name.into(),
            source,
            current: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            stats: Mutex::new(Stats::default()),
        })
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().expect("not poisoned").clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// A current value: the cached one when it is still good, else the result of one
    /// shared fetch. Starts a background refresh when the value is due for one.
    pub async fn get(self: &Arc<Self>) -> Result<SharedCredential, Arc<SourceError>> {
        let now = Instant::now();
        if let Some(entry) = self.current.load().as_ref()
            && entry.is_valid(now)
        {
            if entry.refresh_at.is_some_and(|at| now >= at)
                && !entry.refreshing.swap(true, Ordering::AcqRel)
            {
                crate::runtime::spawn_background(Arc::clone(self).refresh_ahead(Arc::clone(entry)));
            }
            return Ok(Arc::clone(&entry.credential));
        }
        // Boxed: a source's fetch (cloud SDK calls) is a future of tens of KiB, which every
        // request's future would otherwise carry, and copy, for this rare path.
        Box::pin(self.fetch_now()).await
    }

    /// Called when an upstream rejected `failed`: drops it unless a newer value already
    /// replaced it. The next [`get`](Self::get) fetches afresh.
    pub fn invalidate(&self, failed: &Credential) {
        self.stats.lock().expect("not poisoned").rejected += 1;
        self.current.rcu(|current| match current {
            Some(entry) if entry.credential.generation == failed.generation => None,
            other => other.clone(),
        });
    }

    /// The value the cell holds, valid or not, without fetching.
    pub fn peek(&self) -> Option<SharedCredential> {
        self.current
            .load()
            .as_ref()
            .map(|entry| Arc::clone(&entry.credential))
    }

    /// Waits for the one fetch in progress, or runs one. Sources run helpers and cloud SDK
    /// calls, so all of it runs on the background runtime, never on a serving worker; and
    /// as one task, so a request that goes away mid-fetch leaves the fetch to finish and
    /// store its value under the lock (no second fetch starts beside it).
    async fn fetch_now(self: &Arc<Self>) -> Result<SharedCredential, Arc<SourceError>> {
        let seen = self.fetches.load(Ordering::Acquire);
        let cell = Arc::clone(self);
        crate::runtime::on_background(async move { cell.fetch_locked(seen).await }).await
    }

    /// `seen`: the fetches finished when the request first looked.
    async fn fetch_locked(&self, seen: u64) -> Result<SharedCredential, Arc<SourceError>> {
        let _fetching = self.fetching.lock().await;
        // Another fetch may have finished while this request waited: its answer is ours.
        if let Some(entry) = self.current.load().as_ref()
            && entry.is_valid(Instant::now())
        {
            return Ok(Arc::clone(&entry.credential));
        }
        if self.fetches.load(Ordering::Acquire) != seen {
            if let Some((fetch, error)) = self.last_failure.lock().expect("not poisoned").as_ref()
                && *fetch > seen
            {
                return Err(Arc::clone(error));
            }
            // The fetch this request waited for answered with a value that is already past
            // its use-by time (an issuer handed out a nearly expired token): use it rather
            // than run the source again for every waiter; a rejection will renew it.
            if let Some(entry) = self.current.load().as_ref() {
                return Ok(Arc::clone(&entry.credential));
            }
        }
        let entry = self.fetch_entry().await?;
        let credential = Arc::clone(&entry.credential);
        self.current.store(Some(entry));
        Ok(credential)
    }

    /// Runs the source once; records the outcome for requests that waited on it.
    async fn fetch_entry(&self) -> Result<Arc<Entry>, Arc<SourceError>> {
        let result = self.source.fetch().await;
        let fetch = self.fetches.load(Ordering::Acquire) + 1;
        let outcome = match result {
            Ok(fetched) => {
                tracing::debug!(credential = %self.name, source = %self.source.describe(), "credential fetched");
                let mut stats = self.stats.lock().expect("not poisoned");
                stats.fetched_ok += 1;
                stats.fetched_at = Some(SystemTime::now());
                Ok(Arc::new(entry(fetched)))
            }
            Err(mut error) => {
                if let Some(known) = self.peek() {
                    error.scrub(&known.material.secrets());
                }
                if let Some(diagnostic) = error.diagnostic() {
                    tracing::warn!(credential = %self.name, %error, diagnostic, "credential source failed");
                }
                {
                    let mut stats = self.stats.lock().expect("not poisoned");
                    stats.fetch_failed += 1;
                    stats.last_error = Some((SystemTime::now(), error.to_string()));
                }
                let error = Arc::new(error);
                *self.last_failure.lock().expect("not poisoned") =
                    Some((fetch, Arc::clone(&error)));
                Err(error)
            }
        };
        self.fetches.store(fetch, Ordering::Release);
        outcome
    }

    /// One background fetch for an entry in its refresh window. On failure the current
    /// value stays in place (it is still valid) and the refresh may be tried again after
    /// a pause proportionate to the time it has left.
    async fn refresh_ahead(self: Arc<Self>, due: Arc<Entry>) {
        let _fetching = self.fetching.lock().await;
        let still_due = self
            .current
            .load()
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &due));
        if !still_due {
            return; // replaced (or dropped) while this task waited for the lock
        }
        match self.fetch_entry().await {
            Ok(fresh) => {
                self.current.store(Some(fresh));
                tracing::debug!(credential = %self.name, "credential refreshed ahead of expiry");
            }
            Err(error) => {
                let left = due
                    .valid_until
                    .map(|until| until.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                tracing::warn!(credential = %self.name, %error, left_ms = left.as_millis() as u64,
                    "background refresh failed; serving the current value while it is valid");
                drop(_fetching);
                let pause = (left / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
                tokio::time::sleep(pause).await;
                due.refreshing.store(false, Ordering::Release);
            }
        }
    }
}

fn entry(fetched: Fetched) -> Entry {
    let now = Instant::now();
    let wall_now = SystemTime::now();
    // (when the value expires, when to start renewing it, until when it may be served)
    let (expires_at, refresh_after, usable_for) = match fetched.lifetime {
        Lifetime::UntilRejected => (None, None, None),
        Lifetime::Ttl(ttl) => {
            let grace = MAX_TTL_GRACE.min(ttl / 2);
            (Some(wall_now + ttl), Some(ttl), Some(ttl + grace))
        }
        Lifetime::IssuerExpiry(at) => {
            let lifetime = at.duration_since(wall_now).unwrap_or_default();
            let skew = MAX_SKEW.min(lifetime / 4);
            let usable = lifetime - skew;
            (Some(at), Some(usable * 3 / 4), Some(usable))
        }
        Lifetime::Until {
            expires_at,
            stop_at,
        } => {
            let usable = stop_at.duration_since(wall_now).unwrap_or_default();
            (Some(expires_at), Some(usable * 3 / 4), Some(usable))
        }
    };
    Entry {
        credential: Arc::new(Credential {
            material: fetched.material,
            expires_at,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        }),
        refresh_at: refresh_after.map(|d| now + d),
        valid_until: usable_for.map(|d| now + d),
        refreshing: AtomicBool::new(false),
    }
}

#[cfg(test)]
mod tests;
