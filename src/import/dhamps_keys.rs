//! Opening provider keys the way dhamps-vdb sealed them (its `internal/crypto/encryption.go`):
//! AES-256-GCM whose key is the SHA-256 of the `ENCRYPTION_KEY` string, the 12-byte nonce first
//! and the 16-byte tag last, no associated data. Older dhamps-vdb keys, which some rows may still
//! be sealed under, are tried after the current one.

use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce, aead::Aead as _};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::vault::{ApiKey, NONCE_LEN};

/// dhamps-vdb's encryption keys: the current one first.
pub struct DhampsKeys {
    ciphers: Vec<Aes256Gcm>,
}

impl std::fmt::Debug for DhampsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DhampsKeys({} key(s), <redacted>)", self.ciphers.len())
    }
}

/// Why a sealed key did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOpened {
    /// Shorter than a nonce and a tag: not something dhamps-vdb wrote.
    Malformed,
    /// None of the given keys opens it (a wrong or missing `DHAMPS_ENCRYPTION_KEY`).
    NoKeyOpens,
    /// It opens, but the plaintext is not UTF-8 text.
    NotText,
}

impl NotOpened {
    pub fn explain(self) -> &'static str {
        match self {
            Self::Malformed => "its stored key is not in dhamps-vdb's format",
            Self::NoKeyOpens => "its stored key opens under none of the given dhamps-vdb keys",
            Self::NotText => "its stored key is not text",
        }
    }
}

const TAG_LEN: usize = 16;

impl DhampsKeys {
    /// From the key strings as dhamps-vdb's `ENCRYPTION_KEY` held them; the current one first.
    pub fn new(keys: &[Zeroizing<String>]) -> Self {
        let ciphers = keys
            .iter()
            .map(|key| {
                let digest = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(key.as_bytes())));
                Aes256Gcm::new(digest.as_slice().into())
            })
            .collect();
        Self { ciphers }
    }

    pub fn is_empty(&self) -> bool {
        self.ciphers.is_empty()
    }

    /// The plaintext of a key sealed by dhamps-vdb.
    pub fn open(&self, sealed: &[u8]) -> Result<ApiKey, NotOpened> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(NotOpened::Malformed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::from_slice(nonce);
        let plaintext = self
            .ciphers
            .iter()
            .find_map(|cipher| cipher.decrypt(nonce, ciphertext).ok())
            .map(Zeroizing::new)
            .ok_or(NotOpened::NoKeyOpens)?;
        let text = std::str::from_utf8(&plaintext).map_err(|_| NotOpened::NotText)?;
        Ok(ApiKey::new(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use rand::RngCore as _;

    use super::*;

    /// What dhamps-vdb's `Encrypt` does: `gcm.Seal(nonce, nonce, plaintext, nil)`.
    fn seal_like_dhamps(key: &str, plaintext: &str) -> Vec<u8> {
        let digest = Sha256::digest(key.as_bytes());
        let cipher = Aes256Gcm::new(digest.as_slice().into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut sealed = nonce.to_vec();
        sealed.extend(
            cipher
                .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
                .unwrap(),
        );
        sealed
    }

    #[test]
    fn opens_under_the_current_or_an_older_key_and_nothing_else() {
        let keys = DhampsKeys::new(&[
            Zeroizing::new("current secret".to_owned()),
            Zeroizing::new("older secret".to_owned()),
        ]);
        let current = seal_like_dhamps("current secret", "sk-current-ü");
        let older = seal_like_dhamps("older secret", "sk-older");
        let foreign = seal_like_dhamps("someone else's", "sk-foreign");
        assert_eq!(keys.open(&current).unwrap().expose(), "sk-current-ü");
        assert_eq!(keys.open(&older).unwrap().expose(), "sk-older");
        assert_eq!(keys.open(&foreign).unwrap_err(), NotOpened::NoKeyOpens);
        assert_eq!(keys.open(&current[..20]).unwrap_err(), NotOpened::Malformed);
    }
}
