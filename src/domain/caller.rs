//! Who is calling: the configured administrator, or a user identified by their bearer token.

use super::names::{Handle, UserKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The administrator configured at start-up (`ADMIN_TOKEN`); has no namespace of its own.
    Admin,
    /// A user from the users table.
    User(UserPrincipal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPrincipal {
    /// Database id, for queries that join on it.
    pub id: i64,
    pub handle: Handle,
    /// Users flagged admin have every right the configured administrator has.
    pub is_admin: bool,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Admin => true,
            Caller::User(user) => user.is_admin,
        }
    }

    /// The caller's own namespace, if any (the configured administrator has none).
    pub fn namespace(&self) -> Option<UserKey> {
        match self {
            Caller::Admin => None,
            Caller::User(user) => Some(UserKey::from(user.handle.clone())),
        }
    }

    /// Whether `owner` is the caller's own namespace.
    pub fn owns(&self, owner: &UserKey) -> bool {
        matches!(self, Caller::User(user) if user.handle.as_str() == owner.as_str())
    }

    /// A short label for logs and traces: the handle, or `admin`. Never a token.
    pub fn label(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::User(user) => user.handle.to_string(),
        }
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
/// also carries the read cache's epoch read for this call, so that the handler's cached read
/// need not read the epoch a second time.
#[derive(Clone)]
pub struct UnresolvedToken {
    hash: [u8; 32],
    fresh_epoch: Option<i64>,
}

impl UnresolvedToken {
    pub fn new(hash: [u8; 32]) -> Self {
        Self {
            hash,
            fresh_epoch: None,
        }
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The same token, checked at `epoch` (read after the call arrived).
    pub fn checked_at(self, epoch: i64) -> Self {
        Self {
            fresh_epoch: Some(epoch),
            ..self
        }
    }

    /// The epoch the token was checked at in this call, if it was.
    pub fn fresh_epoch(&self) -> Option<i64> {
        self.fresh_epoch
    }
}

impl std::fmt::Debug for UnresolvedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnresolvedToken(<redacted>)")
    }
}
