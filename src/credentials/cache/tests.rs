//! The cache against a real helper source: a shell script that counts its runs, prints the
//! key file, and fails while a marker file exists.

use std::path::PathBuf;

use std::time::Duration;

use super::*;
use crate::credentials::{Helper, Material, Source, StaticKey};

struct Script {
    dir: tempfile::TempDir,
}

impl Script {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "key-1").unwrap();
        Script { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cache(&self, ttl: Duration, delay: &str) -> Arc<Cached> {
        let d = self.dir.path().display();
        let command = format!(
            "echo run >> {d}/runs; sleep {delay}; [ -e {d}/fail ] && {{ echo broken >&2; exit 1; }}; cat {d}/key"
        );
        Cached::new(
            "test",
            Source::Helper(Helper::new(command, ttl, Duration::from_secs(10))),
        )
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.path("runs")).map_or(0, |t| t.lines().count())
    }

    fn set_key(&self, key: &str) {
        std::fs::write(self.path("key"), key).unwrap();
    }

    fn set_failing(&self, failing: bool) {
        let marker = self.path("fail");
        if failing {
            std::fs::write(marker, "").unwrap();
        } else {
            let _ = std::fs::remove_file(marker);
        }
    }
}

fn key(credential: &Credential) -> &str {
    let Material::Token(token) = &credential.material else {
        panic!("not a token")
    };
    token.secret().expose()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_share_one_fetch() {
    let script = Script::new();
    let cache = script.cache(Duration::from_secs(300), "0.3");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.get().await.map(|c| c.generation) })
        })
        .collect();
    let mut generations = Vec::new();
    for task in tasks {
        generations.push(task.await.unwrap().unwrap());
    }
    generations.dedup();
    assert_eq!(generations.len(), 1, "every waiter got the same value");
    assert_eq!(script.runs(), 1);
}

#[tokio::test]
async fn invalidation_drops_only_the_value_that_failed() {
    let script = Script::new();
    let cache = script.cache(Duration::from_secs(300), "0");
    let first = cache.get().await.unwrap();
    assert_eq!(key(&first), "key-1");

    script.set_key("key-2");
    cache.invalidate(&first);
    let second = cache.get().await.unwrap();
    assert_eq!(key(&second), "key-2");
    assert_eq!(script.runs(), 2);

    // A late rejection of the first value must not discard the second.
    cache.invalidate(&first);
    let still = cache.get().await.unwrap();
    assert_eq!(still.generation, second.generation);
    assert_eq!(script.runs(), 2);
}

#[tokio::test]
async fn a_ttl_value_is_renewed_once_its_ttl_is_over_not_before() {
    let script = Script::new();
    // Margins of a second or more either side: a loaded machine's timers run late.
    let cache = script.cache(Duration::from_millis(4000), "0");
    let first = cache.get().await.unwrap();
    script.set_key("key-2");

    // Three quarters of the TTL is not yet time to run the helper again.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(cache.get().await.unwrap().generation, first.generation);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(script.runs(), 1, "no run before the TTL is over");

    // Past the TTL, within the grace (2 s): the current value, and one renewal in the
    // background.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = cache.get().await.unwrap();
    assert_eq!(during.generation, first.generation);

    wait_until("the background renewal ran", || script.runs() == 2).await;
    wait_until("the renewal stored its value", || {
        cache
            .peek()
            .is_some_and(|c| c.generation != first.generation)
    })
    .await;
    let refreshed = cache.get().await.unwrap();
    assert_eq!(key(&refreshed), "key-2");
    assert_eq!(
        script.runs(),
        2,
        "one background fetch, not one per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_slower_than_the_grace_is_joined_not_run_again() {
    let script = Script::new();
    let cache = script.cache(Duration::from_millis(2000), "2.5");
    let first = cache.get().await.unwrap();
    script.set_key("key-2");
    // Past the TTL: the renewal starts in the background and takes 2.5 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(cache.get().await.unwrap().generation, first.generation);
    // Past the grace (1 s) while it still runs (for 1.4 s more): requests wait for that
    // same run.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        cache.peek().map(|c| c.generation),
        Some(first.generation),
        "the renewal is still running"
    );
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.get().await.unwrap() })
        })
        .collect();
    for waiter in waiters {
        assert_eq!(key(&waiter.await.unwrap()), "key-2");
    }
    assert_eq!(script.runs(), 2, "the waiters joined the running renewal");
}

#[tokio::test]
async fn failed_refresh_keeps_serving_the_last_good_value_until_it_expires() {
    let script = Script::new();
    let cache = script.cache(Duration::from_millis(4000), "0");
    let first = cache.get().await.unwrap();
    script.set_failing(true);

    // Past the TTL, within the grace (2 s).
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert_eq!(cache.get().await.unwrap().generation, first.generation);
    wait_until("the background refresh failed", || script.runs() >= 2).await;
    assert_eq!(cache.get().await.unwrap().generation, first.generation);

    // Once the grace is over there is nothing good left to serve.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let error = cache.get().await.unwrap_err();
    assert!(
        error.to_string().contains("exited with status 1"),
        "{error}"
    );
    assert!(
        !error.to_string().contains("broken"),
        "stderr stays in the log: {error}"
    );
    assert!(error.diagnostic().unwrap().contains("broken"), "{error:?}");

    // And the source recovering recovers the credential.
    script.set_failing(false);
    assert_eq!(key(&cache.get().await.unwrap()), "key-1");
}

#[tokio::test]
async fn a_hanging_source_does_not_delay_another_credential() {
    let script = Script::new();
    let slow = Cached::new(
        "slow",
        Source::Helper(Helper::new(
            "sleep 5; echo slow".into(),
            Duration::from_secs(60),
            Duration::from_secs(10),
        )),
    );
    let fast = Cached::new(
        "fast",
        Source::Static(StaticKey::File {
            path: script.path("key"),
            ttl: None,
        }),
    );
    let stuck = {
        let slow = Arc::clone(&slow);
        tokio::spawn(async move { slow.get().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The fast credential answers while the slow one is still being fetched.
    let fast = fast.get().await.unwrap();
    assert_eq!(key(&fast), "key-1");
    assert!(!stuck.is_finished());
    stuck.abort();
}

/// On a serving worker, a request that goes away while the helper runs leaves the fetch to
/// the background runtime: it finishes and stores its value, and the next request uses
/// it instead of starting a second run beside it.
#[test]
fn a_request_dropped_mid_fetch_on_a_worker_leaves_the_fetch_to_finish() {
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let workers = crate::runtime::Workers::start(1, background.handle().clone()).unwrap();
    let script = Script::new();
    let cache = script.cache(Duration::from_secs(300), "0.5");
    let (done, result) = std::sync::mpsc::channel();
    let cell = Arc::clone(&cache);
    workers.spawn(move || async move {
        let dropped = tokio::time::timeout(Duration::from_millis(100), cell.get()).await;
        assert!(dropped.is_err(), "the first request gives up mid-fetch");
        let value = cell.get().await.map(|c| key(&c).to_string());
        let _ = done.send(value.map_err(|e| e.to_string()));
    });
    let value = result.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(value.as_deref(), Ok("key-1"));
    assert_eq!(script.runs(), 1, "one helper run for both requests");
    drop(workers);
    background.shutdown_background();
}
