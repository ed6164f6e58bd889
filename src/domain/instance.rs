//! Instances: a user's configured service (the fields of a definition), its write-only API key,
//! and the roles through which others use it.

use chrono::{DateTime, Utc};

use super::{
    DomainError,
    caller::Caller,
    definition::ServiceSpec,
    error::PermissionReason,
    names::{DefinitionName, InstanceName, UserKey},
};
use crate::vault::ApiKey;

pub const MAX_API_KEY_LEN: usize = 4096;

/// A role on an instance, ordered: each includes the rights of those before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Writer,
    Owner,
}

impl Role {
    /// The stored form (shares.role).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Owner => "owner",
        }
    }

    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// What a caller wants to do with an instance (DESIGN.md's authorization table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAction {
    /// Get, appear in lists, bind a project.
    Use,
    /// Update fields, replace the API key.
    Write,
    /// Delete, share, unshare, list shares.
    Manage,
}

impl InstanceAction {
    fn needs(self) -> Role {
        match self {
            InstanceAction::Use => Role::Reader,
            InstanceAction::Write => Role::Writer,
            InstanceAction::Manage => Role::Owner,
        }
    }
}

/// The caller's effective role on an instance of `owner`, given the role of a share to the
/// caller if there is one. `None` means a stranger, who must not learn the instance exists.
pub fn effective_role(caller: &Caller, owner: &UserKey, shared_role: Option<Role>) -> Option<Role> {
    if caller.is_admin() || caller.owns(owner) {
        Some(Role::Owner)
    } else {
        shared_role
    }
}

/// Allows `action` for `role`, or answers as the table says: strangers NOT_FOUND, too-low roles
/// PERMISSION_DENIED.
pub fn authorize(
    role: Option<Role>,
    action: InstanceAction,
    name: &InstanceName,
) -> Result<Role, DomainError> {
    match role {
        None => Err(DomainError::NotFound(name.to_string())),
        Some(role) if role >= action.needs() => Ok(role),
        Some(role) => Err(DomainError::PermissionDenied {
            reason: PermissionReason::InsufficientRole,
            message: format!(
                "your role on {name} is {}; this needs {}",
                role.as_str(),
                action.needs().as_str()
            ),
        }),
    }
}

/// Validates an API key as given in a request.
pub fn api_key(field: &str, value: &str) -> Result<ApiKey, DomainError> {
    if value.is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_API_KEY_LEN {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {MAX_API_KEY_LEN} characters"),
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        // Never echo the value: it is a secret even when malformed.
        return Err(DomainError::invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(ApiKey::new(value.to_owned()))
}

/// What an update does to the stored key.
#[derive(Debug, Clone)]
pub enum ApiKeyChange {
    Keep,
    Replace(ApiKey),
    Remove,
}

/// An instance as stored, seen by one caller.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Creation order, unique: the order of ListInstances and its page cursor.
    pub sequence: i64,
    pub name: InstanceName,
    pub uid: String,
    pub definition: Option<DefinitionName>,
    pub spec: ServiceSpec,
    pub has_api_key: bool,
    /// The caller's role on it.
    pub access_role: Role,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Instance {
    pub fn etag(&self) -> String {
        super::etag(self.revision, self.update_time)
    }
}

/// Which instances ListInstances returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Owned,
    Shared,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{caller::UserPrincipal, names::Handle};

    #[test]
    fn the_authorization_table() {
        let name = InstanceName::new(
            UserKey::parse("u", "alice").unwrap(),
            Handle::parse("h", "i").unwrap(),
        );
        use InstanceAction::*;
        for (role, allowed) in [
            (None, [false, false, false]),
            (Some(Role::Reader), [true, false, false]),
            (Some(Role::Writer), [true, true, false]),
            (Some(Role::Owner), [true, true, true]),
        ] {
            for (action, ok) in [Use, Write, Manage].into_iter().zip(allowed) {
                let result = authorize(role, action, &name);
                assert_eq!(result.is_ok(), ok, "{role:?} {action:?}");
                if let Err(error) = result {
                    let expect_not_found = role.is_none();
                    assert_eq!(matches!(error, DomainError::NotFound(_)), expect_not_found);
                }
            }
        }
        let bob = Caller::User(UserPrincipal {
            id: 2,
            handle: Handle::parse("h", "bob").unwrap(),
            is_admin: false,
        });
        assert_eq!(effective_role(&bob, &name.owner, None), None);
        assert_eq!(
            effective_role(&bob, &name.owner, Some(Role::Writer)),
            Some(Role::Writer)
        );
        assert_eq!(
            effective_role(&Caller::Admin, &name.owner, None),
            Some(Role::Owner)
        );
    }

    #[test]
    fn api_keys_are_bounded_and_never_echoed() {
        assert!(api_key("k", "sk-abc").is_ok());
        for bad in ["", "has space", "tab\tkey", "new\nline", &"x".repeat(4097)] {
            let error = api_key("k", bad).unwrap_err();
            if !bad.is_empty() {
                assert!(!error.to_string().contains(bad));
            }
        }
    }
}
