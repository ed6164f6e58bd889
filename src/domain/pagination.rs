//! Keyset pagination with opaque, tamper-evident page tokens.
//!
//! A token carries the sort key of the last item served, and an HMAC over that key and a
//! description of the query (method, parent, filters). A token that was edited, or that is
//! replayed against a different query, fails the HMAC and is INVALID_ARGUMENT. The HMAC key is
//! derived from the encryption key, so every replica accepts every other replica's tokens.
//! `page_size` may change from page to page (AIP-158).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::DomainError;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
const TOKEN_VERSION: &str = "p1";

/// Where a page starts and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// How many items to return.
    pub limit: usize,
    /// Return items whose sort key is strictly greater than this.
    pub after: Option<String>,
}

impl PageRequest {
    /// How many rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        i64::try_from(self.limit + 1).unwrap_or(i64::MAX)
    }
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

    /// Reads `page_size` and `page_token` of a request whose other fields are described by `query`.
    pub fn start(
        &self,
        page_size: i32,
        page_token: &str,
        query: &str,
    ) -> Result<PageRequest, DomainError> {
        let limit = match usize::try_from(page_size) {
            Err(_) => return Err(DomainError::invalid("page_size", "must not be negative")),
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) => n.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(self.open(page_token, query)?)
        };
        Ok(PageRequest { limit, after })
    }

    /// Cuts the `limit + 1` fetched items to the page and makes the next token, if any.
    pub fn finish<T>(
        &self,
        mut items: Vec<T>,
        page: &PageRequest,
        query: &str,
        sort_key: impl Fn(&T) -> String,
    ) -> (Vec<T>, String) {
        if items.len() <= page.limit {
            return (items, String::new());
        }
        items.truncate(page.limit);
        let token = items
            .last()
            .map(|last| self.seal(&sort_key(last), query))
            .unwrap_or_default();
        (items, token)
    }

    fn mac(&self, cursor: &str, query: &str) -> Hmac<Sha256> {
        // new_from_slice only fails for key lengths HMAC cannot take; 32 bytes always works.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts 32-byte keys"));
        for part in [TOKEN_VERSION, query, cursor] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    fn seal(&self, cursor: &str, query: &str) -> String {
        let tag = self.mac(cursor, query).finalize().into_bytes();
        format!(
            "{TOKEN_VERSION}.{}.{}",
            URL_SAFE_NO_PAD.encode(cursor),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    fn open(&self, token: &str, query: &str) -> Result<String, DomainError> {
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
        self.mac(&cursor, query)
            .verify_slice(&tag)
            .map_err(|_| invalid())?;
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering_and_other_queries() {
        let paginator = Paginator::new([7; 32]);
        let first = paginator.start(2, "", "q").unwrap();
        let (page, token) = paginator.finish(vec!["a", "b", "c"], &first, "q", |s| s.to_string());
        assert_eq!(page, vec!["a", "b"]);
        let next = paginator.start(2, &token, "q").unwrap();
        assert_eq!(next.after.as_deref(), Some("b"));
        assert!(paginator.start(2, &token, "other").is_err());
        let mut tampered = token.clone().into_bytes();
        let i = tampered.len() / 2;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert!(
            paginator
                .start(2, &String::from_utf8(tampered).unwrap(), "q")
                .is_err()
        );
        assert!(Paginator::new([8; 32]).start(2, &token, "q").is_err());
        assert!(paginator.start(-1, "", "q").is_err());
        assert_eq!(
            paginator.start(0, "", "q").unwrap().limit,
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(paginator.start(5000, "", "q").unwrap().limit, MAX_PAGE_SIZE);
    }
}
