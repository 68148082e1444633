//! Where work runs: thread-per-core serving, background work apart.
//!
//! Each serving worker is a thread with its own current-thread tokio runtime. A client
//! connection is handed to one worker when it is accepted and stays there: its requests,
//! the upstream connection each of them uses (every worker has its own upstream pool) and
//! the response body all run on that one thread, so a request never waits for a wake-up
//! to cross threads, and no lock is contended on the hot path. This is what took
//! credproxy's CPU per request and added latency down to nginx's (docs/performance.md).
//!
//! Anything that may be slow or that runs on its own schedule — credential fetches
//! (helpers, cloud SDK calls), refresh-ahead, key-set renewals, the admin listener — runs
//! on the background runtime (the one `main` starts), so it never holds up a serving
//! thread. Code that is not on a worker (tests, benchmarks, `check`) runs everything where
//! it is.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// On a serving worker: its index and the background runtime.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
    static BACKGROUND: std::cell::RefCell<Option<Handle>> = const { std::cell::RefCell::new(None) };
}

/// The index of the serving worker this thread is (0 elsewhere): which of the per-worker
/// resources (upstream pools) to use.
pub fn worker_index() -> usize {
    WORKER.with(|w| w.get().unwrap_or(0))
}

/// The number of serving workers for a `workers` setting: 0 means one per CPU.
pub fn worker_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Starts `future` on the background runtime (from a worker), or where the caller is.
pub fn spawn_background<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match background() {
        Some(handle) => drop(handle.spawn(future)),
        None => drop(tokio::spawn(future)),
    }
}

/// Runs `future` on the background runtime and waits for its output (from a worker), or
/// runs it in place elsewhere. A panic in it is passed on.
pub async fn on_background<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match background() {
        None => future.await,
        Some(handle) => match handle.spawn(future).await {
            Ok(output) => output,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Cancelled: only when the background runtime is shutting down, and so is the
            // process.
            Err(error) => panic!("background task did not finish: {error}"),
        },
    }
}

fn background() -> Option<Handle> {
    BACKGROUND.with(|b| b.borrow().clone())
}

/// The serving workers. Dropping this stops them: each drops the tasks still on it.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("count", &self.handles.len())
            .finish()
    }
}

impl Workers {
    /// Starts `count` workers; `background` is where they send slow work.
    pub fn start(count: usize, background: Handle) -> std::io::Result<Self> {
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(count),
        };
        for index in 0..count.max(1) {
            let (stop, stopped) = oneshot::channel::<()>();
            let (started, handle) = std::sync::mpsc::channel();
            let background = background.clone();
            // The runtime is built (and dropped) on its own thread: a runtime dropped
            // where `start` runs (inside the background runtime) would panic.
            std::thread::Builder::new()
                .name(format!("credproxy-worker-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            let _ = started.send(Err(error));
                            return;
                        }
                    };
                    let _ = started.send(Ok(runtime.handle().clone()));
                    WORKER.with(|w| w.set(Some(index)));
                    BACKGROUND.with(|b| *b.borrow_mut() = Some(background));
                    runtime.block_on(async move {
                        let _ = stopped.await;
                    });
                })?;
            let handle = handle
                .recv()
                .map_err(|_| std::io::Error::other("a serving thread ended at start"))??;
            workers.handles.push(handle);
            workers.stops.push(stop);
        }
        Ok(workers)
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task` on the next worker, round robin. `task` is built on that worker's
    /// thread, so the sockets it opens belong to that worker's runtime.
    pub fn spawn<T, F>(&self, task: T)
    where
        T: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(async move { task().await });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Not joined: the last holder may be a task on a worker itself.
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}
