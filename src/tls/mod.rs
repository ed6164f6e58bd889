//! TLS on the gRPC listener: the certificate and key from PEM files (reloaded when they change,
//! see [`reload`]), TLS 1.2 at least (1.3 preferred, as rustls always does), ALPN `h2`, and,
//! when a client CA is configured, mutual TLS: a client certificate signed by that CA is
//! required, and a connection without one is refused during the handshake.
//!
//! [`ServerTls::load`] checks everything before the server starts, so that a bad file stops the
//! start with a message naming the file and the problem ([`certificate`]).

pub mod certificate;
mod handshake_log;
pub mod incoming;
pub mod reload;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::task::JoinHandle;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        crypto::{CryptoProvider, ring},
        server::WebPkiClientVerifier,
        version::{TLS12, TLS13},
    },
};

use self::{
    certificate::{PairFiles, certificates, read_file},
    reload::{ReloadingCertificate, Watch, watch_files},
};

/// What the operator set about the listener's TLS.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca_file: Option<PathBuf>,
    /// How often the certificate files are checked for a change.
    pub reload_interval: Duration,
}

/// The listener's TLS, checked and ready: the acceptor for handshakes and the task that
/// reloads the certificate (aborted on drop).
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    pub summary: certificate::CertificateSummary,
    pub mutual: bool,
    watcher: JoinHandle<()>,
}

impl Drop for ServerTls {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl ServerTls {
    /// Reads and checks the files and starts watching them. The error names the file and what
    /// is wrong with it.
    pub fn load(settings: &TlsSettings) -> anyhow::Result<Self> {
        let provider = Arc::new(ring::default_provider());
        let files =
            PairFiles::read(&settings.cert_file, &settings.key_file).map_err(anyhow::Error::msg)?;
        let pair = files
            .certify(&settings.cert_file, &settings.key_file, &provider)
            .map_err(anyhow::Error::msg)?;
        let resolver = ReloadingCertificate::new(pair.certified);
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&TLS13, &TLS12])?;
        let builder = match &settings.client_ca_file {
            Some(path) => {
                let pem = read_file("TLS_CLIENT_CA_FILE", path).map_err(anyhow::Error::msg)?;
                let mut roots = RootCertStore::empty();
                for ca in
                    certificates("TLS_CLIENT_CA_FILE", path, &pem).map_err(anyhow::Error::msg)?
                {
                    roots.add(ca).map_err(|e| {
                        anyhow::anyhow!(
                            "TLS_CLIENT_CA_FILE {}: a certificate is not a usable CA: {e}",
                            path.display()
                        )
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| anyhow::anyhow!("TLS_CLIENT_CA_FILE {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        let watcher = tokio::spawn(watch_files(
            Watch {
                cert_path: settings.cert_file.clone(),
                key_path: settings.key_file.clone(),
                interval: settings.reload_interval,
                provider: provider as Arc<CryptoProvider>,
            },
            resolver,
            files.digests(),
        ));
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            summary: pair.summary,
            mutual: settings.client_ca_file.is_some(),
            watcher,
        })
    }
}
