//! The access policy for namespaces (DESIGN.md, "Authorization"). Reads of what a caller may not
//! see answer NOT_FOUND exactly as for a missing resource; writes into someone else's namespace
//! answer PERMISSION_DENIED whether or not the target exists.

use super::{
    caller::Caller,
    error::{DomainError, PermissionReason},
    names::UserKey,
};

/// May `caller` see the definitions owned by `owner`? `_system` ones are public to every caller;
/// others only to their owner and administrators.
pub fn may_read_definitions_of(caller: &Caller, owner: &UserKey) -> bool {
    owner.is_system() || caller.is_admin() || caller.owns(owner)
}

/// May `caller` see private resources (projects, the user record, instance lists) of `owner`?
pub fn may_read_private_of(caller: &Caller, owner: &UserKey) -> bool {
    caller.is_admin() || caller.owns(owner)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{caller::UserPrincipal, names::Handle};

    fn user(handle: &str) -> Caller {
        Caller::User(UserPrincipal {
            id: 1,
            handle: Handle::parse("h", handle).unwrap(),
            is_admin: false,
        })
    }

    #[test]
    fn namespaces_are_private_but_system_is_public_to_read() {
        let alice = UserKey::parse("u", "alice").unwrap();
        assert!(may_read_definitions_of(&user("bob"), &UserKey::system()));
        assert!(!may_read_definitions_of(&user("bob"), &alice));
        assert!(may_read_definitions_of(&user("alice"), &alice));
        assert!(may_read_definitions_of(&Caller::Admin, &alice));
        assert!(check_namespace_write(&user("bob"), &alice).is_err());
        assert!(check_namespace_write(&user("bob"), &UserKey::system()).is_err());
        assert!(check_namespace_write(&Caller::Admin, &UserKey::system()).is_ok());
        assert!(check_namespace_write(&user("alice"), &alice).is_ok());
    }
}
