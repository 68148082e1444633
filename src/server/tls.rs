//! HTTPS on the proxy listeners: rustls with ALPN `h2` and `http/1.1`, and the certificate
//! re-read when its files change (a renewed certificate, a Kubernetes secret swapped under
//! its symlink), without dropping a connection: each handshake takes the current key.
//!
//! The files are polled (size, modification time, inode of both) rather than watched: it
//! needs no dependency, sees symlink swaps and network filesystems alike, and costs four
//! `stat` calls per interval. A pair that does not load (half-written, key not matching the
//! certificate) is logged and the previous one kept; the next change is tried again.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::files::{read_chain, read_key, stamp};

/// How often the certificate files are checked for a change.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// The certificate handed to every handshake, swapped when the files change.
#[derive(Debug)]
pub struct Certificate {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificate {
    /// Loads the pair once; an error names the file and what is wrong with it.
    pub fn load(files: &TlsFiles) -> Result<Arc<Certificate>, String> {
        let key = certified_key(files)?;
        Ok(Arc::new(Certificate {
            files: files.clone(),
            current: ArcSwap::from_pointee(key),
        }))
    }

    /// The acceptor for a listener: TLS 1.2 and 1.3, ALPN h2 then http/1.1.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Checks the files every [`POLL_EVERY`] while the certificate is in use (a reload that
    /// names other files drops it, and the check stops).
    pub fn watch(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let stamps = |files: &TlsFiles| (stamp(&files.cert), stamp(&files.key));
        let mut seen = stamps(&self.files);
        let mut warned = None;
        drop(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(POLL_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(this) = weak.upgrade() else {
                    return;
                };
                let now = stamps(&this.files);
                if now == seen {
                    continue;
                }
                // `seen` moves only when the pair loads: a failed load (a half-written
                // pair) is tried again on the next tick even if the files look the same.
                match certified_key(&this.files) {
                    Ok(key) => {
                        seen = now;
                        this.current.store(Arc::new(key));
                        tracing::info!(target: "credproxy::server", cert = %this.files.cert.display(),
                            "TLS certificate reloaded; new connections use it");
                    }
                    Err(error) => {
                        // Warned once per version of the files, retried every tick.
                        if warned != Some(now) {
                            warned = Some(now);
                            tracing::warn!(target: "credproxy::server", %error,
                                "the changed TLS certificate does not load; still serving the previous one");
                        }
                    }
                }
            }
        });
    }
}

fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let chain = read_chain(&files.cert, "tls_cert")?;
    let key = read_key(&files.key, "tls_key")?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        format!(
            "tls_key {}: the key cannot sign (RSA, ECDSA P-256/P-384 or Ed25519 expected): {e}",
            files.key.display()
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "tls_key {} does not belong to tls_cert {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(certified)
}
