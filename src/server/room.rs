//! Making room when a listener is full. A listener at `max_connections` does not leave new
//! clients in the kernel's backlog while its places are held by connections doing
//! nothing: it asks one of them to close, and accepts the next client when it has.
//!
//! Which one: never a connection with a request in flight; else the one that has said
//! least, quiet longest — a connection silent since it opened (TLS: since its handshake),
//! then one in its TLS handshake or first request head, then an idle keep-alive one
//! ([`Stage`]), oldest first in each. So a flood of silent sockets is cycled through
//! while a client that already sent its request keeps its place, and a keep-alive client
//! loses its connection only when nothing less useful is left. A connection in its
//! handshake or first head is left until [`OPENING_GRACE`] after it opened: a flood of
//! sockets that handshake and fall silent would otherwise cycle the places faster than an
//! honest client far away can finish its handshake, and it would be closed mid-way again
//! and again.
//!
//! Cost: one map insert and remove per connection, nothing per request; the pass over the
//! open connections (a few atomic loads each) runs only when the listener is full or out
//! of file descriptors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connection::{Activity, Stage};

/// How long the listener waits for an asked connection to close before asking another
/// (one that never served closes at once; a keep-alive one may take up to its close grace).
const CLOSE_WAIT: Duration = Duration::from_millis(50);
/// How long it waits before looking again when no connection may be closed (all busy, or
/// within their [`OPENING_GRACE`]).
const BUSY_WAIT: Duration = Duration::from_millis(20);
/// How long a connection in its TLS handshake or first request head is left to finish it
/// before it may be closed to make room (a client with a 300 ms round trip needs about
/// 600 ms to handshake and send its request).
pub const OPENING_GRACE: Duration = Duration::from_secs(1);

/// The open connections of one listener.
#[derive(Debug, Default)]
pub struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

/// A connection's place in [`Connections`], given up when dropped.
#[derive(Debug)]
pub struct Registered {
    id: u64,
    connections: Arc<Connections>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // A panic elsewhere while holding the lock leaves a usable map.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the connection as open until the returned place is dropped.
    pub fn register(self: &Arc<Self>, activity: Arc<Activity>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, activity);
        Registered {
            id,
            connections: Arc::clone(self),
        }
    }

    /// Asks the least useful connection without a request in flight to close; false when
    /// there is none (all busy, or all already asked).
    pub fn ask_one_to_close(&self) -> bool {
        let now = Instant::now();
        let open = self.lock();
        let quietest = open
            .values()
            .filter_map(|activity| activity.quiet().map(|rank| (rank, activity)))
            .filter(|((stage, since), _)| {
                *stage != Stage::Opening || now.saturating_duration_since(*since) >= OPENING_GRACE
            })
            .min_by_key(|(rank, _)| *rank);
        match quietest {
            Some((_, activity)) => {
                activity.ask_to_close();
                true
            }
            None => false,
        }
    }

    /// A place under `slots`, making room for it: asks connections to close, one at a time,
    /// until one does (or one closes by itself).
    pub async fn make_room(&self, slots: &Arc<Semaphore>) -> (OwnedSemaphorePermit, u64) {
        let mut asked = 0;
        loop {
            let wait = if self.ask_one_to_close() {
                asked += 1;
                CLOSE_WAIT
            } else {
                BUSY_WAIT
            };
            tokio::select! {
                permit = Arc::clone(slots).acquire_owned() => {
                    return (permit.expect("the semaphore is never closed"), asked);
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quietest_connection_is_asked_first_and_a_busy_one_never() {
        let connections = Arc::new(Connections::default());
        let idle = Activity::new(false);
        let _request = idle.request_started(false);
        drop(_request);
        let busy = Activity::new(false);
        let _busy = busy.request_started(false);
        let silent = Activity::new(false);
        let handshaking = Activity::new(true);
        let _places: Vec<_> = [&idle, &busy, &silent, &handshaking]
            .into_iter()
            .map(|a| connections.register(Arc::clone(a)))
            .collect();
        assert!(connections.ask_one_to_close());
        assert!(silent.take_close_request(), "silent first");
        assert!(connections.ask_one_to_close());
        assert!(idle.take_close_request(), "then a keep-alive one");
        assert!(
            !connections.ask_one_to_close(),
            "never a busy one, nor one opening within its grace"
        );
        assert!(!busy.take_close_request());
        assert!(!handshaking.take_close_request());
    }
}
