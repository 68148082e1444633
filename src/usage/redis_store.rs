//! The shared store for replicas: Redis or Valkey (`[usage] store = "redis://..."`). Every
//! instance adds its counts with atomic increments and reads back the totals of the
//! windows its quotas watch, in one pipelined round trip every quarter second — never on
//! a request's path.
//!
//! Keys: `credproxy:usage:d:DAY:SCOPE` and `credproxy:usage:m:MONTH:SCOPE` (hashes of the
//! [`Totals`] fields; kept 40 and 400 days), and `credproxy:usage:s:SECOND:SCOPE` for the
//! sliding minute (kept two minutes).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The shared windows of one scope as the store last said.
#[derive(Debug, Clone, Copy, Default)]
pub struct Remote {
    pub minute: Totals,
    pub day: (u32, Totals),
    pub month: (u32, Totals),
}

/// A connection (re-established as needed) to the shared store.
pub struct RedisStore {
    connection: ConnectionManager,
    /// Adds fields to one hash and sets its expiry: KEYS[1], ARGV = ttl, field, value, ...
    add: Script,
    /// Sums the hashes KEYS (a minute's seconds) field by field.
    sum: Script,
    /// The URL without its password, for messages.
    shown: String,
    /// Whether the scripts are known to be on the server.
    loaded: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown)
            .finish()
    }
}

const ADD: &str = r"
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  if ARGV[i] == 'cost_usd' then
    redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
  else
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
return 1
";

const SUM: &str = r"
local sums = {}
for _, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    sums[fields[i]] = (sums[fields[i]] or 0) + tonumber(fields[i + 1])
  end
end
local flat = {}
for k, v in pairs(sums) do
  table.insert(flat, k)
  table.insert(flat, tostring(v))
end
return flat
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
            add: Script::new(ADD),
            sum: Script::new(SUM),
            shown,
            loaded: AtomicBool::new(false),
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Adds `deltas` (counts made here since the last exchange) and reads the shared
    /// windows of `watched`, in one round trip.
    pub async fn exchange(
        &self,
        deltas: &[(Scope, Series)],
        watched: &[Scope],
        second: u64,
    ) -> Result<Vec<Remote>, redis::RedisError> {
        let mut pipe = redis::pipe();
        for (scope, series) in deltas {
            if !series.day.1.is_zero() {
                self.push_add(
                    &mut pipe,
                    &day_key(series.day.0, scope),
                    DAY_TTL,
                    &series.day.1,
                );
            }
            if !series.month.1.is_zero() {
                let key = month_key(series.month.0, scope);
                self.push_add(&mut pipe, &key, MONTH_TTL, &series.month.1);
            }
            for (at, totals) in series.seconds() {
                self.push_add(&mut pipe, &second_key(*at, scope), SECOND_TTL, totals);
            }
        }
        let day = window::day_of(second);
        let month = window::month_of_day(day);
        for scope in watched {
            pipe.hgetall(day_key(day, scope));
            pipe.hgetall(month_key(month, scope));
            let mut sum = self.sum.prepare_invoke();
            for at in second.saturating_sub(59)..=second {
                sum.key(second_key(at, scope));
            }
            pipe.invoke_script(&sum);
        }
        let mut connection = self.connection.clone();
        // EVALSHA in a pipeline needs the scripts on the server: loaded on the first
        // exchange and after any failure (a restarted server has lost them).
        if !self.loaded.load(Ordering::Relaxed) {
            self.add.load_async(&mut connection).await?;
            self.sum.load_async(&mut connection).await?;
            self.loaded.store(true, Ordering::Relaxed);
        }
        let replies: Vec<redis::Value> = pipe
            .query_async(&mut connection)
            .await
            .inspect_err(|_| self.loaded.store(false, Ordering::Relaxed))?;
        let reads = &replies[replies.len() - watched.len() * 3..];
        Ok(reads
            .chunks(3)
            .map(|three| Remote {
                day: (day, totals(&three[0])),
                month: (month, totals(&three[1])),
                minute: totals(&three[2]),
            })
            .collect())
    }

    fn push_add(&self, pipe: &mut redis::Pipeline, key: &str, ttl: i64, totals: &Totals) {
        let mut add = self.add.prepare_invoke();
        add.key(key).arg(ttl);
        for (field, value) in fields(totals) {
            add.arg(field).arg(value);
        }
        pipe.invoke_script(&add);
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
