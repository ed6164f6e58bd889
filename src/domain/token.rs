//! Bearer tokens: long random strings with a recognisable prefix (so leaked ones are easy to
//! spot and scan for), stored only as a SHA-256 hash. Tokens carry 256 bits of randomness, so a
//! fast hash suffices; no salt or slow KDF is needed for such inputs.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Every user token starts with this.
pub const TOKEN_PREFIX: &str = "llmr_";
/// Every service account token starts with this. It is not a continuation of [`TOKEN_PREFIX`]
/// (its fifth character is `s`, not `_`), so no token can be read as both kinds.
pub const SERVICE_ACCOUNT_TOKEN_PREFIX: &str = "llmrsa_";

/// Which kind of identity a presented token claims to be, by its prefix.
pub fn is_service_account_token(token: &str) -> bool {
    token.starts_with(SERVICE_ACCOUNT_TOKEN_PREFIX)
}

/// A freshly issued token; zeroized on drop, redacted in `Debug`.
pub struct IssuedToken(Zeroizing<String>);

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuedToken(<redacted>)")
    }
}

impl IssuedToken {
    /// A new user token.
    pub fn generate() -> Self {
        Self::with_prefix(TOKEN_PREFIX)
    }

    /// A new service account token.
    pub fn generate_for_service_account() -> Self {
        Self::with_prefix(SERVICE_ACCOUNT_TOKEN_PREFIX)
    }

    fn with_prefix(prefix: &str) -> Self {
        let mut random = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(random.as_mut_slice());
        Self(Zeroizing::new(format!(
            "{prefix}{}",
            URL_SAFE_NO_PAD.encode(random.as_slice())
        )))
    }

    /// The token itself: only for the one response that shows it.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> [u8; 32] {
        hash(&self.0)
    }
}

/// The stored form of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_redacted() {
        let a = IssuedToken::generate();
        let b = IssuedToken::generate();
        assert!(a.reveal().starts_with(TOKEN_PREFIX));
        assert!(a.reveal().len() >= 45);
        assert_ne!(a.reveal(), b.reveal());
        assert_eq!(a.hash(), hash(a.reveal()));
        assert!(!format!("{a:?}").contains(a.reveal()));
        assert!(!is_service_account_token(a.reveal()));
        let account = IssuedToken::generate_for_service_account();
        assert!(is_service_account_token(account.reveal()));
        assert!(!account.reveal().starts_with(TOKEN_PREFIX));
    }
}
