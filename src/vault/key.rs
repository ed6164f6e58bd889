//! One master encryption key. A key is 32 random bytes given in base64 (`ENCRYPTION_KEY`); it lives
//! in memory only inside zeroize-on-drop storage and its `Debug` is redacted. Each key has a short
//! public id (a hash of the key, never the key) so that ciphertexts can name the key that made them.
//!
//! The same key also seeds other server secrets by derivation (see [`MasterKey::derive`]), so
//! every replica given the same key agrees on them without extra configuration.

use base64::{Engine, engine::general_purpose::STANDARD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;

/// Why a configured key was refused. Never carries the key itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("is not valid base64")]
    NotBase64,
    #[error(
        "must decode to exactly 32 bytes (got {0}); generate one with `openssl rand -base64 32`"
    )]
    WrongLength(usize),
}

/// A 32-byte AES-256 master key.
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    /// [`MasterKey::id`], computed once: every opened API key looks its master key up by id.
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id={}, <redacted>)", self.id())
    }
}

impl MasterKey {
    /// Parses the base64 form (standard alphabet, padding optional; surrounding space ignored).
    pub fn from_base64(encoded: &str) -> Result<Self, KeyError> {
        let trimmed = encoded.trim().trim_end_matches('=');
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trimmed)
                .map_err(|_| KeyError::NotBase64)?,
        );
        let bytes: [u8; KEY_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(decoded.len()))?;
        Ok(Self::from_bytes(Zeroizing::new(bytes)))
    }

    /// A key given as raw bytes (a data key unwrapped by transit).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let bytes: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self::from_bytes(Zeroizing::new(bytes)))
    }

    /// A fresh random key (development mode).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(bytes.as_mut_slice());
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let id = id_of(&bytes);
        Self { bytes, id }
    }

    /// The base64 form, for the development secrets file only.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.bytes.as_slice()))
    }

    /// A public, stable identifier: the first 8 bytes of SHA-256 over a label and the key, in hex.
    /// It reveals nothing usable about the key.
    pub fn id(&self) -> String {
        self.id.clone()
    }

    /// [`MasterKey::id`] without a copy.
    pub fn id_str(&self) -> &str {
        &self.id
    }

    /// The AES-256-GCM cipher under this key.
    pub(super) fn cipher(&self) -> aes_gcm::Aes256Gcm {
        use aes_gcm::KeyInit;
        aes_gcm::Aes256Gcm::new(aes_gcm::Key::<aes_gcm::Aes256Gcm>::from_slice(
            self.bytes.as_slice(),
        ))
    }

    /// A secret derived for one purpose (HKDF-SHA256, RFC 5869, with `purpose` as the info),
    /// so that one configured key can seed independent secrets.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut derived = [0u8; 32];
        // Expansion fails only past 255 hash lengths of output; 32 bytes is one.
        if hkdf::Hkdf::<Sha256>::new(None, self.bytes.as_slice())
            .expand(purpose.as_bytes(), &mut derived)
            .is_err()
        {
            unreachable!("HKDF-SHA256 expands to 32 bytes");
        }
        derived
    }
}

/// The id of a key: the first 8 bytes of SHA-256 over a label and the key, in hex.
fn id_of(bytes: &[u8; KEY_LEN]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"llm-registry key id v1\0");
    hasher.update(bytes.as_slice());
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_strictly_and_never_print() {
        let key = MasterKey::generate();
        let encoded = key.to_base64();
        let again = MasterKey::from_base64(&encoded).unwrap();
        assert_eq!(key.id(), again.id());
        assert!(!format!("{key:?}").contains(encoded.as_str()));
        assert_eq!(
            MasterKey::from_base64("not base64!").unwrap_err(),
            KeyError::NotBase64
        );
        assert_eq!(
            MasterKey::from_base64(&STANDARD.encode([1u8; 16])).unwrap_err(),
            KeyError::WrongLength(16)
        );
        assert_ne!(key.derive("a"), key.derive("b"));
    }
}
