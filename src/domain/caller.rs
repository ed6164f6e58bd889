//! Who is calling: the configured administrator, a user identified by their bearer token, or a
//! service account, on its own or acting for a user.
//!
//! A service account acting for a user *is* that user to every rule of the policy: the caller is
//! [`Caller::User`] with the user's id and handle, never an administrator
//! ([`UserPrincipal::is_admin`] false whatever the user's flag), and the account it came through
//! in [`UserPrincipal::via`], which only the audit trail, the logs and `ResolveCredential` read.
//! So no rule can forget to narrow an acting call: they all see an ordinary user.

use std::sync::Arc;

use super::{
    names::{Handle, UserKey},
    service_account::ServiceAccountPrincipal,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The administrator configured at start-up (`ADMIN_TOKEN`); has no namespace of its own.
    Admin,
    /// A user from the users table, or a service account acting for one (see `via`).
    User(UserPrincipal),
    /// A service account acting for itself: it owns nothing and may read only what every user
    /// may read, and its own record.
    ServiceAccount(Arc<ServiceAccountPrincipal>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPrincipal {
    /// Database id, for queries that join on it.
    pub id: i64,
    pub handle: Handle,
    /// Users flagged admin have every right the configured administrator has. Always false when
    /// a service account acts for the user: acting never grants administration.
    pub is_admin: bool,
    /// The service account acting for this user, if the call came through one.
    pub via: Option<Arc<ServiceAccountPrincipal>>,
}

impl UserPrincipal {
    /// The user as they call for themselves.
    pub fn new(id: i64, handle: Handle, is_admin: bool) -> Self {
        Self {
            id,
            handle,
            is_admin,
            via: None,
        }
    }

    /// The user as `account` acts for them: their rights, never an administrator's.
    pub fn acted_for_by(self, account: Arc<ServiceAccountPrincipal>) -> Self {
        Self {
            is_admin: false,
            via: Some(account),
            ..self
        }
    }
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Admin => true,
            Caller::User(user) => user.is_admin,
            Caller::ServiceAccount(_) => false,
        }
    }

    /// The caller's own namespace, if any (the configured administrator has none).
    pub fn namespace(&self) -> Option<UserKey> {
        match self {
            Caller::Admin | Caller::ServiceAccount(_) => None,
            Caller::User(user) => Some(UserKey::from(user.handle.clone())),
        }
    }

    /// Whether `owner` is the caller's own namespace.
    pub fn owns(&self, owner: &UserKey) -> bool {
        matches!(self, Caller::User(user) if user.handle.as_str() == owner.as_str())
    }

    /// A short label for logs, traces and per-caller fairness: the handle, `admin`, or the
    /// service account (with the user it acts for). Never a token.
    pub fn label(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::User(UserPrincipal {
                handle, via: None, ..
            }) => handle.to_string(),
            Caller::User(UserPrincipal {
                handle,
                via: Some(account),
                ..
            }) => format!("serviceAccounts/{} for {handle}", account.handle),
            Caller::ServiceAccount(account) => format!("serviceAccounts/{}", account.handle),
        }
    }

    /// Whether a service account makes this call for a user.
    pub fn is_acting(&self) -> bool {
        matches!(self, Caller::User(user) if user.via.is_some())
    }
}

/// What the authentication layer established about a request.
#[derive(Debug, Clone)]
pub enum Credential {
    /// The caller, looked up (or the configured administrator).
    Caller(Caller),
    /// A user token not looked up yet. Only the read paths listed in
    /// the method table (`grpc::methods`) marks resolved in their query get this: their store query resolves the token in the same
    /// statement, which saves a round trip and is exactly as fresh as a separate lookup.
    Token(UnresolvedToken),
}

/// The SHA-256 of a presented user token; redacted in `Debug`. Once the edge has checked it, it
/// also says whether the read cache had taken in every change made before this call arrived
/// (the store's freshness round), so that the handler's cached read need not wait for another.
#[derive(Clone)]
pub struct UnresolvedToken {
    hash: [u8; 32],
    checked_fresh: bool,
}

impl UnresolvedToken {
    pub fn new(hash: [u8; 32]) -> Self {
        Self {
            hash,
            checked_fresh: false,
        }
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The same token, checked after the read cache took in every change made before this call
    /// arrived (`fresh`), or without that (`!fresh`: the handler reads the database).
    pub fn checked(self, fresh: bool) -> Self {
        Self {
            checked_fresh: fresh,
            ..self
        }
    }

    /// Whether the token was checked with the read cache fresh for this call.
    pub fn checked_fresh(&self) -> bool {
        self.checked_fresh
    }
}

impl std::fmt::Debug for UnresolvedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnresolvedToken(<redacted>)")
    }
}
