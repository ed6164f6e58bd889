//! Acting for a user and releasing keys: which service account may read which account record,
//! who may receive a key from ResolveCredential, and the release opt-in, which only the owner
//! loosens, in person. Part of the access policy ([`super`]).

use super::check_admin;
use crate::domain::{
    caller::{Caller, UserPrincipal},
    error::{DomainError, PermissionReason, PreconditionReason},
    instance::{Instance, Role},
    service_account::{Permission, ServiceAccountName},
};

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{
        definition::ServiceSpec,
        names::{ApiStandardName, Handle, InstanceName, UserKey},
        service_account::ServiceAccountPrincipal,
    };

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
            quota: None,
            revision: 1,
            create_time: chrono::Utc::now(),
            update_time: chrono::Utc::now(),
            last_test: None,
        }
    }

    fn user(handle: &str) -> Caller {
        Caller::User(UserPrincipal::new(
            1,
            Handle::parse("h", handle).unwrap(),
            false,
        ))
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
}
