//! Keyset pagination with opaque, tamper-evident page tokens.
//!
//! A token carries the store's cursor (where the next page starts; its type and text belong to
//! the store, see `store::cursor`) *encrypted* with AES-256-GCM, so it reveals nothing (not even
//! the row ids of a list ordered by creation, which would show activity across tenants). The
//! associated data is the request's *binding*: its method, its caller and every field but
//! `page_size` and `page_token`, as `api::paging` encodes them. A token that was edited, or that
//! is replayed against a request whose other fields changed, fails authentication and is
//! INVALID_ARGUMENT.
//!
//! The keys are derived from every configured master key: the primary's seals, and any of them
//! opens, so tokens survive a key rotation and a rollout in which replicas' primaries differ.
//! `page_size` may change from page to page (AIP-158).

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;

use super::DomainError;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Bumped whenever the binding or the cursors change shape, so that older tokens are refused.
const TOKEN_VERSION: &str = "p3";
const NONCE_LEN: usize = 12;

/// Where a page starts and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// How many items to return.
    pub limit: usize,
    /// The store's cursor of the last item served, from a verified token: the store reads it
    /// back into its typed cursor, and refuses it when it cannot.
    pub after: Option<String>,
}

/// One page, as the store found it: the items and, when more follow, the cursor of the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Seals and opens page tokens.
#[derive(Clone)]
pub struct Paginator {
    /// The first seals; every one opens.
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Paginator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Paginator(<redacted>)")
    }
}

impl Paginator {
    /// A paginator sealing with `primary` and opening with it or any of `previous`.
    pub fn new(primary: [u8; 32], previous: Vec<[u8; 32]>) -> Self {
        let mut keys = vec![primary];
        keys.extend(previous);
        Self { keys }
    }

    /// Reads `page_size` and `page_token` of a request whose other fields are `binding`.
    pub fn start(
        &self,
        page_size: i32,
        page_token: &str,
        binding: &[u8],
    ) -> Result<PageRequest, DomainError> {
        let limit = match usize::try_from(page_size) {
            Err(_) => return Err(DomainError::invalid("page_size", "must not be negative")),
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) => n.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(self.open(page_token, binding)?)
        };
        Ok(PageRequest { limit, after })
    }

    /// The page's items and the token of the next page (empty on the last page).
    pub fn finish<T>(&self, page: Page<T>, binding: &[u8]) -> (Vec<T>, String) {
        let token = page
            .next_cursor
            .map(|cursor| self.seal(&cursor, binding))
            .unwrap_or_default();
        (page.items, token)
    }

    /// The associated data of a token: its version and the request's binding.
    fn aad(binding: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(TOKEN_VERSION.len() + 8 + binding.len());
        aad.extend_from_slice(TOKEN_VERSION.as_bytes());
        aad.extend_from_slice(&(binding.len() as u64).to_be_bytes());
        aad.extend_from_slice(binding);
        aad
    }

    fn seal(&self, cursor: &str, binding: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = Self::aad(binding);
        let Ok(body) = Aes256Gcm::new((&self.keys[0]).into()).encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: cursor.as_bytes(),
                aad: &aad,
            },
        ) else {
            // Only inputs beyond GCM's 64 GiB limit fail; a cursor is a few bytes.
            unreachable!("AES-GCM encrypts a cursor");
        };
        format!(
            "{TOKEN_VERSION}.{}",
            URL_SAFE_NO_PAD.encode([nonce.as_slice(), &body].concat())
        )
    }

    fn open(&self, token: &str, binding: &[u8]) -> Result<String, DomainError> {
        let invalid = || {
            DomainError::invalid(
                "page_token",
                "is not a token issued for this request (tampered, or the other request fields changed)",
            )
        };
        let sealed = token
            .strip_prefix(TOKEN_VERSION)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or_else(invalid)?;
        let sealed = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| invalid())?;
        if sealed.len() < NONCE_LEN + 16 {
            return Err(invalid());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let aad = Self::aad(binding);
        let cursor = self
            .keys
            .iter()
            .find_map(|key| {
                Aes256Gcm::new(key.into())
                    .decrypt(
                        Nonce::from_slice(nonce),
                        Payload {
                            msg: body,
                            aad: &aad,
                        },
                    )
                    .ok()
            })
            .ok_or_else(invalid)?;
        String::from_utf8(cursor).map_err(|_| invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering_and_other_requests() {
        // Long enough that its base64 cannot turn up in a random token by chance (a one-byte
        // cursor's two base64 characters did, about once in a hundred runs).
        const CURSOR: &str = "cursor-of-the-last-item-served";
        let paginator = Paginator::new([7; 32], vec![]);
        let first = paginator.start(2, "", b"q").unwrap();
        assert_eq!(first.after, None);
        let page = Page {
            items: vec!["a", "b"],
            next_cursor: Some(CURSOR.to_owned()),
        };
        let (items, token) = paginator.finish(page, b"q");
        assert_eq!(items, vec!["a", "b"]);
        let next = paginator.start(2, &token, b"q").unwrap();
        assert_eq!(next.after.as_deref(), Some(CURSOR));
        assert!(paginator.start(2, &token, b"other").is_err());
        let mut tampered = token.clone().into_bytes();
        let i = tampered.len() / 2;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert!(
            paginator
                .start(2, &String::from_utf8(tampered).unwrap(), b"q")
                .is_err()
        );
        assert!(
            Paginator::new([8; 32], vec![])
                .start(2, &token, b"q")
                .is_err()
        );
        // A rotation: the new primary still opens tokens of the old one, which stays configured.
        let rotated = Paginator::new([8; 32], vec![[7; 32]]);
        assert_eq!(
            rotated.start(2, &token, b"q").unwrap().after.as_deref(),
            Some(CURSOR)
        );
        // The cursor is not readable in the token.
        assert!(!token.contains(&URL_SAFE_NO_PAD.encode(CURSOR)[..8]));
        assert!(paginator.start(-1, "", b"q").is_err());
        assert_eq!(
            paginator.start(0, "", b"q").unwrap().limit,
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(
            paginator.start(5000, "", b"q").unwrap().limit,
            MAX_PAGE_SIZE
        );
        let last = Page::<&str> {
            items: vec![],
            next_cursor: None,
        };
        assert_eq!(paginator.finish(last, b"q").1, "");
    }
}
