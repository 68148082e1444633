//! The cache every request asks for a credential.
//!
//! - **Expiry-aware**: an entry lives until its credential's expiry (minus a skew for
//!   issuer expiries); a key with no expiry lives until an upstream rejects it.
//! - **Single-flight**: concurrent requests for a cold or expired credential share one
//!   fetch (moka's `try_get_with`); an error reaches every waiter and is not cached.
//! - **Refresh-ahead**: once three quarters of a value's life has passed, the first request
//!   to notice starts one background fetch and carries on with the current value, so in
//!   steady state no request waits for a source.
//! - **Serve-last-good**: when that background fetch fails, the current value keeps being
//!   served until it expires, and the refresh is tried again after a pause.
//! - **Conditional invalidation**: an auth failure removes the entry only if it still holds
//!   the value that failed, so a late rejection cannot throw away a newer value.
//! - **Isolation**: each credential is its own key; a slow source delays only requests that
//!   need that credential.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;

use super::{Credential, Fetched, Lifetime, SharedCredential, Slot, SourceError};

/// How much earlier than the issuer's expiry a value stops being used, at most.
const MAX_SKEW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct CredentialCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cache: Cache<usize, Arc<Entry>>,
    slots: Vec<Slot>,
    generation: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    credential: SharedCredential,
    refresh_at: Option<Instant>,
    valid_until: Option<Instant>,
    refreshing: AtomicBool,
}

struct EntryExpiry;

impl Expiry<usize, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(&self, _: &usize, entry: &Arc<Entry>, now: Instant) -> Option<Duration> {
        entry
            .valid_until
            .map(|until| until.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &usize,
        entry: &Arc<Entry>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        entry
            .valid_until
            .map(|until| until.saturating_duration_since(now))
    }
}

impl CredentialCache {
    pub fn new(slots: Vec<Slot>) -> Self {
        let cache = Cache::builder()
            .max_capacity(slots.len().max(1) as u64 * 2)
            .expire_after(EntryExpiry)
            .build();
        CredentialCache {
            inner: Arc::new(Inner {
                cache,
                slots,
                generation: AtomicU64::new(1),
            }),
        }
    }

    pub fn slots(&self) -> &[Slot] {
        &self.inner.slots
    }

    pub fn slot(&self, index: usize) -> &Slot {
        &self.inner.slots[index]
    }

    /// A current value for credential `index`: from the cache when it holds one, else from
    /// one shared fetch. Starts a background refresh when the value is due for one.
    pub async fn get(&self, index: usize) -> Result<SharedCredential, Arc<SourceError>> {
        let entry = match self.inner.cache.get(&index).await {
            Some(entry) => entry,
            None => {
                let inner = Arc::clone(&self.inner);
                self.inner
                    .cache
                    .try_get_with(index, async move { inner.fetch_entry(index).await })
                    .await?
            }
        };
        if entry.refresh_at.is_some_and(|at| Instant::now() >= at)
            && !entry.refreshing.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(Arc::clone(&self.inner).refresh_ahead(index, entry.clone()));
        }
        Ok(Arc::clone(&entry.credential))
    }

    /// Called when an upstream rejected `failed`: drops it unless a newer value already
    /// replaced it. The next [`get`](Self::get) fetches afresh (single-flight).
    pub async fn invalidate(&self, index: usize, failed: &Credential) {
        let generation = failed.generation;
        self.inner
            .cache
            .entry(index)
            .and_compute_with(|current| {
                let op = match current {
                    Some(entry) if entry.value().credential.generation == generation => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }
}

impl Inner {
    async fn fetch_entry(&self, index: usize) -> Result<Arc<Entry>, SourceError> {
        let slot = &self.slots[index];
        let fetched = slot.source.fetch().await?;
        tracing::debug!(credential = %slot.name, source = %slot.source.describe(), "credential fetched");
        Ok(Arc::new(self.entry(fetched)))
    }

    fn entry(&self, fetched: Fetched) -> Entry {
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let (expires_at, usable_for) = match fetched.lifetime {
            Lifetime::UntilRejected => (None, None),
            Lifetime::Ttl(ttl) => (Some(wall_now + ttl), Some(ttl)),
            Lifetime::IssuerExpiry(at) => {
                let lifetime = at.duration_since(wall_now).unwrap_or_default();
                let skew = MAX_SKEW.min(lifetime / 4);
                (Some(at), Some(lifetime - skew))
            }
        };
        Entry {
            credential: Arc::new(Credential {
                material: fetched.material,
                expires_at,
                generation: self.generation.fetch_add(1, Ordering::Relaxed),
            }),
            refresh_at: usable_for.map(|d| now + d * 3 / 4),
            valid_until: usable_for.map(|d| now + d),
            refreshing: AtomicBool::new(false),
        }
    }

    /// One background fetch for an entry in its refresh window. On failure the current
    /// value stays in place (it is still valid) and the refresh may be tried again after
    /// a pause proportionate to the time it has left.
    async fn refresh_ahead(self: Arc<Self>, index: usize, current: Arc<Entry>) {
        let slot = &self.slots[index];
        match slot.source.fetch().await {
            Ok(fetched) => {
                let entry = Arc::new(self.entry(fetched));
                self.cache.insert(index, entry).await;
                tracing::debug!(credential = %slot.name, "credential refreshed ahead of expiry");
            }
            Err(error) => {
                let left = current
                    .valid_until
                    .map(|until| until.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                tracing::warn!(credential = %slot.name, %error, left_ms = left.as_millis() as u64,
                    "background refresh failed; serving the current value while it is valid");
                let pause = (left / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
                tokio::time::sleep(pause).await;
                current.refreshing.store(false, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests;
