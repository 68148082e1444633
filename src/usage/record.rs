//! The usage record — one JSON object per answered (or refused) model request — and the
//! `[usage] log` it is appended to. A request only serializes its record into a shared
//! buffer; a thread of the log's own appends the buffer every 100 ms, so a slow disk never
//! holds a request and no thread is woken per request. The file is reopened when it was
//! renamed away (log rotation by rename, as logrotate's default does), checked before
//! each write.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::Thread;
use std::time::Duration;

use serde::Serialize;

use crate::telemetry::Metrics;

/// One request's usage. Field names are Anthropic's (`input_tokens`, ...); a token count
/// is `null` when the answer carried no usage (`tokens_unknown`).
#[derive(Debug, Serialize)]
pub struct Record {
    /// RFC 3339, UTC, when the request arrived.
    pub time: String,
    pub caller: String,
    pub groups: Vec<String>,
    pub tag: Option<String>,
    pub route: String,
    pub model: Option<String>,
    pub status: u16,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    /// US dollars at the configured price, unrounded; 0 when `unpriced`.
    pub cost_usd: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unpriced: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tokens_unknown: bool,
    pub duration_ms: u64,
    pub retried: bool,
    pub upstream_request_id: Option<String>,
    /// The quota that refused the request (429), if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    /// Who cut a streamed answer short (`client`, `upstream`), if it did not end whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<&'static str>,
}

/// Bytes of records waiting for the writer before new ones are dropped (and counted).
const BACKLOG: usize = 16 << 20;
/// How often the writer appends what is waiting: one write per interval, not a thread
/// woken per record (a wake-up per request cost more than the rest of usage together).
const WRITE_EVERY: Duration = Duration::from_millis(100);

/// The writer of one `[usage] log` file.
#[derive(Debug)]
pub struct UsageLog {
    path: PathBuf,
    shared: Arc<Pending>,
    metrics: Arc<Metrics>,
}

/// Records serialized and not yet written, and the thread that writes them.
#[derive(Debug, Default)]
struct Pending {
    lines: Mutex<Vec<u8>>,
    writer: OnceLock<Thread>,
}

impl UsageLog {
    /// Opens (creates) `path` for appending, and starts its writer; the error names it.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<UsageLog, String> {
        let file = append(path)?;
        let shared = Arc::new(Pending::default());
        let owned = path.to_path_buf();
        let for_writer = Arc::downgrade(&shared);
        let writer = std::thread::Builder::new()
            .name("usage-log".into())
            .spawn(move || write_all(owned, file, for_writer))
            .map_err(|e| format!("cannot start the usage log writer: {e}"))?;
        let _ = shared.writer.set(writer.thread().clone());
        Ok(UsageLog {
            path: path.to_path_buf(),
            shared,
            metrics,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, record: &Record) {
        let mut lines = self.shared.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() > BACKLOG {
            drop(lines);
            self.metrics.usage_records_dropped.inc();
            return;
        }
        serde_json::to_writer(&mut *lines, record).expect("a record serializes");
        lines.push(b'\n');
    }

    /// Has the writer append what is waiting now (at shutdown), and waits for it briefly.
    pub fn flush(&self) {
        if let Some(writer) = self.shared.writer.get() {
            writer.unpark();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !self
            .shared
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn append(path: &Path) -> Result<std::fs::File, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create the folder of [usage] log {}: {e}",
                path.display()
            )
        })?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            format!(
                "cannot open [usage] log {} for appending: {e}",
                path.display()
            )
        })
}

/// Whether `file` is still the file at `path` (not renamed away or deleted).
fn still_there(path: &Path, file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(at_path), Ok(open)) => at_path.ino() == open.ino() && at_path.dev() == open.dev(),
        _ => false,
    }
}

/// The writer thread: every interval (or when asked), appends what is waiting; reopens
/// the file when it was rotated; ends when the log is dropped (a reload that names
/// another file), after a last write.
fn write_all(path: PathBuf, mut file: std::fs::File, pending: Weak<Pending>) {
    let mut warned = false;
    let mut batch = Vec::new();
    loop {
        std::thread::park_timeout(WRITE_EVERY);
        let Some(shared) = pending.upgrade() else {
            return;
        };
        std::mem::swap(
            &mut batch,
            &mut *shared.lines.lock().unwrap_or_else(|e| e.into_inner()),
        );
        drop(shared);
        if batch.is_empty() {
            continue;
        }
        if !still_there(&path, &file) {
            match append(&path) {
                Ok(reopened) => file = reopened,
                Err(e) if !warned => {
                    tracing::error!(target: "credproxy::usage", error = %e, "usage records cannot be written");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        match file.write_all(&batch) {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                tracing::error!(target: "credproxy::usage", path = %path.display(), error = %e,
                    "usage records cannot be written");
                warned = true;
            }
            Err(_) => {}
        }
        batch.clear();
    }
}
