//! The shared store for replicas: Redis or Valkey (`[usage] store = "redis://..."`). Every
//! quarter second each instance applies its counts as one batch (a Lua script: atomic,
//! and applied once even when sent twice) and reads back the windows its quotas watch in
//! one pipelined round trip — never on a request's path.
//!
//! Keys: `credproxy:usage:d:DAY:SCOPE` and `credproxy:usage:m:MONTH:SCOPE` (hashes of the
//! [`Totals`] fields; kept 40 and 400 days), `credproxy:usage:s:SECOND:SCOPE` for the
//! sliding minute (kept two minutes), `credproxy:usage:subjects:d:DAY` and `...:m:MONTH`
//! (the quota subjects charged, so every instance watches them), and
//! `credproxy:usage:batch:ID` (a batch applied, kept ten minutes).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::counters::{Series, Totals};
use super::scope::Scope;
use super::window::{self, Window};
use crate::credentials::Secret;

const PREFIX: &str = "credproxy:usage";
const DAY_TTL: i64 = 40 * 86_400;
const MONTH_TTL: i64 = 400 * 86_400;
const SECOND_TTL: i64 = 120;

/// The shared windows of one scope as the store last said, and when.
#[derive(Debug, Clone, Copy, Default)]
pub struct Remote {
    /// The second the store was read.
    pub at: u64,
    /// The sliding minute as of `at`.
    pub minute: Totals,
    pub day: (u32, Totals),
    pub month: (u32, Totals),
}

impl Remote {
    /// What the store said for `window`, if it still applies at `second`: the minute
    /// read less than a minute ago, today's day, this month.
    pub fn in_window(&self, window: Window, second: u64) -> Totals {
        let day = window::day_of(second);
        match window {
            Window::Minute if self.at + 60 > second => self.minute,
            Window::Day if self.day.0 == day => self.day.1,
            Window::Month if self.month.0 == window::month_of_day(day) => self.month.1,
            _ => Totals::default(),
        }
    }
}

/// A quota subject whose shared windows are read back, and whether its quota has a
/// per-minute limit (else its minute is not read).
#[derive(Debug, Clone)]
pub struct Watched {
    pub scope: Scope,
    pub minute: bool,
}

/// A connection (re-established as needed) to the shared store.
pub struct RedisStore {
    connection: ConnectionManager,
    /// [`APPLY`].
    apply: Script,
    /// The URL without its password, for messages.
    shown: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown)
            .finish()
    }
}

/// Applies one batch of counts, once: ARGV[1] is the batch's key (set for ten minutes,
/// so a batch sent again after a lost answer changes nothing), then entries of four or
/// more values: `H key ttl n field value ...` adds to a hash, `S key ttl member` adds to a
/// set; every key gets its expiry.
const APPLY: &str = r"
if not redis.call('SET', ARGV[1], '1', 'NX', 'EX', 600) then
  return 0
end
local i = 2
while i <= #ARGV do
  local kind, key, ttl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if kind == 'H' then
    local n = tonumber(ARGV[i + 3])
    i = i + 4
    for _ = 1, n do
      if ARGV[i] == 'cost_usd' then
        redis.call('HINCRBYFLOAT', key, ARGV[i], ARGV[i + 1])
      else
        redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
      end
      i = i + 2
    end
  else
    redis.call('SADD', key, ARGV[i + 3])
    i = i + 4
  end
  redis.call('EXPIRE', key, ttl)
end
return 1
";

impl RedisStore {
    /// Prepares the connection; it is made on first use and remade after a failure, so
    /// credproxy starts while the store is down. `ca_file`: the CA bundle for `rediss://`.
    pub fn new(url: &Secret, ca_file: Option<&Path>) -> Result<RedisStore, String> {
        let shown = shown(url.expose());
        let client = match ca_file {
            Some(ca) if url.expose().starts_with("rediss://") => {
                let root = std::fs::read(ca)
                    .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
                redis::Client::build_with_tls(
                    url.expose(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )
            }
            _ => redis::Client::open(url.expose()),
        }
        .map_err(|e| format!("[usage] store {shown}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("[usage] store {shown}: {e}"))?;
        Ok(RedisStore {
            connection,
            apply: Script::new(APPLY),
            shown,
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Applies one batch of counts (made here since the last exchange), once: `batch`
    /// names it, and a batch sent again under the same name changes nothing. Quota
    /// subjects are also listed for the day and month, so that every instance watches
    /// the subjects any instance charged.
    pub async fn apply(
        &self,
        batch: &str,
        deltas: &[(Scope, Series)],
    ) -> Result<(), redis::RedisError> {
        let mut apply = self.apply.prepare_invoke();
        apply.arg(format!("{PREFIX}:batch:{batch}"));
        let mut hash = |key: String, ttl: i64, totals: &Totals| {
            let fields = fields(totals);
            apply.arg("H").arg(key).arg(ttl).arg(fields.len());
            for (field, value) in fields {
                apply.arg(field).arg(value);
            }
        };
        for (scope, series) in deltas {
            if !series.day.1.is_zero() {
                hash(day_key(series.day.0, scope), DAY_TTL, &series.day.1);
            }
            if !series.month.1.is_zero() {
                hash(month_key(series.month.0, scope), MONTH_TTL, &series.month.1);
            }
            for (at, totals) in series.seconds() {
                hash(second_key(*at, scope), SECOND_TTL, totals);
            }
        }
        for (scope, series) in deltas {
            if scope.quota_name().is_some() {
                let (day, month) = (series.day.0, series.month.0);
                apply
                    .arg("S")
                    .arg(subjects_key("d", day))
                    .arg(2 * 86_400)
                    .arg(scope.as_str());
                apply
                    .arg("S")
                    .arg(subjects_key("m", month))
                    .arg(MONTH_TTL)
                    .arg(scope.as_str());
            }
        }
        let mut connection = self.connection.clone();
        let _applied: i64 = apply.invoke_async(&mut connection).await?;
        Ok(())
    }

    /// The shared windows of `watched` as of `second`, and the quota subjects charged
    /// today or this month (by any instance), in one round trip.
    pub async fn read(
        &self,
        watched: &[Watched],
        second: u64,
    ) -> Result<(Vec<Remote>, Vec<Scope>), redis::RedisError> {
        let day = window::day_of(second);
        let month = window::month_of_day(day);
        let mut pipe = redis::pipe();
        pipe.smembers(subjects_key("d", day));
        pipe.smembers(subjects_key("m", month));
        for watch in watched {
            pipe.hgetall(day_key(day, &watch.scope));
            pipe.hgetall(month_key(month, &watch.scope));
            if watch.minute {
                for at in second.saturating_sub(59)..=second {
                    pipe.hgetall(second_key(at, &watch.scope));
                }
            }
        }
        let mut connection = self.connection.clone();
        let replies: Vec<redis::Value> = pipe.query_async(&mut connection).await?;
        let mut replies = replies.iter();
        let mut subjects: Vec<Scope> = Vec::new();
        for set in replies.by_ref().take(2) {
            if let redis::Value::Array(members) | redis::Value::Set(members) = set {
                subjects.extend(members.iter().filter_map(text).map(Scope::from));
            }
        }
        let mut remotes = Vec::with_capacity(watched.len());
        for watch in watched {
            let mut next = || replies.next().ok_or_else(short_reply);
            let mut remote = Remote {
                at: second,
                day: (day, totals(next()?)),
                month: (month, totals(next()?)),
                minute: Totals::default(),
            };
            if watch.minute {
                for _ in 0..60 {
                    remote.minute.add(&totals(next()?));
                }
            }
            remotes.push(remote);
        }
        Ok((remotes, subjects))
    }

    /// Every scope's totals in `window` (all instances together), for `/usage`.
    pub async fn report(
        &self,
        window: Window,
        second: u64,
    ) -> Result<Vec<(Scope, Totals)>, redis::RedisError> {
        let day = window::day_of(second);
        let pattern = match window {
            Window::Day => format!("{PREFIX}:d:{day}:*"),
            Window::Month => format!("{PREFIX}:m:{}:*", window::month_of_day(day)),
            Window::Minute => format!("{PREFIX}:s:*"),
        };
        let mut connection = self.connection.clone();
        let mut keys: Vec<String> = Vec::new();
        {
            let mut iter = connection.scan_match::<_, String>(&pattern).await?;
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
        }
        let mut by_scope: HashMap<Scope, Totals> = HashMap::new();
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.hgetall(key);
            }
            let replies: Vec<redis::Value> = pipe.query_async(&mut connection).await?;
            for (key, reply) in chunk.iter().zip(replies) {
                // PREFIX:KIND:NUMBER:SCOPE
                let mut parts = key.splitn(5, ':');
                let (Some(number), Some(scope)) = (parts.nth(3), parts.next()) else {
                    continue;
                };
                let fresh = window != Window::Minute
                    || number
                        .parse::<u64>()
                        .is_ok_and(|at| at + 60 > second && at <= second);
                if fresh {
                    by_scope
                        .entry(Scope::from(scope.to_string()))
                        .or_default()
                        .add(&totals(&reply));
                }
            }
        }
        Ok(by_scope.into_iter().collect())
    }
}

fn day_key(day: u32, scope: &Scope) -> String {
    format!("{PREFIX}:d:{day}:{scope}")
}

fn month_key(month: u32, scope: &Scope) -> String {
    format!("{PREFIX}:m:{month}:{scope}")
}

fn subjects_key(kind: &str, number: u32) -> String {
    format!("{PREFIX}:subjects:{kind}:{number}")
}

fn short_reply() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "the usage store answered fewer replies than asked",
    ))
}

fn second_key(second: u64, scope: &Scope) -> String {
    format!("{PREFIX}:s:{second}:{scope}")
}

/// The non-zero fields of `totals`, as the hash stores them.
fn fields(totals: &Totals) -> Vec<(&'static str, String)> {
    let counts = [
        ("requests", totals.requests),
        ("input_tokens", totals.input_tokens),
        ("output_tokens", totals.output_tokens),
        (
            "cache_creation_input_tokens",
            totals.cache_creation_input_tokens,
        ),
        ("cache_read_input_tokens", totals.cache_read_input_tokens),
        ("unknown_tokens", totals.unknown_tokens),
        ("unpriced", totals.unpriced),
    ];
    let mut fields: Vec<(&'static str, String)> = counts
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(f, n)| (f, n.to_string()))
        .collect();
    if totals.cost_usd != 0.0 {
        fields.push(("cost_usd", format!("{:e}", totals.cost_usd)));
    }
    fields
}

/// A hash (HGETALL's reply, or the sum script's flat list) as totals.
fn totals(reply: &redis::Value) -> Totals {
    let pairs: Vec<(String, String)> = match reply {
        redis::Value::Map(map) => map
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        redis::Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
            .collect(),
        _ => Vec::new(),
    };
    let mut totals = Totals::default();
    for (field, value) in pairs {
        let count = || value.parse::<f64>().map_or(0, |n| n as u64);
        match field.as_str() {
            "requests" => totals.requests = count(),
            "input_tokens" => totals.input_tokens = count(),
            "output_tokens" => totals.output_tokens = count(),
            "cache_creation_input_tokens" => totals.cache_creation_input_tokens = count(),
            "cache_read_input_tokens" => totals.cache_read_input_tokens = count(),
            "unknown_tokens" => totals.unknown_tokens = count(),
            "unpriced" => totals.unpriced = count(),
            "cost_usd" => totals.cost_usd = value.parse().unwrap_or(0.0),
            _ => {}
        }
    }
    totals
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        redis::Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// `redis://:PASSWORD@host` shown as `redis://:**@host`.
fn shown(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://**{}", &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_shown_without_its_password() {
        assert_eq!(
            shown("redis://:s3cret@redis.internal:6379/0"),
            "redis://**@redis.internal:6379/0"
        );
        assert_eq!(
            shown("rediss://user:p@ss@host:6380/1"),
            "rediss://**@host:6380/1"
        );
        assert_eq!(
            shown("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[test]
    fn a_remote_minute_older_than_a_minute_counts_for_nothing() {
        let counted = Totals {
            requests: 5,
            ..Totals::default()
        };
        let second = 86_400 * 20_000 + 100;
        let remote = Remote {
            at: second,
            minute: counted,
            day: (window::day_of(second), counted),
            month: (window::month_of_day(window::day_of(second)), counted),
        };
        assert_eq!(remote.in_window(Window::Minute, second + 59).requests, 5);
        assert_eq!(remote.in_window(Window::Minute, second + 60).requests, 0);
        assert_eq!(remote.in_window(Window::Day, second + 60).requests, 5);
        assert_eq!(remote.in_window(Window::Day, second + 86_400).requests, 0);
    }
}
