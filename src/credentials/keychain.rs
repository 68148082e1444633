//! A key kept in the operating system's keychain (Claude Code itself keeps its keys in the
//! macOS Keychain): the macOS Keychain, or on Linux the kernel's key retention service
//! (keyutils), which works headless, on servers and in CI, with no daemon. Reached
//! through keyring-core and the platform's store crate.
//!
//! The value is read when first needed and again after an upstream rejected it, like a
//! key file; `credproxy secret set NAME` writes it.

use std::sync::{Arc, OnceLock};

use keyring_core::{CredentialStore, Entry, Error};

use super::{Fetched, Lifetime, Material, Secret, SourceError, Token};

/// How long a keychain read may take.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a key lives in the keychain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeychainItem {
    pub service: String,
    pub account: String,
}

impl std::fmt::Display for KeychainItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.account)
    }
}

pub struct Keychain {
    /// The credential this key is for, for "store one with ..." messages.
    credential: String,
    item: KeychainItem,
    store: Arc<CredentialStore>,
}

impl std::fmt::Debug for Keychain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keychain")
            .field("credential", &self.credential)
            .field("item", &self.item)
            .finish_non_exhaustive()
    }
}

impl Keychain {
    pub fn new(credential: String, item: KeychainItem, store: Arc<CredentialStore>) -> Self {
        Keychain {
            credential,
            item,
            store,
        }
    }

    pub fn describe(&self) -> String {
        format!("keychain {}", self.item)
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let store = Arc::clone(&self.store);
        let item = self.item.clone();
        // Keychain calls block (a system call, or the Security framework, which may wait
        // for the user to allow access): off the workers, and not for ever.
        let read = tokio::task::spawn_blocking(move || {
            Entry::new_in_store(&store, &item.service, &item.account)?.get_password()
        });
        let read = tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| {
                SourceError::transient(format!(
                    "keychain {} did not answer within {}s (waiting for someone to allow access?)",
                    self.item,
                    READ_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| SourceError::transient("the keychain read did not finish").caused_by(e))?;
        let value = read.map_err(|e| self.failed(e))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(SourceError::unrecoverable(format!(
                "keychain {} holds an empty key; store one with `credproxy secret set {}`",
                self.item, self.credential
            )));
        }
        Ok(Fetched {
            material: Material::Token(Token::new(Secret::new(value))?),
            lifetime: Lifetime::UntilRejected,
            via: None,
        })
    }

    fn failed(&self, error: Error) -> SourceError {
        match error {
            Error::NoEntry => SourceError::not_configured(format!(
                "keychain {} holds no key; store one with `credproxy secret set {}`",
                self.item, self.credential
            )),
            Error::NoStorageAccess(_) => SourceError::not_configured(format!(
                "keychain {} cannot be read by credproxy (no access to the store); use `env`, `file` or `helper` instead",
                self.item
            ))
            .caused_by(error),
            Error::BadEncoding(_) => SourceError::unrecoverable(format!(
                "keychain {} holds a key that is not UTF-8 text",
                self.item
            )),
            other => SourceError::transient(format!("keychain {}", self.item)).caused_by(other),
        }
    }
}

/// The platform's keychain, opened once. Fails with what is missing and what to use
/// instead on a machine that has none credproxy can use. Call it before starting threads
/// that will read the keychain (see the Linux note below).
pub fn platform_store() -> Result<Arc<CredentialStore>, String> {
    static STORE: OnceLock<Result<Arc<CredentialStore>, String>> = OnceLock::new();
    STORE.get_or_init(open_platform_store).clone()
}

#[cfg(target_os = "linux")]
fn open_platform_store() -> Result<Arc<CredentialStore>, String> {
    use linux_keyutils::{KeyRing, KeyRingIdentifier};
    // A process started outside a login session (a service, CI, some SSH set-ups) has no
    // session keyring of its own; without one, keys land where it cannot read them back.
    // Asking for the session keyring with `create` joins a fresh one when there is none
    // (and changes nothing when there is); keys then persist in the per-user keyring.
    // Joining changes the calling thread's credentials: threads started afterwards inherit
    // them, threads started before do not.
    KeyRing::from_special_id(KeyRingIdentifier::Session, true).map_err(|e| {
        format!(
            "the Linux kernel keyring (keyutils) is not available here ({e}; containers often block it); keep the key in `env`, `file` or a `helper` instead"
        )
    })?;
    let store = linux_keyutils_keyring_store::Store::new().map_err(|e| {
        format!("the Linux kernel keyring (keyutils) cannot be opened ({e}); keep the key in `env`, `file` or a `helper` instead")
    })?;
    Ok(store)
}

#[cfg(target_os = "macos")]
fn open_platform_store() -> Result<Arc<CredentialStore>, String> {
    let store = apple_native_keyring_store::keychain::Store::new().map_err(|e| {
        format!("the macOS Keychain cannot be opened ({e}); keep the key in `env`, `file` or a `helper` instead")
    })?;
    Ok(store)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn open_platform_store() -> Result<Arc<CredentialStore>, String> {
    Err("this build has no keychain for this operating system; keep the key in `env`, `file` or a `helper` instead".to_string())
}

/// Stores `secret` in `item` (`credproxy secret set`).
pub fn store_key(
    store: &Arc<CredentialStore>,
    item: &KeychainItem,
    secret: &Secret,
) -> Result<(), String> {
    Entry::new_in_store(store, &item.service, &item.account)
        .and_then(|entry| entry.set_password(secret.expose()))
        .map_err(|e| format!("cannot store the key in keychain {item}: {e}"))
}

/// Removes `item` (`credproxy secret delete`); `Ok(false)` when it held nothing.
pub fn delete_key(store: &Arc<CredentialStore>, item: &KeychainItem) -> Result<bool, String> {
    match Entry::new_in_store(store, &item.service, &item.account)
        .and_then(|entry| entry.delete_credential())
    {
        Ok(()) => Ok(true),
        Err(Error::NoEntry) => Ok(false),
        Err(e) => Err(format!("cannot delete keychain {item}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mock() -> Arc<CredentialStore> {
        keyring_core::mock::Store::new().unwrap()
    }

    fn item() -> KeychainItem {
        KeychainItem {
            service: "credproxy".into(),
            account: "anthropic".into(),
        }
    }

    #[tokio::test]
    async fn a_stored_key_is_read_and_a_missing_one_says_how_to_store_it() {
        let store = mock();
        let keychain = Keychain::new("anthropic".into(), item(), Arc::clone(&store));
        assert_eq!(keychain.describe(), "keychain credproxy/anthropic");
        let missing = keychain.fetch().await.unwrap_err();
        assert_eq!(missing.kind, super::super::FailureKind::NotConfigured);
        assert!(
            missing
                .to_string()
                .contains("store one with `credproxy secret set anthropic`"),
            "{missing}"
        );

        store_key(&store, &item(), &Secret::new("sk-ant-from-keychain\n")).unwrap();
        let fetched = keychain.fetch().await.unwrap();
        let Material::Token(token) = fetched.material else {
            panic!("not a token")
        };
        assert_eq!(token.secret().expose(), "sk-ant-from-keychain");
        assert_eq!(fetched.lifetime, Lifetime::UntilRejected);

        assert_eq!(delete_key(&store, &item()), Ok(true));
        assert_eq!(delete_key(&store, &item()), Ok(false));
        assert!(keychain.fetch().await.is_err());
    }
}
