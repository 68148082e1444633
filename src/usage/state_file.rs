//! The embedded store's memory across restarts: the day's and month's counters of every
//! scope in `STATE_DIR/usage.json`, rewritten whole (to a temporary file, then renamed)
//! every few seconds and at shutdown. One credproxy owns the file at a time (an advisory
//! lock); a second instance on the machine counts in memory and says so.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::counters::Series;

/// The file's name in the state directory.
pub const FILE_NAME: &str = "usage.json";

#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    scopes: HashMap<String, Series>,
}

/// Why the state file cannot be used.
#[derive(Debug)]
pub enum StateError {
    /// Another credproxy holds it: count in memory.
    Taken(PathBuf),
    /// The folder or file cannot be made, read or written.
    Unwritable(String),
    /// The file is not what credproxy wrote: the start stops rather than overwrite it.
    Corrupt(String),
}

/// The open state file, locked for this process.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl StateFile {
    /// Opens (creating the folder and file) and locks `dir/usage.json`; returns what it
    /// holds.
    pub fn open(dir: &Path) -> Result<(StateFile, HashMap<String, Series>), StateError> {
        let path = dir.join(FILE_NAME);
        let broken = StateError::Unwritable;
        std::fs::create_dir_all(dir).map_err(|e| {
            broken(format!(
                "cannot create the usage state folder {}: {e}; set [usage] state_dir to a writable folder",
                dir.display()
            ))
        })?;
        let lock_path = dir.join("usage.lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                broken(format!(
                    "cannot open the usage state lock {}: {e}; set [usage] state_dir to a writable folder",
                    lock_path.display()
                ))
            })?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StateError::Taken(path.clone()))?;
        let scopes = match std::fs::read(&path) {
            Ok(bytes) => {
                let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| {
                    StateError::Corrupt(format!(
                        "the usage state file {} is corrupt ({e}); move it away to start counting from zero, or restore it",
                        path.display()
                    ))
                })?;
                saved.scopes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                return Err(broken(format!(
                    "cannot read the usage state file {}: {e}",
                    path.display()
                )));
            }
        };
        let file = StateFile { path, _lock: lock };
        // A file that cannot be written is found now, not at the first save.
        file.save(scopes.iter().map(|(k, v)| (k.as_str(), v)))
            .map_err(broken)?;
        Ok((file, scopes))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many scopes `dir/usage.json` holds, read without taking it (a running
    /// credproxy may hold it): for `credproxy check`. `Ok(None)`: no file yet.
    pub fn peek(dir: &Path) -> Result<Option<usize>, StateError> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Saved>(&bytes)
                .map(|saved| Some(saved.scopes.len()))
                .map_err(|e| {
                    StateError::Corrupt(format!(
                        "the usage state file {} is corrupt ({e}); move it away to start counting from zero, or restore it",
                        path.display()
                    ))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::Unwritable(format!(
                "cannot read the usage state file {}: {e}",
                path.display()
            ))),
        }
    }

    /// Replaces the file with `scopes`, whole: a crash leaves the old or the new one.
    pub fn save<'a>(
        &self,
        scopes: impl Iterator<Item = (&'a str, &'a Series)>,
    ) -> Result<(), String> {
        let saved = Saved {
            version: 1,
            scopes: scopes.map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        let text = serde_json::to_vec(&saved).expect("counters serialize");
        let temporary = self.path.with_extension("json.tmp");
        let written = File::create(&temporary)
            .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_data()))
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        written.map_err(|e| {
            format!(
                "cannot write the usage state file {}: {e}; set [usage] state_dir to a writable folder",
                self.path.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::counters::Totals;

    #[test]
    fn counters_survive_a_save_and_a_second_open_waits_its_turn() {
        let dir = tempfile::tempdir().unwrap();
        let (file, scopes) = StateFile::open(dir.path()).unwrap();
        assert!(scopes.is_empty());
        let mut series = Series::default();
        series.charge(
            1_796_602_193,
            &Totals {
                requests: 2,
                cost_usd: 0.25,
                ..Totals::default()
            },
        );
        file.save([("caller=a", &series)].into_iter()).unwrap();
        assert!(matches!(
            StateFile::open(dir.path()),
            Err(StateError::Taken(_))
        ));
        drop(file);
        let (_file, scopes) = StateFile::open(dir.path()).unwrap();
        assert_eq!(scopes["caller=a"].day.1.cost_usd, 0.25);
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let Err(StateError::Corrupt(message)) = StateFile::open(dir.path()) else {
            panic!("a corrupt file must be refused");
        };
        assert!(message.contains("usage.json"), "{message}");
        assert!(message.contains("move it away"), "{message}");
    }
}
