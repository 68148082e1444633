//! Where a login lives between processes and across reboots, and the lock that makes one
//! login safe to share: the running proxy, `credproxy token` run by Claude Code as its
//! `apiKeyHelper`, a second proxy.
//!
//! - macOS: the login Keychain (service `credproxy-login`, account = the credential's name).
//! - Linux with a session bus that offers the Secret Service (GNOME Keyring, KWallet): the
//!   desktop keyring, same service and account.
//! - Otherwise: a file `$XDG_STATE_HOME/credproxy/logins/NAME.json` (else
//!   `~/.local/state/...`), mode 0600 in a 0700 folder. The kernel keyring, which
//!   `keychain = ...` keys use, loses its keys at reboot, so it is no place for a login.
//!
//! Every refresh happens under an exclusive lock on `NAME.lock` in that folder (an advisory
//! `flock`, held by the open file and released when it closes, even if the process dies),
//! and re-reads the store first: a process that waited for the lock finds the token the
//! other one just obtained, so a rotated refresh token is never used twice.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyring_core::{CredentialStore, Entry};
use serde::{Deserialize, Serialize};

/// How long a process waits for another one's refresh before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// How long a keyring call may take (the desktop may be asking the person to unlock it).
const KEYRING_WAIT: Duration = Duration::from_secs(30);
/// The keyring service a login is kept under; the account is the credential's name.
const SERVICE: &str = "credproxy-login";

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
#[derive(Debug)]
pub struct Store {
    name: String,
    /// The folder of the file and the lock, or why there is none (no HOME).
    dir: Result<PathBuf, String>,
    backend: tokio::sync::OnceCell<Backend>,
}

#[derive(Clone)]
enum Backend {
    File,
    /// The macOS Keychain or the Secret Service.
    Keyring {
        store: Arc<CredentialStore>,
        what: &'static str,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::File => f.write_str("File"),
            Backend::Keyring { what, .. } => write!(f, "Keyring({what})"),
        }
    }
}

/// A held lock on one login; released when dropped.
#[derive(Debug)]
pub struct Locked {
    _file: File,
}

impl Store {
    /// The store for credential `name` under credproxy's state folder (see
    /// [`state_dir`](Self::state_dir); without one, every use fails saying why).
    pub fn new(name: &str, state_dir: Result<PathBuf, String>) -> Store {
        Store {
            name: name.to_string(),
            dir: state_dir.map(|d| d.join("logins")),
            backend: tokio::sync::OnceCell::new(),
        }
    }

    /// credproxy's state folder: `$XDG_STATE_HOME/credproxy`, else `~/.local/state/credproxy`.
    pub fn state_dir() -> Result<PathBuf, String> {
        let xdg = std::env::var("XDG_STATE_HOME").ok();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        crate::files::state_dir(xdg.as_deref(), home.as_deref()).ok_or_else(|| {
            "neither XDG_STATE_HOME nor HOME is set, so there is nowhere to keep the login"
                .to_string()
        })
    }

    /// Where the tokens are, for people.
    pub async fn describe(&self) -> String {
        match self.backend().await {
            Backend::Keyring { what, .. } => format!("{what} ({SERVICE}/{})", self.name),
            Backend::File => format!("{} (mode 0600)", self.file().display()),
        }
    }

    async fn backend(&self) -> Backend {
        self.backend.get_or_init(keyring).await.clone()
    }

    fn file(&self) -> PathBuf {
        let name = format!("{}.json", file_stem(&self.name));
        match &self.dir {
            Ok(dir) => dir.join(name),
            Err(_) => PathBuf::from(name),
        }
    }

    /// The folder, created (0700) if need be.
    fn ensure_dir(&self) -> Result<&PathBuf, String> {
        let dir = self.dir.as_ref().map_err(Clone::clone)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// Takes the login's exclusive lock, waiting for another process's refresh to end.
    pub async fn lock(&self) -> Result<Locked, String> {
        let path = self
            .ensure_dir()?
            .join(format!("{}.lock", file_stem(&self.name)));
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

    /// The stored login, if any.
    pub async fn load(&self, _locked: &Locked) -> Result<Option<Saved>, String> {
        let text = match self.backend().await {
            Backend::Keyring { store, what } => {
                let name = self.name.clone();
                keyring_call(what, move || {
                    match Entry::new_in_store(&store, SERVICE, &name)?.get_password() {
                        Ok(text) => Ok(Some(text)),
                        Err(keyring_core::Error::NoEntry) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .await?
            }
            Backend::File => match std::fs::read_to_string(self.file()) {
                Ok(text) => Some(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(format!("cannot read {}: {e}", self.file().display())),
            },
        };
        let Some(text) = text else { return Ok(None) };
        match serde_json::from_str(&text) {
            Ok(saved) => Ok(Some(saved)),
            Err(e) => Err(format!(
                "the login stored in {} is unreadable ({e}); run `credproxy login {}`",
                self.describe().await,
                self.name
            )),
        }
    }

    /// Replaces the stored login.
    pub async fn save(&self, _locked: &Locked, saved: &Saved) -> Result<(), String> {
        let text = serde_json::to_string(saved).expect("a login serialises");
        match self.backend().await {
            Backend::Keyring { store, what } => {
                let name = self.name.clone();
                keyring_call(what, move || {
                    Entry::new_in_store(&store, SERVICE, &name)?.set_password(&text)
                })
                .await
            }
            Backend::File => self.write_file(&text),
        }
    }

    /// Removes the stored login; `Ok(false)` when there was none.
    pub async fn delete(&self, _locked: &Locked) -> Result<bool, String> {
        match self.backend().await {
            Backend::Keyring { store, what } => {
                let name = self.name.clone();
                keyring_call(what, move || {
                    match Entry::new_in_store(&store, SERVICE, &name)?.delete_credential() {
                        Ok(()) => Ok(true),
                        Err(keyring_core::Error::NoEntry) => Ok(false),
                        Err(e) => Err(e),
                    }
                })
                .await
            }
            Backend::File => match std::fs::remove_file(self.file()) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(format!("cannot remove {}: {e}", self.file().display())),
            },
        }
    }

    fn write_file(&self, text: &str) -> Result<(), String> {
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

/// A keyring call off the async workers (it blocks on the Security framework or D-Bus, and
/// may wait for the person to unlock the keyring), and not for ever.
async fn keyring_call<T: Send + 'static>(
    what: &'static str,
    call: impl FnOnce() -> keyring_core::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(KEYRING_WAIT, tokio::task::spawn_blocking(call)).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(format!("{what}: {e}")),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what} did not answer within {}s (waiting to be unlocked?)",
            KEYRING_WAIT.as_secs()
        )),
    }
}

/// The keyring logins go to on this machine, if it has one that survives a reboot.
#[cfg(target_os = "macos")]
async fn keyring() -> Backend {
    match crate::credentials::keychain::platform_store() {
        Ok(store) => Backend::Keyring {
            store,
            what: "the macOS Keychain",
        },
        Err(_) => Backend::File,
    }
}

/// The Secret Service, when a session bus is there to offer it (a desktop session); a
/// headless machine, a container or a test has none and keeps the file.
#[cfg(target_os = "linux")]
async fn keyring() -> Backend {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none_or(|a| a.is_empty()) {
        return Backend::File;
    }
    let connect = tokio::task::spawn_blocking(zbus_secret_service_keyring_store::Store::new);
    match tokio::time::timeout(KEYRING_WAIT, connect).await {
        Ok(Ok(Ok(store))) => Backend::Keyring {
            store,
            what: "the desktop keyring (Secret Service)",
        },
        Ok(Ok(Err(error))) => {
            tracing::debug!(%error, "no Secret Service on the session bus; logins are kept in a file");
            Backend::File
        }
        _ => {
            tracing::warn!("the Secret Service did not answer; logins are kept in a file");
            Backend::File
        }
    }
}

#[cfg(not(any(target_os = "macos", target_os = "linux")))]
async fn keyring() -> Backend {
    Backend::File
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
