//! Shares: one user's role on another user's instance.

use chrono::{DateTime, Utc};

use super::{
    DomainError,
    caller::Caller,
    instance::Role,
    names::{Handle, InstanceName, ShareName, UserKey},
};

/// A share as stored.
#[derive(Debug, Clone)]
pub struct Share {
    pub name: ShareName,
    pub role: Role,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// Who may be given a role: not the reserved user, not the owner (who has every right already),
/// not the caller (nobody raises their own role).
pub fn check_grantee(
    caller: &Caller,
    instance: &InstanceName,
    grantee: &UserKey,
) -> Result<Handle, DomainError> {
    if grantee.is_system() {
        return Err(DomainError::invalid(
            "grantee",
            "the reserved user _system cannot be given a role",
        ));
    }
    if grantee == &instance.owner {
        return Err(DomainError::invalid(
            "grantee",
            format!("users/{grantee} owns {instance} and has every right already"),
        ));
    }
    if caller.owns(grantee) {
        return Err(DomainError::invalid(
            "grantee",
            "you cannot share an instance with yourself",
        ));
    }
    Handle::parse("grantee", grantee.as_str())
}
