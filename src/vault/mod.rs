//! The key vault: provider API keys encrypted at rest with AES-256-GCM.
//!
//! - A [`KeyRing`] holds one primary key (encrypts) and any number of previous keys (still
//!   decrypt), so keys can rotate while the service runs.
//! - Every encryption draws a fresh random 96-bit nonce.
//! - The associated data binds a ciphertext to its instance's immutable uid: a ciphertext copied
//!   to another row does not decrypt.
//! - Each [`Sealed`] value names the key that made it (a public key id, never the key).
//! - Decryption fails loudly (an error naming the cause), never with an empty or wrong value.
//! - Plaintext keys exist only as [`ApiKey`], zeroized on drop and redacted in `Debug`/`Display`.

mod key;
pub mod transit;
pub mod wrapper;

use aes_gcm::{Nonce, aead::Aead, aead::Payload};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::metrics::{KeyIdLabel, KeyRoleLabels, OperationLabel, metrics};

pub use key::{KEY_LEN, KeyError, MasterKey};

/// Bytes of the random nonce at the front of every ciphertext.
pub const NONCE_LEN: usize = 12;
/// Prefix of the associated data, so that ciphertexts of this purpose match no other.
const AAD_PREFIX: &[u8] = b"llm-registry api key v1\0";

/// A provider API key in plaintext: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Zeroizing<String>);

impl ApiKey {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The key itself, for the one place that needs it (a provider call, or a test's comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A key as stored: the id of the key that sealed it, and nonce || ciphertext || tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealed(key_id={}, {} bytes)",
            self.key_id,
            self.ciphertext.len()
        )
    }
}

/// Why a stored key could not be opened. Messages name key ids, never key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("the key ring has no key with id {0}; give it in ENCRYPTION_KEYS_PREVIOUS")]
    UnknownKey(String),
    #[error("the ciphertext is malformed (too short)")]
    Malformed,
    #[error("the ciphertext does not authenticate (tampered, or stored for another instance)")]
    Authentication,
    #[error("the decrypted key is not UTF-8")]
    NotUtf8,
    #[error("two keys of the ring are the same key ({0})")]
    DuplicateKey(String),
}

/// The primary key and the previous keys that still decrypt.
#[derive(Clone, Debug)]
pub struct KeyRing {
    primary: MasterKey,
    previous: Vec<MasterKey>,
}

impl KeyRing {
    pub fn new(primary: MasterKey, previous: Vec<MasterKey>) -> Result<Self, VaultError> {
        let mut seen = vec![primary.id()];
        for key in &previous {
            let id = key.id();
            if seen.contains(&id) {
                return Err(VaultError::DuplicateKey(id));
            }
            seen.push(id);
        }
        Ok(Self { primary, previous })
    }

    pub fn primary(&self) -> &MasterKey {
        &self.primary
    }

    pub fn primary_id(&self) -> String {
        self.primary.id()
    }

    /// Every key in the ring, primary first.
    pub fn keys(&self) -> impl Iterator<Item = &MasterKey> {
        std::iter::once(&self.primary).chain(&self.previous)
    }

    /// The ids of every key in the ring, primary first.
    pub fn key_ids(&self) -> Vec<String> {
        std::iter::once(&self.primary)
            .chain(&self.previous)
            .map(MasterKey::id)
            .collect()
    }

    /// This ring with `key` as primary: the primary before it becomes previous (and `key`
    /// leaves the previous keys if it was one).
    pub fn promoted(&self, key: MasterKey) -> Self {
        let previous = self
            .keys()
            .filter(|known| known.id_str() != key.id_str())
            .cloned()
            .collect();
        Self {
            primary: key,
            previous,
        }
    }

    /// This ring with `key` among the previous keys (unchanged if it holds it already).
    pub fn with_previous(&self, key: MasterKey) -> Self {
        let mut ring = self.clone();
        if !ring.keys().any(|known| known.id_str() == key.id_str()) {
            ring.previous.push(key);
        }
        ring
    }

    /// Encrypts `plaintext` for the instance with immutable id `instance_uid`, under the primary.
    pub fn seal(&self, plaintext: &ApiKey, instance_uid: &str) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = seal_with_nonce(
            &self.primary,
            &nonce,
            &aad(instance_uid),
            plaintext.expose().as_bytes(),
        );
        let key_id = self.primary.id();
        metrics()
            .vault_seals
            .get_or_create(&KeyIdLabel {
                key_id: key_id.clone(),
            })
            .inc();
        Sealed { key_id, ciphertext }
    }

    /// Decrypts a stored key of the instance `instance_uid`.
    pub fn open(&self, sealed: &Sealed, instance_uid: &str) -> Result<ApiKey, VaultError> {
        let opened = self.open_counted(sealed, instance_uid);
        if opened.is_err() {
            metrics()
                .vault_failures
                .get_or_create(&OperationLabel { operation: "open" })
                .inc();
        }
        opened
    }

    /// Publishes the ring's key ids and roles as metrics (ids are public; see `MasterKey::id`).
    pub fn publish_metrics(&self) {
        // A key that moved from primary to previous must not stay listed under both.
        metrics().vault_keys.clear();
        for (index, key) in self.keys().enumerate() {
            let role = if index == 0 { "primary" } else { "previous" };
            metrics()
                .vault_keys
                .get_or_create(&KeyRoleLabels {
                    key_id: key.id(),
                    role,
                })
                .set(1);
        }
    }

    fn open_counted(&self, sealed: &Sealed, instance_uid: &str) -> Result<ApiKey, VaultError> {
        let key = std::iter::once(&self.primary)
            .chain(&self.previous)
            .find(|key| key.id_str() == sealed.key_id)
            .ok_or_else(|| VaultError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.ciphertext.len() < NONCE_LEN + 16 {
            return Err(VaultError::Malformed);
        }
        let (nonce, body) = sealed.ciphertext.split_at(NONCE_LEN);
        let aad = aad(instance_uid);
        let plaintext = Zeroizing::new(
            key.cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: body,
                        aad: &aad,
                    },
                )
                .map_err(|_| VaultError::Authentication)?,
        );
        let text = std::str::from_utf8(&plaintext).map_err(|_| VaultError::NotUtf8)?;
        metrics()
            .vault_opens
            .get_or_create(&KeyIdLabel {
                key_id: key.id_str().to_owned(),
            })
            .inc();
        Ok(ApiKey::new(text.to_owned()))
    }
}

fn aad(instance_uid: &str) -> Vec<u8> {
    [AAD_PREFIX, instance_uid.as_bytes()].concat()
}

/// nonce || AES-256-GCM(key, nonce, aad, plaintext) (ciphertext with its 16-byte tag).
fn seal_with_nonce(
    key: &MasterKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    // Encryption with a valid key and nonce length only fails for inputs beyond GCM's size
    // limit (64 GiB); API keys are bounded far below that by validation.
    let body = key
        .cipher()
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_else(|_| unreachable!("AES-GCM encrypts inputs under 64 GiB"));
    [nonce.as_slice(), &body].concat()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use base64::{Engine, engine::general_purpose::STANDARD};

    use super::*;

    fn ring() -> KeyRing {
        KeyRing::new(MasterKey::generate(), vec![]).unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn round_trip() {
        let ring = ring();
        let key = ApiKey::new("sk-test-round-trip".to_owned());
        let sealed = ring.seal(&key, "uid-1");
        assert_eq!(sealed.key_id, ring.primary_id());
        assert_eq!(ring.open(&sealed, "uid-1").unwrap(), key);
    }

    #[test]
    fn two_encryptions_of_one_value_differ() {
        let ring = ring();
        let key = ApiKey::new("same".to_owned());
        assert_ne!(
            ring.seal(&key, "u").ciphertext,
            ring.seal(&key, "u").ciphertext
        );
    }

    #[test]
    fn one_hundred_thousand_encryptions_use_distinct_nonces() {
        let ring = ring();
        let key = ApiKey::new("k".to_owned());
        let nonces: HashSet<[u8; NONCE_LEN]> = (0..100_000)
            .map(|_| {
                ring.seal(&key, "u").ciphertext[..NONCE_LEN]
                    .try_into()
                    .unwrap()
            })
            .collect();
        assert_eq!(nonces.len(), 100_000);
    }

    #[test]
    fn any_flipped_bit_fails() {
        let ring = ring();
        let sealed = ring.seal(&ApiKey::new("secret-value".to_owned()), "u");
        for byte in 0..sealed.ciphertext.len() {
            for bit in 0..8 {
                let mut tampered = sealed.clone();
                tampered.ciphertext[byte] ^= 1 << bit;
                assert_eq!(
                    ring.open(&tampered, "u"),
                    Err(VaultError::Authentication),
                    "byte {byte} bit {bit}"
                );
            }
        }
        let mut short = sealed.clone();
        short.ciphertext.truncate(NONCE_LEN + 3);
        assert_eq!(ring.open(&short, "u"), Err(VaultError::Malformed));
    }

    #[test]
    fn a_ciphertext_moved_to_another_instance_fails() {
        let ring = ring();
        let sealed = ring.seal(&ApiKey::new("bound".to_owned()), "instance-a");
        assert_eq!(
            ring.open(&sealed, "instance-b"),
            Err(VaultError::Authentication)
        );
    }

    #[test]
    fn an_unknown_key_id_fails_naming_it() {
        let old = ring();
        let sealed = old.seal(&ApiKey::new("x".to_owned()), "u");
        let error = ring().open(&sealed, "u").unwrap_err();
        assert_eq!(error, VaultError::UnknownKey(old.primary_id()));
        assert!(error.to_string().contains(&old.primary_id()));
    }

    #[test]
    fn previous_keys_still_decrypt_and_primary_encrypts() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        let sealed_a = KeyRing::new(a.clone(), vec![])
            .unwrap()
            .seal(&ApiKey::new("v".to_owned()), "u");
        let ring = KeyRing::new(b.clone(), vec![a.clone()]).unwrap();
        assert_eq!(ring.open(&sealed_a, "u").unwrap().expose(), "v");
        assert_eq!(ring.seal(&ApiKey::new("v".to_owned()), "u").key_id, b.id());
        assert_eq!(ring.key_ids(), [b.id(), a.id()]);
        assert!(matches!(
            KeyRing::new(a.clone(), vec![a]),
            Err(VaultError::DuplicateKey(_))
        ));
    }

    #[test]
    fn known_answer_gcm_spec_test_case_16() {
        // McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test case 16 (AES-256).
        let key = MasterKey::from_base64(&STANDARD.encode(hex(
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        )))
        .unwrap();
        let nonce: [u8; NONCE_LEN] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
        let plaintext = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let expected = hex(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
             76fc6ece0f4e1768cddf8853bb2d551b",
        );
        let sealed = seal_with_nonce(&key, &nonce, &aad, &plaintext);
        assert_eq!(&sealed[..NONCE_LEN], nonce.as_slice());
        assert_eq!(&sealed[NONCE_LEN..], expected.as_slice());
    }

    #[test]
    fn plaintext_keys_never_print() {
        let key = ApiKey::new("sk-do-not-print".to_owned());
        assert!(!format!("{key:?} {key}").contains("do-not-print"));
        let sealed = ring().seal(&key, "u");
        assert!(!format!("{sealed:?}").contains(&STANDARD.encode(&sealed.ciphertext)));
    }
}
