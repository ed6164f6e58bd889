//! Keyset pagination with opaque, tamper-evident page tokens.
//!
//! A token carries the store's cursor (where the next page starts; its type and text belong to
//! the store, see `store::cursor`) and an HMAC over that cursor and the request's *binding*: its
//! method and every field but `page_size` and `page_token`, as `api::paging` encodes them. A
//! token that was edited, or that is replayed against a request whose other fields changed,
//! fails the HMAC and is INVALID_ARGUMENT. The HMAC key is derived from the encryption key, so
//! every replica accepts every other replica's tokens. `page_size` may change from page to page
//! (AIP-158).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::DomainError;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Bumped whenever the binding or the cursors change shape, so that older tokens are refused.
const TOKEN_VERSION: &str = "p2";

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

/// Signs and checks page tokens.
#[derive(Clone)]
pub struct Paginator {
    key: [u8; 32],
}

impl std::fmt::Debug for Paginator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Paginator(<redacted>)")
    }
}

impl Paginator {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
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

    fn mac(&self, cursor: &str, binding: &[u8]) -> Hmac<Sha256> {
        // new_from_slice only fails for key lengths HMAC cannot take; 32 bytes always works.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts 32-byte keys"));
        for part in [TOKEN_VERSION.as_bytes(), binding, cursor.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn seal(&self, cursor: &str, binding: &[u8]) -> String {
        let tag = self.mac(cursor, binding).finalize().into_bytes();
        format!(
            "{TOKEN_VERSION}.{}.{}",
            URL_SAFE_NO_PAD.encode(cursor),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    fn open(&self, token: &str, binding: &[u8]) -> Result<String, DomainError> {
        let invalid = || {
            DomainError::invalid(
                "page_token",
                "is not a token issued for this request (tampered, or the other request fields changed)",
            )
        };
        let mut parts = token.split('.');
        let (Some(TOKEN_VERSION), Some(cursor), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let cursor = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
        let cursor = String::from_utf8(cursor).map_err(|_| invalid())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        // verify_slice compares in constant time.
        self.mac(&cursor, binding)
            .verify_slice(&tag)
            .map_err(|_| invalid())?;
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering_and_other_requests() {
        let paginator = Paginator::new([7; 32]);
        let first = paginator.start(2, "", b"q").unwrap();
        assert_eq!(first.after, None);
        let page = Page {
            items: vec!["a", "b"],
            next_cursor: Some("b".to_owned()),
        };
        let (items, token) = paginator.finish(page, b"q");
        assert_eq!(items, vec!["a", "b"]);
        let next = paginator.start(2, &token, b"q").unwrap();
        assert_eq!(next.after.as_deref(), Some("b"));
        assert!(paginator.start(2, &token, b"other").is_err());
        let mut tampered = token.clone().into_bytes();
        let i = tampered.len() / 2;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert!(
            paginator
                .start(2, &String::from_utf8(tampered).unwrap(), b"q")
                .is_err()
        );
        assert!(Paginator::new([8; 32]).start(2, &token, b"q").is_err());
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
