//! Certificate rotation without a restart: the certificate every new handshake gets comes from
//! [`ReloadingCertificate`], which a task refreshes from the files whenever their contents
//! change (cert-manager and Vault agent rewrite them in place). Connections already open keep
//! the certificate they were made with. A pair that does not check out (a half-written rotation,
//! a key that does not match, an expired certificate) is logged as an error and the certificate
//! in use is kept; the next change is tried again.

use parking_lot::RwLock;
use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio_rustls::rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::certificate::{CertifiedPair, FileDigests, PairFiles};

/// The certificate in use, replaced as a whole when the files change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCertificate {
    pub fn new(first: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(first),
        })
    }

    fn replace(&self, next: Arc<CertifiedKey>) {
        // A poisoned lock only means a panic elsewhere while holding it; the value is whole.
        let mut current = self.current.write();
        *current = next;
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read();
        Some(Arc::clone(&current))
    }
}

/// Where the pair lives and how often to look at it.
pub struct Watch {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub interval: Duration,
    pub provider: Arc<CryptoProvider>,
}

/// Looks at the files every `interval` for as long as the server runs (the caller aborts the
/// task at shutdown). `seen` is what the files held when the certificate in use was read.
pub async fn watch_files(watch: Watch, target: Arc<ReloadingCertificate>, mut seen: FileDigests) {
    let mut ticks = tokio::time::interval(watch.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let files = match PairFiles::read(&watch.cert_path, &watch.key_path) {
            Ok(files) => files,
            Err(problem) => {
                // Between a delete and a write, or a lost mount: logged once per change.
                if seen != FileDigests::unreadable() {
                    tracing::error!(%problem, "TLS certificate not reloaded; the one in use is kept");
                    seen = FileDigests::unreadable();
                }
                continue;
            }
        };
        let digests = files.digests();
        if digests == seen {
            continue;
        }
        seen = digests;
        match files.certify(&watch.cert_path, &watch.key_path, &watch.provider) {
            Ok(CertifiedPair { certified, summary }) => {
                target.replace(certified);
                tracing::info!(certificate = %summary, "TLS certificate reloaded; new connections use it");
            }
            Err(problem) => {
                tracing::error!(%problem, "TLS certificate not reloaded; the one in use is kept");
            }
        }
    }
}
