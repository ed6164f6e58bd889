//! Reading a certificate chain and its private key from PEM files, and everything that makes a
//! pair unusable, each with a message that names the file and the problem: missing or
//! unreadable, no certificate or no key in it, a key that does not belong to the certificate,
//! a certificate that has expired or is not valid yet. Used at start (a bad pair refuses the
//! start) and by every reload (a bad pair keeps the certificate in use).

use std::{fmt, path::Path, sync::Arc};

use sha2::{Digest as _, Sha256};
use tokio_rustls::rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    sign::CertifiedKey,
};
use zeroize::Zeroizing;

/// A certificate chain and its key, checked, ready to serve.
pub struct CertifiedPair {
    pub certified: Arc<CertifiedKey>,
    /// What an operator recognizes the certificate by (never key material).
    pub summary: CertificateSummary,
}

/// The end-entity certificate's subject, serial and validity, for logs.
#[derive(Debug, Clone)]
pub struct CertificateSummary {
    pub subject: String,
    pub serial: String,
    pub not_after: String,
}

impl fmt::Display for CertificateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject \"{}\", serial {}, valid until {}",
            self.subject, self.serial, self.not_after
        )
    }
}

/// What the files held when they were read: digests only, so that a change can be noticed
/// without keeping a copy of the private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigests {
    cert: [u8; 32],
    key: [u8; 32],
}

impl FileDigests {
    /// Stands for "the files could not be read", so that the failure is logged once.
    pub fn unreadable() -> Self {
        Self {
            cert: [0; 32],
            key: [0; 32],
        }
    }
}

/// The raw contents of the pair's files (the key's bytes are zeroized when dropped).
pub struct PairFiles {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
}

impl PairFiles {
    pub fn read(cert_path: &Path, key_path: &Path) -> Result<Self, String> {
        Ok(Self {
            cert: read_file("TLS_CERT_FILE", cert_path)?,
            key: Zeroizing::new(read_file("TLS_KEY_FILE", key_path)?),
        })
    }

    pub fn digests(&self) -> FileDigests {
        FileDigests {
            cert: Sha256::digest(&self.cert).into(),
            key: Sha256::digest(self.key.as_slice()).into(),
        }
    }

    /// Parses and checks the pair: a chain, a key of a supported kind that belongs to the
    /// chain's first certificate, and that certificate valid now.
    pub fn certify(
        &self,
        cert_path: &Path,
        key_path: &Path,
        provider: &CryptoProvider,
    ) -> Result<CertifiedPair, String> {
        let chain = certificates("TLS_CERT_FILE", cert_path, &self.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| {
            format!(
                "TLS_KEY_FILE {}: no PEM private key in it ({})",
                key_path.display(),
                pem_problem(&e)
            )
        })?;
        let summary = check_validity("TLS_CERT_FILE", cert_path, &chain[0])?;
        let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
            format!(
                "TLS_KEY_FILE {} does not go with TLS_CERT_FILE {}: {e}",
                key_path.display(),
                cert_path.display()
            )
        })?;
        Ok(CertifiedPair {
            certified: Arc::new(certified),
            summary,
        })
    }
}

/// Reads the whole file, naming `setting` and the path when it cannot.
pub fn read_file(setting: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        let problem = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => "not readable (permission denied)".to_owned(),
            _ => format!("cannot be read: {e}"),
        };
        format!("{setting} {}: {problem}", path.display())
    })
}

/// The PEM certificates in `pem` (at least one), in file order.
pub fn certificates(
    setting: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{setting} {}: not a PEM certificate file ({})",
                path.display(),
                pem_problem(&e)
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "{setting} {}: holds no PEM certificate",
            path.display()
        ));
    }
    Ok(chain)
}

/// A PEM parse error in words, without echoing the file's content.
fn pem_problem(error: &tokio_rustls::rustls::pki_types::pem::Error) -> &'static str {
    use tokio_rustls::rustls::pki_types::pem::Error;
    match error {
        Error::NoItemsFound => "no matching PEM section",
        Error::MissingSectionEnd { .. } => "a PEM section does not end",
        Error::IllegalSectionStart { .. } => "a PEM section starts badly",
        Error::Base64Decode(_) => "a PEM section is not valid base64",
        _ => "unreadable PEM",
    }
}

/// Refuses a certificate outside its validity period; describes it otherwise.
fn check_validity(
    setting: &str,
    path: &Path,
    certificate: &CertificateDer<'_>,
) -> Result<CertificateSummary, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).map_err(|e| {
        format!(
            "{setting} {}: the first certificate cannot be parsed: {e}",
            path.display()
        )
    })?;
    let validity = parsed.validity();
    let summary = CertificateSummary {
        subject: parsed.subject().to_string(),
        serial: parsed.raw_serial_as_string(),
        not_after: validity.not_after.to_string(),
    };
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(format!(
            "{setting} {}: the certificate ({summary}) has expired",
            path.display()
        ));
    }
    if now < validity.not_before {
        return Err(format!(
            "{setting} {}: the certificate ({summary}) is not valid before {}",
            path.display(),
            validity.not_before
        ));
    }
    Ok(summary)
}
