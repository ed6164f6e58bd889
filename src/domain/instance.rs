//! Instances: a user's configured service (the fields of a definition), its write-only API key,
//! and the roles through which others use it.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{
    DomainError,
    definition::ServiceSpec,
    names::{DefinitionName, InstanceName},
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

/// What an update of an instance changes: its service fields, its key, its release opt-in.
#[derive(Debug, Clone)]
pub struct InstanceChange {
    pub spec: super::definition::ServiceSpec,
    pub key: ApiKeyChange,
    pub allow_credential_release: bool,
    pub quota: Option<super::quota::Quota>,
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
    /// Whether ResolveCredential may release its key (its owner's opt-in; off by default).
    pub allow_credential_release: bool,
    /// The caller's role on it.
    pub access_role: Role,
    /// The budget over every caller, if any.
    pub quota: Option<super::quota::Quota>,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// What the last TestInstance found, if it ever ran.
    pub last_test: Option<InstanceTest>,
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

/// The outcome of an instance's last test, as recorded on the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTest {
    pub time: DateTime<Utc>,
    /// A gRPC code name: `OK` when the provider answered with a valid embedding.
    pub code: String,
    pub message: String,
    pub observed_dimensions: i32,
    pub latency: Duration,
}

impl InstanceTest {
    pub fn succeeded(&self) -> bool {
        self.code == "OK"
    }
}
