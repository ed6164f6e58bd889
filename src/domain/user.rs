//! Users: who may call the service, and the fields an administrator can set.

use chrono::{DateTime, Utc};

use super::{
    DomainError,
    error::Violations,
    names::{Handle, UserKey},
    validate,
};

/// A user as stored.
#[derive(Debug, Clone)]
pub struct User {
    pub handle: UserKey,
    pub display_name: String,
    pub is_admin: bool,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl User {
    pub fn etag(&self) -> String {
        super::etag(self.revision, self.update_time)
    }
}

/// The settable fields of a user, validated.
#[derive(Debug, Clone)]
pub struct UserFields {
    pub display_name: String,
    pub is_admin: bool,
}

impl UserFields {
    /// Validates fields as they arrive in a request under `prefix` (e.g. `user`).
    pub fn parse(prefix: &str, display_name: &str, is_admin: bool) -> Result<Self, DomainError> {
        let mut violations = Violations::default();
        let display_name = violations.take(validate::line(
            &format!("{prefix}.display_name"),
            display_name,
            validate::MAX_DISPLAY_NAME_LEN,
            false,
        ));
        violations.finish()?;
        Ok(Self {
            display_name: display_name.unwrap_or_default(),
            is_admin,
        })
    }
}

/// A new user: a fresh handle (never `_system`) and its fields.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub handle: Handle,
    pub fields: UserFields,
}
