//! Service accounts: identities of internal services, with narrow permissions. The record an
//! administrator manages ([`ServiceAccount`], [`ServiceAccountFields`]), the principal the edge
//! builds from its token ([`ServiceAccountPrincipal`]), and the rules of acting for a user
//! ([`ServiceAccountPrincipal::may_act_for`]).

use std::fmt;

use chrono::{DateTime, Utc};

use super::{
    DomainError,
    certificate_binding::CertificateBinding,
    error::{PermissionReason, Violations},
    names::{Handle, UserKey, UserName},
    validate,
};

/// Most users one account may be restricted to.
pub const MAX_ACT_FOR_USERS: usize = 1000;
/// Longest certificate subject accepted (RFC 4514 text).
pub const MAX_SUBJECT_LEN: usize = 1024;

/// What a service account may do beyond reading public resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// May act for users (the act-as metadata), with exactly their rights.
    ActAsUser,
    /// May receive a decrypted key from ResolveCredential, acting for a user.
    ReleaseCredentials,
}

impl Permission {
    /// The stored form (`service_accounts.permissions`).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ActAsUser => "act_as_user",
            Permission::ReleaseCredentials => "release_credentials",
        }
    }

    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "act_as_user" => Some(Permission::ActAsUser),
            "release_credentials" => Some(Permission::ReleaseCredentials),
            _ => None,
        }
    }
}

/// `serviceAccounts/{handle}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountName(pub Handle);

impl ServiceAccountName {
    pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
        let handle = value.strip_prefix("serviceAccounts/").ok_or_else(|| {
            DomainError::invalid(field, "must look like serviceAccounts/{service_account}")
        })?;
        Handle::parse(field, handle).map(Self)
    }
}

impl fmt::Display for ServiceAccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "serviceAccounts/{}", self.0)
    }
}

/// The settable fields of a service account, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountFields {
    pub display_name: String,
    /// Sorted, each once.
    pub permissions: Vec<Permission>,
    /// Handles of the users it may act for, sorted, each once; empty means any user.
    pub act_for_users: Vec<Handle>,
    /// The client certificate subject its token is bound to, if any.
    pub client_certificate_subject: Option<String>,
}

impl ServiceAccountFields {
    /// Validates fields as they arrive under `prefix`; `permissions` are already known values
    /// (the API layer refuses unknown numbers, naming them).
    pub fn parse(
        prefix: &str,
        display_name: &str,
        mut permissions: Vec<Permission>,
        act_for_users: &[String],
        client_certificate_subject: &str,
    ) -> Result<Self, DomainError> {
        let mut violations = Violations::default();
        let display_name = violations.take(validate::line(
            &format!("{prefix}.display_name"),
            display_name,
            validate::MAX_DISPLAY_NAME_LEN,
            false,
        ));
        permissions.sort();
        permissions.dedup();
        let field = format!("{prefix}.act_for_users");
        if act_for_users.len() > MAX_ACT_FOR_USERS {
            violations.add(&field, format!("at most {MAX_ACT_FOR_USERS} users"));
        }
        let mut users = Vec::new();
        for (i, user) in act_for_users.iter().enumerate() {
            let field = format!("{field}[{i}]");
            match UserName::parse(&field, user) {
                Ok(name) if name.0.is_system() => {
                    violations.add(field, "the reserved user _system cannot be acted for")
                }
                Ok(name) => {
                    if let Some(handle) = violations.take(Handle::parse(&field, name.0.as_str())) {
                        users.push(handle);
                    }
                }
                Err(error) => {
                    violations.take::<()>(Err(error));
                }
            }
        }
        users.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        users.dedup();
        let subject_field = format!("{prefix}.client_certificate_subject");
        let subject = violations
            .take(validate::line(
                &subject_field,
                client_certificate_subject,
                MAX_SUBJECT_LEN,
                false,
            ))
            .filter(|text| !text.trim().is_empty())
            .and_then(|text| {
                violations.take(
                    CertificateBinding::parse(&text)
                        .map(|binding| binding.to_string())
                        .map_err(|why| DomainError::invalid(&subject_field, why)),
                )
            });
        violations.finish()?;
        Ok(Self {
            display_name: display_name.unwrap_or_default(),
            permissions,
            act_for_users: users,
            client_certificate_subject: subject,
        })
    }
}

/// A service account as stored.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub name: ServiceAccountName,
    pub fields: ServiceAccountFields,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl ServiceAccount {
    pub fn etag(&self) -> String {
        super::etag(self.revision, self.update_time)
    }
}

/// A service account as the edge found it from a token: enough to decide what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountPrincipal {
    pub id: i64,
    pub handle: Handle,
    pub permissions: Vec<Permission>,
    pub act_for_users: Vec<Handle>,
    pub client_certificate_subject: Option<String>,
}

impl ServiceAccountPrincipal {
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Whether this account may act for `user`, who `exists` or not. Every refusal about the
    /// user reads the same whether or not the user exists, so the act-as metadata cannot be
    /// used to learn which users there are.
    /// Whether acting for `user` depends on the user existing: the account has ACT_AS_USER and
    /// its list (if any) names them. Otherwise the refusal is the same for any such name.
    pub fn may_consider(&self, user: &UserKey) -> bool {
        self.has(Permission::ActAsUser)
            && !user.is_system()
            && (self.act_for_users.is_empty()
                || self
                    .act_for_users
                    .iter()
                    .any(|handle| handle.as_str() == user.as_str()))
    }

    pub fn may_act_for(&self, user: &UserKey, exists: bool) -> Result<(), DomainError> {
        if !self.has(Permission::ActAsUser) {
            return Err(DomainError::PermissionDenied {
                reason: PermissionReason::ActAsDenied,
                message: format!(
                    "serviceAccounts/{} has no ACT_AS_USER permission",
                    self.handle
                ),
            });
        }
        let listed = self.act_for_users.is_empty()
            || self
                .act_for_users
                .iter()
                .any(|handle| handle.as_str() == user.as_str());
        if exists && listed && !user.is_system() {
            Ok(())
        } else {
            Err(DomainError::PermissionDenied {
                reason: PermissionReason::ActAsDenied,
                message: format!(
                    "serviceAccounts/{} may not act for users/{user}",
                    self.handle
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(permissions: Vec<Permission>, users: &[&str]) -> ServiceAccountPrincipal {
        ServiceAccountPrincipal {
            id: 1,
            handle: Handle::parse("h", "gateway").unwrap(),
            permissions,
            act_for_users: users
                .iter()
                .map(|u| Handle::parse("h", u).unwrap())
                .collect(),
            client_certificate_subject: None,
        }
    }

    #[test]
    fn acting_needs_the_permission_and_a_listed_existing_user_with_one_message() {
        let alice = UserKey::parse("u", "alice").unwrap();
        let bob = UserKey::parse("u", "bob").unwrap();
        assert!(account(vec![], &[]).may_act_for(&alice, true).is_err());
        let any = account(vec![Permission::ActAsUser], &[]);
        assert!(any.may_act_for(&alice, true).is_ok());
        assert!(any.may_act_for(&UserKey::system(), true).is_err());
        let only_alice = account(vec![Permission::ActAsUser], &["alice"]);
        assert!(only_alice.may_act_for(&alice, true).is_ok());
        let outside = only_alice.may_act_for(&bob, true).unwrap_err().to_string();
        let missing = only_alice.may_act_for(&bob, false).unwrap_err().to_string();
        assert_eq!(outside, missing, "no enumeration of users");
        let missing_any = any.may_act_for(&bob, false).unwrap_err().to_string();
        assert_eq!(outside, missing_any);
    }

    #[test]
    fn fields_are_validated_sorted_and_deduplicated() {
        let fields = ServiceAccountFields::parse(
            "sa",
            "Gateway",
            vec![
                Permission::ReleaseCredentials,
                Permission::ActAsUser,
                Permission::ActAsUser,
            ],
            &["users/bob".into(), "users/alice".into(), "users/bob".into()],
            " CN=gateway ",
        )
        .unwrap();
        assert_eq!(
            fields.permissions,
            vec![Permission::ActAsUser, Permission::ReleaseCredentials]
        );
        let users: Vec<&str> = fields.act_for_users.iter().map(Handle::as_str).collect();
        assert_eq!(users, ["alice", "bob"]);
        assert_eq!(
            fields.client_certificate_subject.as_deref(),
            Some("CN=gateway")
        );
        let error = ServiceAccountFields::parse(
            "sa",
            "",
            vec![],
            &["alice".into(), "users/_system".into()],
            "",
        )
        .unwrap_err();
        let DomainError::InvalidArgument(violations) = error else {
            panic!("expected INVALID_ARGUMENT");
        };
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert_eq!(violations[0].field, "sa.act_for_users[0]");
    }
}
