//! Files credproxy reads and re-reads while running: PEM certificate chains and keys (the
//! listener's, a route's client certificate, `ca_file`), and the stamp that tells a file
//! changed without reading it (certificate rotation, `watch_config`).

use std::path::Path;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// credproxy's state folder (logins, usage counters): `$XDG_STATE_HOME/credproxy`, else
/// `$HOME/.local/state/credproxy`, as the XDG base directory spec places state.
pub fn state_dir(xdg_state_home: Option<&str>, home: Option<&Path>) -> Option<std::path::PathBuf> {
    match (xdg_state_home.filter(|d| !d.is_empty()), home) {
        (Some(dir), _) => Some(Path::new(dir).join("credproxy")),
        (None, Some(home)) if !home.as_os_str().is_empty() => {
            Some(home.join(".local/state/credproxy"))
        }
        _ => None,
    }
}

/// Size, modification time and inode: editors that replace a file, and Kubernetes' symlink
/// swaps, change at least one.
pub type Stamp = Option<(u64, SystemTime, u64)>;

pub fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?, meta.ino()))
}

/// The certificates of a PEM file; `what` names it in messages (`tls_cert`, `ca_file`).
pub fn read_chain(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {} is not PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{what} {} holds no certificate (a PEM `CERTIFICATE` block)",
            path.display()
        ));
    }
    Ok(chain)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{what} {} holds no private key (PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`): {e}",
            path.display()
        )
    })
}
