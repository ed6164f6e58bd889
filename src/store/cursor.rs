//! Typed page cursors: where each list query resumes, owned by the store because only the store
//! knows its sort keys. A cursor travels inside a signed page token as text (see
//! `domain::pagination`); the store writes it with [`Cursor::encode`] and reads it back with
//! [`Cursor::decode`]. A cursor that cannot be read back is INVALID_ARGUMENT on `page_token`,
//! never a silent start from the beginning.

use crate::domain::{
    DomainError,
    pagination::{Page, PageRequest},
};

/// A sort key that a list query resumes after.
pub(super) trait Cursor: Sized {
    fn encode(&self) -> String;
    fn decode(text: &str) -> Option<Self>;
}

/// Lists ordered by a row id: instances in creation order (resuming after it), audit events
/// newest first (resuming before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowId(pub i64);

impl Cursor for RowId {
    fn encode(&self) -> String {
        self.0.to_string()
    }

    fn decode(text: &str) -> Option<Self> {
        text.parse().ok().filter(|id| *id >= 0).map(RowId)
    }
}

/// Lists ordered by handle (users, definitions, projects, API standards, share grantees); the
/// reserved `_system` is a handle here too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HandleKey(pub String);

impl Cursor for HandleKey {
    fn encode(&self) -> String {
        self.0.clone()
    }

    fn decode(text: &str) -> Option<Self> {
        crate::domain::names::UserKey::parse("page_token", text)
            .ok()
            .map(|handle| HandleKey(handle.as_str().to_owned()))
    }
}

/// The cursor a page starts after, if any; a token whose cursor does not read back is refused.
pub(super) fn start_after<C: Cursor>(page: &PageRequest) -> Result<Option<C>, DomainError> {
    page.after
        .as_deref()
        .map(|text| {
            C::decode(text).ok_or_else(|| {
                DomainError::invalid("page_token", "is not a token issued for this request")
            })
        })
        .transpose()
}

/// The handle a handle-ordered page starts after: "" (before every handle) on the first page.
pub(super) fn handle_after(page: &PageRequest) -> Result<String, DomainError> {
    Ok(start_after::<HandleKey>(page)?
        .map(|HandleKey(handle)| handle)
        .unwrap_or_default())
}

/// How many rows a query fetches: one more than the page, to learn whether another follows.
pub(super) fn fetch_limit(page: &PageRequest) -> i64 {
    i64::try_from(page.limit + 1).unwrap_or(i64::MAX)
}

/// Cuts the `limit + 1` fetched rows to the page, with the cursor of its last item when more
/// follow.
pub(super) fn page_of<T, C: Cursor>(
    mut items: Vec<T>,
    page: &PageRequest,
    cursor_of: impl Fn(&T) -> C,
) -> Page<T> {
    if items.len() <= page.limit {
        return Page {
            items,
            next_cursor: None,
        };
    }
    items.truncate(page.limit);
    let next_cursor = items.last().map(|last| cursor_of(last).encode());
    Page { items, next_cursor }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_cursors_are_refused_not_zero() {
        let page = |after: &str| PageRequest {
            limit: 2,
            after: Some(after.to_owned()),
        };
        assert_eq!(start_after::<RowId>(&page("41")).unwrap(), Some(RowId(41)));
        assert!(start_after::<RowId>(&page("forty")).is_err());
        assert!(start_after::<RowId>(&page("-1")).is_err());
        assert!(start_after::<HandleKey>(&page("Bad Handle")).is_err());
        let first = PageRequest {
            limit: 2,
            after: None,
        };
        assert_eq!(start_after::<RowId>(&first).unwrap(), None);
        let cut = page_of(vec![1, 2, 3], &first, |n| RowId(*n));
        assert_eq!(cut.items, vec![1, 2]);
        assert_eq!(cut.next_cursor.as_deref(), Some("2"));
        let last = page_of(vec![1, 2], &first, |n| RowId(*n));
        assert_eq!(last.next_cursor, None);
    }
}
