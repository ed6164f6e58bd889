//! sqlx errors -> domain errors. Constraint violations caused by the request become the caller's
//! error (ALREADY_EXISTS, FAILED_PRECONDITION, INVALID_ARGUMENT); an unreachable database becomes
//! UNAVAILABLE; anything else is INTERNAL, with the detail kept for the log only.

use crate::domain::{
    DomainError,
    names::{Handle, UserKey},
};

const UNIQUE_VIOLATION: &str = "23505";
pub const FOREIGN_KEY_VIOLATION: &str = "23503";
pub const NOT_NULL_VIOLATION: &str = "23502";
const CHECK_VIOLATION: &str = "23514";
/// A statement cancelled, here by `statement_timeout`: the database did not finish in time.
const QUERY_CANCELED: &str = "57014";
/// Class 22: data exceptions (value too long, out of range, bad encoding).
const DATA_EXCEPTION_CLASS: &str = "22";
/// Class 08 (connection exception), 57P01..03 (admin shutdown, crash, cannot connect now),
/// 55000 (database not accepting connections), 53300 (too many connections), 3D000 (database gone).
const UNAVAILABLE_CODES: &[&str] = &["57P01", "57P02", "57P03", "55000", "53300", "3D000"];

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether `error` means the database cannot be reached (rather than that it refused a query).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        // Connection-level failures: the database went away or the link broke mid-query.
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => sqlstate(error).is_some_and(|code| {
            code.starts_with("08") || UNAVAILABLE_CODES.contains(&code.as_str())
        }),
        _ => false,
    }
}

/// Maps an error with no more specific meaning in its context.
pub fn db(error: sqlx::Error) -> DomainError {
    if is_unavailable(&error) {
        tracing::warn!(error = %error, "database unavailable");
        return DomainError::Unavailable;
    }
    match sqlstate(&error).as_deref() {
        Some(QUERY_CANCELED) => {
            tracing::warn!(error = %error, "statement cancelled by its timeout");
            DomainError::Unavailable
        }
        Some(code) if code.starts_with(DATA_EXCEPTION_CLASS) || code == CHECK_VIOLATION => {
            // Validation should have caught this first; still the caller's input, not our fault.
            DomainError::invalid("", "a value is out of the range the registry can store")
        }
        _ => DomainError::Internal(format!("database error: {error}")),
    }
}

/// Maps an insert: a duplicate key means `resource` already exists.
pub fn on_insert(error: sqlx::Error, resource: &str) -> DomainError {
    if sqlstate(&error).as_deref() == Some(UNIQUE_VIOLATION) {
        DomainError::AlreadyExists(resource.to_owned())
    } else {
        db(error)
    }
}

/// Maps a delete: a foreign key violation means something still uses `resource`.
pub fn on_delete(error: sqlx::Error, resource: &str) -> DomainError {
    if sqlstate(&error).as_deref() == Some(FOREIGN_KEY_VIOLATION) {
        DomainError::in_use(format!("{resource} is still in use"), Vec::new())
    } else {
        db(error)
    }
}

/// Maps a write that references an API standard: a foreign key violation means it vanished
/// between lookup and write (a concurrent delete), which is the caller's reference gone bad.
pub fn on_reference(error: sqlx::Error, field: &str) -> DomainError {
    if sqlstate(&error).as_deref() == Some(FOREIGN_KEY_VIOLATION) {
        DomainError::invalid(field, "refers to something that no longer exists")
    } else {
        db(error)
    }
}

/// A handle read back from the database; a malformed one is our fault, not the caller's.
pub fn stored_handle(value: &str) -> Result<Handle, DomainError> {
    Handle::parse("stored", value)
        .map_err(|_| DomainError::Internal(format!("malformed stored handle {value:?}")))
}

/// A user handle (or `_system`) read back from the database.
pub fn stored_user(value: &str) -> Result<UserKey, DomainError> {
    UserKey::parse("stored", value)
        .map_err(|_| DomainError::Internal(format!("malformed stored owner {value:?}")))
}
