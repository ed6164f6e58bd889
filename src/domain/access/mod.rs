//! Who may do what: the whole access policy (docs/architecture.md, "Where each rule lives") in
//! this module, next to the matrix that tests it (`tests/authorization_matrix.tsv`). Handlers and
//! the store ask these functions; nothing else decides access. Acting for a user and releasing
//! keys are in [`acting`].
//!
//! Two answers hide existence: a read of what a caller may not see is [`hidden`] (NOT_FOUND,
//! exactly as for a missing resource), so nobody learns that a private handle exists. Writes into
//! someone else's namespace are PERMISSION_DENIED whether or not the target exists, since the
//! namespace itself is not secret.
//!
//! The rows of the policy:
//! - namespaces: [`check_namespace_write`], [`names_system_namespace`] (the `_system` guard);
//! - definitions: [`check_definitions_read`];
//! - private resources (projects, user records, instance lists): [`check_private_read`];
//! - instances, by role: [`effective_role`], [`authorize_instance`] with an [`InstanceAction`];
//! - keys: [`check_key_destination`] (a key is never moved to a new destination);
//! - shares: [`check_grantee`];
//! - users: [`check_admin`], [`check_user_changeable`] (the reserved `_system` user);
//! - service accounts: [`check_service_account_read`]; acting for a user is
//!   `ServiceAccountPrincipal::may_act_for`, and an acting account is that user to every row
//!   here (see `caller`);
//! - credential release: [`check_release_caller`], [`check_release_allowed`],
//!   [`check_release_opt_in_change`].

mod acting;

use std::fmt::Display;

pub use self::acting::{
    check_not_acting, check_release_allowed, check_release_caller, check_release_opt_in_at_create,
    check_release_opt_in_change, check_service_account_read, check_share_role,
};
use crate::domain::{
    caller::Caller,
    definition::ServiceSpec,
    error::{DomainError, PermissionReason, PreconditionReason},
    instance::{ApiKeyChange, Instance, Role},
    names::{Handle, InstanceName, SYSTEM_USER, ShareName, UserKey},
};

/// The existence-hiding refusal: what a caller who may not see `resource` is told, word for word
/// what they would be told if it did not exist.
pub fn hidden(resource: impl Display) -> DomainError {
    DomainError::NotFound(resource.to_string())
}

/// Whether a name (as sent, not validated) is `users/_system` or anything under it.
pub fn names_system_namespace(name: &str) -> bool {
    name.strip_prefix("users/")
        .and_then(|rest| rest.strip_prefix(SYSTEM_USER))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// May `caller` see the definitions owned by `owner`? `_system` ones are public to every caller;
/// others only to their owner and administrators. Refused as [`hidden`] `resource`.
pub fn check_definitions_read(
    caller: &Caller,
    owner: &UserKey,
    resource: impl Display,
) -> Result<(), DomainError> {
    if owner.is_system() || caller.is_admin() || caller.owns(owner) {
        Ok(())
    } else {
        Err(hidden(resource))
    }
}

/// May `caller` see private resources (projects, the user record, instance lists) of `owner`?
/// Refused as [`hidden`] `resource`.
pub fn check_private_read(
    caller: &Caller,
    owner: &UserKey,
    resource: impl Display,
) -> Result<(), DomainError> {
    if caller.is_admin() || caller.owns(owner) {
        Ok(())
    } else {
        Err(hidden(resource))
    }
}

/// May `caller` create, change or delete resources in `owner`'s namespace?
pub fn check_namespace_write(caller: &Caller, owner: &UserKey) -> Result<(), DomainError> {
    if owner.is_system() {
        // The guard layer already refuses this for non-admins; repeated here so that the policy
        // holds for any code path, not only for requests that crossed the guard.
        return if caller.is_admin() {
            Ok(())
        } else {
            Err(DomainError::system_namespace())
        };
    }
    if caller.is_admin() || caller.owns(owner) {
        Ok(())
    } else {
        Err(DomainError::PermissionDenied {
            reason: PermissionReason::ForeignNamespace,
            message: format!("users/{owner} is not your namespace"),
        })
    }
}

/// Only administrators may do `what`.
pub fn check_admin(caller: &Caller, what: &str) -> Result<(), DomainError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(DomainError::admin_only(what))
    }
}

/// The reserved user `_system` cannot be changed, deleted or given a token, not even by an
/// administrator.
pub fn check_user_changeable(user: &UserKey) -> Result<(), DomainError> {
    if user.is_system() {
        Err(DomainError::PermissionDenied {
            reason: PermissionReason::ReservedUser,
            message: "users/_system is reserved: it cannot be changed, deleted or given a token"
                .to_owned(),
        })
    } else {
        Ok(())
    }
}

/// What a caller wants to do with an instance (the rows of the authorization table, README.md "Access").
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

/// Allows `action` for `role`, or answers as the table says: strangers [`hidden`], too-low roles
/// PERMISSION_DENIED.
pub fn authorize_instance(
    role: Option<Role>,
    action: InstanceAction,
    name: &InstanceName,
) -> Result<Role, DomainError> {
    match role {
        None => Err(hidden(name)),
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

/// Who may read a share (GetShare): those who may manage the instance read any share of it; a
/// grantee who can see the instance reads their own (with its quota); other readers and writers
/// are refused as for listing shares, strangers get [`hidden`].
pub fn authorize_share_read(
    caller: &Caller,
    role: Option<Role>,
    share: &ShareName,
) -> Result<(), DomainError> {
    let own = role.is_some()
        && matches!(caller, Caller::User(user) if user.handle.as_str() == share.grantee.as_str());
    if own {
        return Ok(());
    }
    authorize_instance(role, InstanceAction::Manage, &share.instance).map(|_| ())
}

/// An instance's budget (`quota`) is set by those who manage it (owners, co-owners, the admin):
/// a writer may change its fields but not what every caller may spend.
pub fn check_budget_change(current: &Instance, changes: bool) -> Result<(), DomainError> {
    if changes && current.access_role < Role::Owner {
        return Err(DomainError::PermissionDenied {
            reason: PermissionReason::InsufficientRole,
            message: format!(
                "your role on {} is {}; changing its quota needs {}",
                current.name,
                current.access_role.as_str(),
                Role::Owner.as_str()
            ),
        });
    }
    Ok(())
}

/// A key is never moved to a new destination: on an instance holding a key, an update that
/// changes the endpoint (any part of it: a path on the same host can be another tenant behind a
/// gateway) or the API standard (which decides the header the key travels in) must supply the
/// key in the same request. Otherwise a writer could point the owner's key at a host of their
/// own, and the next provider call would send it there.
pub fn check_key_destination(
    current: &Instance,
    new: &ServiceSpec,
    key: &ApiKeyChange,
) -> Result<(), DomainError> {
    let moves =
        current.spec.endpoint != new.endpoint || current.spec.api_standard != new.api_standard;
    if current.has_api_key && moves && matches!(key, ApiKeyChange::Keep) {
        Err(DomainError::FailedPrecondition {
            reason: PreconditionReason::KeyRebindRequired,
            message: format!(
                "{} holds an API key: changing its endpoint or api_standard needs api_key in the \
                 same update (the stored key is never sent to a new destination)",
                current.name
            ),
        })
    } else {
        Ok(())
    }
}

/// Who may be given a role on `instance`: not the reserved user, not the owner (who has every
/// right already), not the caller (nobody raises their own role).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::caller::UserPrincipal;

    fn user(handle: &str) -> Caller {
        Caller::User(UserPrincipal::new(
            1,
            Handle::parse("h", handle).unwrap(),
            false,
        ))
    }

    #[test]
    fn namespaces_are_private_but_system_is_public_to_read() {
        let alice = UserKey::parse("u", "alice").unwrap();
        let system = UserKey::system();
        assert!(check_definitions_read(&user("bob"), &system, "x").is_ok());
        assert!(matches!(
            check_definitions_read(&user("bob"), &alice, "x"),
            Err(DomainError::NotFound(_))
        ));
        assert!(check_definitions_read(&user("alice"), &alice, "x").is_ok());
        assert!(check_definitions_read(&Caller::Admin, &alice, "x").is_ok());
        assert!(check_private_read(&user("bob"), &system, "x").is_err());
        assert!(check_private_read(&user("alice"), &alice, "x").is_ok());
        assert!(check_namespace_write(&user("bob"), &alice).is_err());
        assert!(check_namespace_write(&user("bob"), &system).is_err());
        assert!(check_namespace_write(&Caller::Admin, &system).is_ok());
        assert!(check_namespace_write(&user("alice"), &alice).is_ok());
        assert!(check_user_changeable(&system).is_err());
        assert!(check_user_changeable(&alice).is_ok());
    }

    #[test]
    fn system_names_are_recognised_as_sent() {
        for name in ["users/_system", "users/_system/instances/x"] {
            assert!(names_system_namespace(name), "{name}");
        }
        for name in ["users/_systemx", "users/alice", "apiStandards/_system", ""] {
            assert!(!names_system_namespace(name), "{name}");
        }
    }

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
                let result = authorize_instance(role, action, &name);
                assert_eq!(result.is_ok(), ok, "{role:?} {action:?}");
                if let Err(error) = result {
                    let expect_not_found = role.is_none();
                    assert_eq!(matches!(error, DomainError::NotFound(_)), expect_not_found);
                }
            }
        }
        let bob = user("bob");
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
}
