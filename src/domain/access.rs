//! Who may do what: the whole access policy (docs/architecture.md, "Where each rule lives") in
//! one file, next to the matrix that tests it (`tests/authorization_matrix.tsv`). Handlers and the store ask these
//! functions; nothing else decides access.
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

use std::fmt::Display;

use super::{
    caller::{Caller, UserPrincipal},
    definition::ServiceSpec,
    error::{DomainError, PermissionReason, PreconditionReason},
    instance::{ApiKeyChange, Instance, Role},
    names::{Handle, InstanceName, SYSTEM_USER, UserKey},
    service_account::{Permission, ServiceAccountName},
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

/// May `caller` read service account `name`? Administrators, and the account itself (acting for
/// nobody). Everyone else is PERMISSION_DENIED whether or not it exists: accounts are not in
/// anyone's namespace, and the answer tells nothing about which exist.
pub fn check_service_account_read(
    caller: &Caller,
    name: &ServiceAccountName,
) -> Result<(), DomainError> {
    match caller {
        Caller::ServiceAccount(account) if account.handle == name.0 => Ok(()),
        _ => check_admin(caller, "read other service accounts"),
    }
}

/// Who may receive a key from ResolveCredential: a service account with RELEASE_CREDENTIALS,
/// acting for a user (whose rights then decide which instances). Answers that user.
pub fn check_release_caller(caller: &Caller) -> Result<&UserPrincipal, DomainError> {
    let refused = |message: &str| DomainError::PermissionDenied {
        reason: PermissionReason::ReleaseDenied,
        message: message.to_owned(),
    };
    match caller {
        Caller::User(
            user @ UserPrincipal {
                via: Some(account), ..
            },
        ) => {
            if account.has(Permission::ReleaseCredentials) {
                Ok(user)
            } else {
                Err(refused(
                    "this service account has no RELEASE_CREDENTIALS permission",
                ))
            }
        }
        Caller::ServiceAccount(account) if account.has(Permission::ReleaseCredentials) => {
            Err(refused(
                "credentials are released only to a service account acting for a user: send \
                 x-llmr-act-as",
            ))
        }
        _ => Err(refused(
            "only a service account with RELEASE_CREDENTIALS, acting for a user, may resolve \
             credentials",
        )),
    }
}

/// A key leaves the registry only where its instance's owner allowed it.
pub fn check_release_allowed(instance: &Instance) -> Result<(), DomainError> {
    if instance.allow_credential_release {
        Ok(())
    } else {
        Err(DomainError::FailedPrecondition {
            reason: PreconditionReason::ReleaseNotAllowed,
            message: format!(
                "{} does not allow credential release; its owner may set \
                 allow_credential_release, or use EmbeddingService instead",
                instance.name
            ),
        })
    }
}

/// Whether an instance's key may be released is loosened only by its owner or an
/// administrator, calling in person; it may be tightened (turned off) by anyone with role OWNER,
/// a co-owner or a service account acting for one included. Otherwise an account holding both
/// permissions could opt in an instance of a user it acts for, or make someone a co-owner who
/// then opts in, and take its key: the opt-in would protect nothing. A writer may change the
/// other fields. Answers the value to store.
pub fn check_release_opt_in_change(
    caller: &Caller,
    current: &Instance,
    wanted: bool,
) -> Result<bool, DomainError> {
    if wanted == current.allow_credential_release {
        return Ok(wanted);
    }
    if wanted {
        if caller.is_acting() {
            return Err(acting_cannot("turn allow_credential_release on"));
        }
        if caller.is_admin() || caller.owns(&current.name.owner) {
            return Ok(true);
        }
        return Err(DomainError::PermissionDenied {
            reason: PermissionReason::InsufficientRole,
            message: format!(
                "only the owner of {} (or an administrator) may turn allow_credential_release \
                 on; co-owners may turn it off",
                current.name
            ),
        });
    }
    if current.access_role >= Role::Owner {
        Ok(false)
    } else {
        Err(DomainError::PermissionDenied {
            reason: PermissionReason::InsufficientRole,
            message: format!(
                "your role on {} is {}; changing allow_credential_release needs owner",
                current.name,
                current.access_role.as_str()
            ),
        })
    }
}

/// A caller acting for a user may share with any role but OWNER: a co-owner may do what the
/// owner's account could not (manage shares in person), so granting it is an act of the owner's
/// in person too.
pub fn check_share_role(caller: &Caller, role: Role) -> Result<(), DomainError> {
    if role >= Role::Owner && caller.is_acting() {
        Err(acting_cannot("grant the role OWNER"))
    } else {
        Ok(())
    }
}

/// A new instance may allow credential release only when its owner creates it in person (see
/// [`check_release_opt_in_change`]).
pub fn check_release_opt_in_at_create(caller: &Caller, wanted: bool) -> Result<(), DomainError> {
    if wanted && caller.is_acting() {
        Err(acting_cannot(
            "create an instance that allows credential release",
        ))
    } else {
        Ok(())
    }
}

/// What a service account acting for a user may still not do: the few acts that would hand it
/// more than the user's rights for this one call (a token of the user's, a key opt-in).
pub fn check_not_acting(caller: &Caller, what: &str) -> Result<(), DomainError> {
    if caller.is_acting() {
        Err(acting_cannot(what))
    } else {
        Ok(())
    }
}

fn acting_cannot(what: &str) -> DomainError {
    DomainError::PermissionDenied {
        reason: PermissionReason::ActAsDenied,
        message: format!("a service account acting for a user may not {what}"),
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
    use crate::domain::{
        caller::UserPrincipal, names::ApiStandardName, service_account::ServiceAccountPrincipal,
    };
    use std::sync::Arc;

    fn account(permissions: Vec<Permission>) -> Arc<ServiceAccountPrincipal> {
        Arc::new(ServiceAccountPrincipal {
            id: 9,
            handle: Handle::parse("h", "gateway").unwrap(),
            permissions,
            act_for_users: vec![],
            client_certificate_subject: None,
        })
    }

    fn acting(handle: &str, permissions: Vec<Permission>) -> Caller {
        Caller::User(
            UserPrincipal::new(1, Handle::parse("h", handle).unwrap(), true)
                .acted_for_by(account(permissions)),
        )
    }

    fn instance(role: Role, allow: bool) -> Instance {
        Instance {
            sequence: 1,
            name: InstanceName::new(
                UserKey::parse("u", "alice").unwrap(),
                Handle::parse("h", "i").unwrap(),
            ),
            uid: "u".into(),
            definition: None,
            spec: ServiceSpec {
                endpoint: "https://x.example.com".into(),
                api_standard: ApiStandardName(Handle::parse("h", "openai").unwrap()),
                model: "m".into(),
                dimensions: None,
                context_limit: None,
                description: String::new(),
            },
            has_api_key: true,
            allow_credential_release: allow,
            access_role: role,
            revision: 1,
            create_time: chrono::Utc::now(),
            update_time: chrono::Utc::now(),
            last_test: None,
        }
    }

    #[test]
    fn acting_is_never_admin_and_release_needs_the_permission_while_acting() {
        let admin_user = acting("boss", vec![Permission::ActAsUser]);
        assert!(!admin_user.is_admin(), "acting never grants administration");
        assert!(admin_user.is_acting());
        assert!(check_admin(&admin_user, "x").is_err());
        assert!(check_release_caller(&user("alice")).is_err());
        assert!(check_release_caller(&acting("alice", vec![Permission::ActAsUser])).is_err());
        assert!(
            check_release_caller(&acting(
                "alice",
                vec![Permission::ActAsUser, Permission::ReleaseCredentials]
            ))
            .is_ok()
        );
        let alone = Caller::ServiceAccount(account(vec![Permission::ReleaseCredentials]));
        assert!(check_release_caller(&alone).is_err());
        assert!(check_release_caller(&Caller::Admin).is_err());
        let own = ServiceAccountName(Handle::parse("h", "gateway").unwrap());
        let other = ServiceAccountName(Handle::parse("h", "other").unwrap());
        assert!(check_service_account_read(&alone, &own).is_ok());
        assert!(check_service_account_read(&alone, &other).is_err());
        assert!(check_service_account_read(&user("gateway"), &own).is_err());
    }

    #[test]
    fn the_release_opt_in_is_the_owners_in_person() {
        let owner = user("alice");
        assert!(check_release_allowed(&instance(Role::Reader, true)).is_ok());
        assert!(check_release_allowed(&instance(Role::Owner, false)).is_err());
        assert!(check_release_opt_in_change(&owner, &instance(Role::Owner, false), true).unwrap());
        assert!(
            check_release_opt_in_change(&user("bob"), &instance(Role::Writer, false), true)
                .is_err()
        );
        // A co-owner (role OWNER by a share) may turn it off, never on.
        let co_owner = user("dave");
        assert!(
            check_release_opt_in_change(&co_owner, &instance(Role::Owner, false), true).is_err()
        );
        assert!(
            !check_release_opt_in_change(&co_owner, &instance(Role::Owner, true), false).unwrap()
        );
        // An account acting for a user never grants OWNER; it may grant the other roles.
        let acting_alice = acting("alice", vec![Permission::ActAsUser]);
        assert!(check_share_role(&acting_alice, Role::Owner).is_err());
        assert!(check_share_role(&acting_alice, Role::Writer).is_ok());
        assert!(check_share_role(&owner, Role::Owner).is_ok());
        // A writer's other edits keep the value as it is.
        assert!(check_release_opt_in_change(&owner, &instance(Role::Writer, true), true).is_ok());
        let acting_owner = acting("alice", vec![Permission::ActAsUser]);
        assert!(
            check_release_opt_in_change(&acting_owner, &instance(Role::Owner, false), true)
                .is_err()
        );
        assert!(check_release_opt_in_at_create(&acting_owner, true).is_err());
        assert!(check_release_opt_in_at_create(&acting_owner, false).is_ok());
        assert!(check_release_opt_in_at_create(&owner, true).is_ok());
        assert!(check_not_acting(&acting_owner, "x").is_err());
        assert!(check_not_acting(&owner, "x").is_ok());
    }

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
