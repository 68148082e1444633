//! The usage record — one JSON object per answered (or refused) model request — and the
//! `[usage] log` it is appended to. Records are written by a thread of their own, so a
//! slow disk never holds a request; the file is reopened when it was renamed away (log
//! rotation by rename, as logrotate's default does), checked before each batch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

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

/// Records waiting for the writer before new ones are dropped (and counted).
const QUEUE: usize = 64 * 1024;

/// The writer of one `[usage] log` file.
#[derive(Debug)]
pub struct UsageLog {
    path: PathBuf,
    queue: SyncSender<String>,
    metrics: Arc<Metrics>,
}

impl UsageLog {
    /// Opens (creates) `path` for appending, and starts its writer; the error names it.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<UsageLog, String> {
        let file = append(path)?;
        let (queue, records) = std::sync::mpsc::sync_channel(QUEUE);
        let owned = path.to_path_buf();
        std::thread::Builder::new()
            .name("usage-log".into())
            .spawn(move || write_all(owned, file, records))
            .map_err(|e| format!("cannot start the usage log writer: {e}"))?;
        Ok(UsageLog {
            path: path.to_path_buf(),
            queue,
            metrics,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, record: &Record) {
        let mut line = serde_json::to_string(record).expect("a record serializes");
        line.push('\n');
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(line)
        {
            self.metrics.usage_records_dropped.inc();
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

/// The writer thread: batches what is queued, reopens the file when it was rotated.
fn write_all(path: PathBuf, mut file: std::fs::File, records: Receiver<String>) {
    let mut warned = false;
    while let Ok(first) = records.recv() {
        let mut batch = first;
        while let Ok(more) = records.try_recv() {
            batch.push_str(&more);
            if batch.len() > 1 << 20 {
                break;
            }
        }
        if !still_there(&path, &file) {
            match append(&path) {
                Ok(reopened) => file = reopened,
                Err(e) if !warned => {
                    tracing::error!(error = %e, "usage records cannot be written");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        match file.write_all(batch.as_bytes()) {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                tracing::error!(path = %path.display(), error = %e, "usage records cannot be written");
                warned = true;
            }
            Err(_) => {}
        }
    }
}
