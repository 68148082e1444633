//! Where a login lives between processes and across reboots, and the lock that makes one
//! login safe to share: the running proxy, `credproxy token` run by Claude Code as its
//! `apiKeyHelper`, a second proxy.
//!
//! - macOS: the login Keychain (service `credproxy-login`, account = the credential's name).
//! - Linux and elsewhere: a file `$XDG_STATE_HOME/credproxy/logins/NAME.json` (else
//!   `~/.local/state/...`), mode 0600 in a 0700 folder. The kernel keyring, which
//!   `keychain = ...` keys use, loses its keys at reboot, so it is no place for a login.
//!
//! Every refresh happens under an exclusive lock on `NAME.lock` beside the file (an advisory
//! `flock`, held by the open file and released when it closes, even if the process dies),
//! and re-reads the store first: a process that waited for the lock finds the token the
//! other one just obtained, so a rotated refresh token is never used twice.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a process waits for another one's refresh before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// One login as stored. No `Debug`: it holds the tokens.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Saved {
    /// The provider and app it is for: a login for another issuer or client is no login.
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Unix seconds: when the access token expires, when the provider said.
    #[serde(default)]
    pub access_expires_at: Option<u64>,
    /// Unix seconds: when these tokens were obtained.
    #[serde(default)]
    pub obtained_at: u64,
    /// Why the login ended (the provider refused the refresh token): the next fetch says so
    /// without asking the provider again.
    #[serde(default)]
    pub ended: Option<String>,
}

/// Where one credential's login is kept.
#[derive(Debug, Clone)]
pub struct Store {
    name: String,
    dir: PathBuf,
    #[cfg(target_os = "macos")]
    keychain: Option<std::sync::Arc<keyring_core::CredentialStore>>,
}

/// A held lock on one login; released when dropped.
#[derive(Debug)]
pub struct Locked {
    _file: File,
}

impl Store {
    /// The store for credential `name` under credproxy's state folder.
    pub fn new(name: &str, state_dir: PathBuf) -> Store {
        Store {
            name: name.to_string(),
            dir: state_dir.join("logins"),
            #[cfg(target_os = "macos")]
            keychain: crate::credentials::keychain::platform_store().ok(),
        }
    }

    /// credproxy's state folder: `$XDG_STATE_HOME/credproxy`, else `~/.local/state/credproxy`.
    pub fn state_dir() -> Result<PathBuf, String> {
        if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir).join("credproxy"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| PathBuf::from(home).join(".local/state/credproxy"))
            .ok_or_else(|| {
                "neither XDG_STATE_HOME nor HOME is set, so there is nowhere to keep the login"
                    .to_string()
            })
    }

    /// Where the tokens are, for people.
    pub fn describe(&self) -> String {
        #[cfg(target_os = "macos")]
        if self.keychain.is_some() {
            return format!("the macOS Keychain (credproxy-login/{})", self.name);
        }
        format!("{} (mode 0600)", self.file().display())
    }

    fn file(&self) -> PathBuf {
        self.dir.join(format!("{}.json", file_stem(&self.name)))
    }

    fn ensure_dir(&self) -> Result<(), String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))
    }

    /// Takes the login's exclusive lock, waiting for another process's refresh to end.
    pub async fn lock(&self) -> Result<Locked, String> {
        self.ensure_dir()?;
        let path = self.dir.join(format!("{}.lock", file_stem(&self.name)));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let wait = tokio::task::spawn_blocking(move || file.lock().map(|()| file));
        match tokio::time::timeout(LOCK_WAIT, wait).await {
            Ok(Ok(Ok(file))) => Ok(Locked { _file: file }),
            Ok(Ok(Err(e))) => Err(format!("cannot lock {}: {e}", path.display())),
            Ok(Err(e)) => Err(format!("cannot lock {}: {e}", path.display())),
            Err(_) => Err(format!(
                "another credproxy has held {} for over {}s (a refresh stuck?)",
                path.display(),
                LOCK_WAIT.as_secs()
            )),
        }
    }

    /// The stored login, if any (call under the lock when about to refresh).
    pub fn load(&self, _locked: &Locked) -> Result<Option<Saved>, String> {
        self.read()
    }

    /// The stored login without the lock: for reading a current token only.
    pub fn read(&self) -> Result<Option<Saved>, String> {
        let text = match self.read_text()? {
            Some(text) => text,
            None => return Ok(None),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("the login stored in {} is unreadable: {e}", self.describe()))
    }

    /// Replaces the stored login.
    pub fn save(&self, _locked: &Locked, saved: &Saved) -> Result<(), String> {
        let text = serde_json::to_string(saved).expect("a login serialises");
        self.write_text(&text)
    }

    /// Removes the stored login; `Ok(false)` when there was none.
    pub fn delete(&self, _locked: &Locked) -> Result<bool, String> {
        #[cfg(target_os = "macos")]
        if let Some(store) = &self.keychain {
            let item = self.keychain_item();
            return crate::credentials::keychain::delete_key(store, &item);
        }
        match std::fs::remove_file(self.file()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("cannot remove {}: {e}", self.file().display())),
        }
    }

    #[cfg(target_os = "macos")]
    fn keychain_item(&self) -> crate::credentials::KeychainItem {
        crate::credentials::KeychainItem {
            service: "credproxy-login".to_string(),
            account: self.name.clone(),
        }
    }

    fn read_text(&self) -> Result<Option<String>, String> {
        #[cfg(target_os = "macos")]
        if let Some(store) = &self.keychain {
            let item = self.keychain_item();
            return match keyring_core::Entry::new_in_store(store, &item.service, &item.account)
                .and_then(|entry| entry.get_password())
            {
                Ok(text) => Ok(Some(text)),
                Err(keyring_core::Error::NoEntry) => Ok(None),
                Err(e) => Err(format!("cannot read keychain {item}: {e}")),
            };
        }
        match std::fs::read_to_string(self.file()) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", self.file().display())),
        }
    }

    fn write_text(&self, text: &str) -> Result<(), String> {
        #[cfg(target_os = "macos")]
        if let Some(store) = &self.keychain {
            let item = self.keychain_item();
            return crate::credentials::keychain::store_key(
                store,
                &item,
                &crate::credentials::Secret::new(text),
            );
        }
        self.ensure_dir()?;
        let path = self.file();
        // Written whole to a fresh 0600 file, then renamed over the old one: a reader never
        // sees half a login, and the tokens never sit in a file others can read.
        let temporary = path.with_extension(format!("json.{}", std::process::id()));
        let written = (|| {
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            format!("cannot write {}: {e}", path.display())
        })
    }
}

/// A file name for a credential name: itself when it is plain, else its hex.
fn file_stem(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        hex::encode(name)
    }
}
