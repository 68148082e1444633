//! Usage, spend and quotas: who spent what, and who may spend how much more.
//!
//! - [`meter`]: token counts read from an answer while it streams to the client (every
//!   provider's JSON, SSE and event-stream shape, compressed or not), in bounded memory and
//!   without touching a byte the client gets; [`model`]: the model a request asks for,
//!   from its body or its path.
//! - [`ledger`] keeps the counters per scope ([`scope`]: caller, group, tag, route,
//!   model, quota subject) and window ([`window`]: sliding minute, UTC day and month),
//!   admits requests against `[[quotas]]` ([`quota`]) from what it holds, and charges
//!   answers when they end; records go to `[usage] log` ([`record`]); [`report`] is
//!   `GET /usage`.
//! - The counters survive restarts in a state file ([`state_file`], the embedded
//!   default), or are shared by replicas through Redis/Valkey ([`redis_store`]).
//!
//! docs/usage.md explains it for an admin.

pub mod counters;
pub mod ledger;
pub mod meter;
pub mod model;
pub mod quota;
pub mod record;
pub mod redis_store;
pub mod report;
pub mod scope;
pub mod state_file;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Resolved;
use crate::config::usage::Store;
use crate::telemetry::Metrics;

pub use ledger::{Backing, Ledger, Outcome, Refusal, Rules, Ticket};
pub use scope::Facts;

/// How often the embedded store writes its state file.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// The ledger for the process, with the store `[usage]` names; its background task
/// started. The error names the file or store that cannot be used.
pub fn open(resolved: &Resolved, metrics: &Arc<Metrics>) -> Result<Arc<Ledger>, String> {
    let usage = &resolved.config.usage;
    let (backing, loaded) = match &usage.store {
        Store::Redis(url) => {
            let store = redis_store::RedisStore::new(url, resolved.ca_file.as_deref())?;
            tracing::info!(target: "credproxy::usage", store = %store.shown(),
                "usage counters are shared through Redis");
            (Backing::Redis(store), HashMap::new())
        }
        Store::Embedded => embedded(resolved)?,
    };
    let ledger = Arc::new(Ledger::new(backing, loaded, Arc::clone(metrics)));
    ledger.configure(Arc::new(rules(resolved, None, metrics)?));
    tokio::spawn(Arc::clone(&ledger).run(SAVE_EVERY));
    Ok(ledger)
}

fn embedded(resolved: &Resolved) -> Result<(Backing, HashMap<String, counters::Series>), String> {
    let explicit = resolved.config.usage.state_dir.is_some();
    let Some(dir) = &resolved.usage_state_dir else {
        tracing::warn!(target: "credproxy::usage",
            "usage counters are kept in memory only: neither XDG_STATE_HOME nor HOME is set; set [usage] state_dir to keep them across restarts");
        return Ok((Backing::Memory, HashMap::new()));
    };
    match state_file::StateFile::open(dir) {
        Ok((file, loaded)) => {
            tracing::debug!(target: "credproxy::usage", file = %file.path().display(),
                "usage counters are kept in the state file");
            Ok((Backing::Embedded(file), loaded))
        }
        Err(state_file::StateError::Taken(path)) => {
            tracing::warn!(target: "credproxy::usage", file = %path.display(),
                "usage counters are kept in memory only: another credproxy on this machine holds the state file; give this one its own [usage] state_dir");
            Ok((Backing::Memory, HashMap::new()))
        }
        Err(state_file::StateError::Unwritable(message)) if !explicit => {
            tracing::warn!(target: "credproxy::usage", problem = %message,
                "usage counters are kept in memory only");
            Ok((Backing::Memory, HashMap::new()))
        }
        Err(
            state_file::StateError::Unwritable(message) | state_file::StateError::Corrupt(message),
        ) => Err(message),
    }
}

/// What `credproxy check` says of `[usage]`: where the counters live and whether that
/// works (the shared store answers; the state file reads), and where records go.
pub async fn check(resolved: &Resolved) -> Result<String, String> {
    let usage = &resolved.config.usage;
    let quotas = resolved.config.quotas.len();
    let store = match &usage.store {
        Store::Redis(url) => {
            let store = redis_store::RedisStore::new(url, resolved.ca_file.as_deref())?;
            let second = window::epoch_seconds(std::time::SystemTime::now());
            let answered =
                tokio::time::timeout(Duration::from_secs(5), store.read(&[], second)).await;
            match answered {
                Ok(Ok(_)) => format!("store {} answers", store.shown()),
                Ok(Err(e)) => return Err(format!("store {} does not answer: {e}", store.shown())),
                Err(_) => return Err(format!("store {} does not answer", store.shown())),
            }
        }
        Store::Embedded => match &resolved.usage_state_dir {
            None => "counters in memory only (no state_dir, no HOME)".to_string(),
            Some(dir) => match state_file::StateFile::peek(dir) {
                Ok(Some(scopes)) => format!(
                    "state file {} ({scopes} counters)",
                    dir.join(state_file::FILE_NAME).display()
                ),
                Ok(None) => format!(
                    "state file {} (not written yet)",
                    dir.join(state_file::FILE_NAME).display()
                ),
                Err(state_file::StateError::Corrupt(e) | state_file::StateError::Unwritable(e)) => {
                    return Err(e);
                }
                Err(state_file::StateError::Taken(path)) => {
                    format!("state file {}", path.display())
                }
            },
        },
    };
    let log = resolved
        .usage_log
        .as_ref()
        .map_or("no log".to_string(), |p| format!("log {}", p.display()));
    Ok(format!("{store}; {log}; {quotas} quota(s)"))
}

/// The rules of `resolved`; the usage log is kept open from `previous` when its path is
/// the same.
pub fn rules(
    resolved: &Resolved,
    previous: Option<&Rules>,
    metrics: &Arc<Metrics>,
) -> Result<Rules, String> {
    let log = match &resolved.usage_log {
        None => None,
        Some(path) => match previous.and_then(|p| p.log.as_ref()) {
            Some(log) if log.path() == path => Some(Arc::clone(log)),
            _ => Some(Arc::new(record::UsageLog::open(path, Arc::clone(metrics))?)),
        },
    };
    Ok(Rules {
        quotas: resolved.config.quotas.clone(),
        prices: resolved.config.prices.clone(),
        on_store_error: Some(resolved.config.usage.on_store_error),
        log,
    })
}
