//! Handles and resource names (AIP-122). Everything that arrives as a name is parsed here into
//! a typed value, so the rest of the code never splits strings.

use std::{fmt, marker::PhantomData};

use super::DomainError;

/// The reserved owner of operator-published definitions.
pub const SYSTEM_USER: &str = "_system";

const MAX_HANDLE_LEN: usize = 63;

/// A client-chosen id: a lowercase RFC-1034 label, `^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle(String);

impl Handle {
    pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
        if let Some(problem) = handle_problem(value) {
            return Err(DomainError::invalid(field, problem));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn handle_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("is required".to_owned());
    }
    if value.starts_with('_') {
        return Some("handles beginning with '_' are reserved".to_owned());
    }
    let bytes = value.as_bytes();
    let well_formed = bytes.len() <= MAX_HANDLE_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-';
    (!well_formed).then(|| {
        "must be 1 to 63 lowercase letters, digits or '-', start with a letter and not end with '-'"
            .to_owned()
    })
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `{user}` of `users/{user}`: a handle, or the reserved `_system`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserKey(String);

impl UserKey {
    pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
        if value == SYSTEM_USER {
            return Ok(Self::system());
        }
        Handle::parse(field, value).map(Self::from)
    }

    pub fn system() -> Self {
        Self(SYSTEM_USER.to_owned())
    }

    pub fn is_system(&self) -> bool {
        self.0 == SYSTEM_USER
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Handle> for UserKey {
    fn from(handle: Handle) -> Self {
        Self(handle.0)
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `users/{user}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(pub UserKey);

impl UserName {
    pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
        let user = value
            .strip_prefix("users/")
            .ok_or_else(|| DomainError::invalid(field, "must look like users/{user}"))?;
        UserKey::parse(field, user).map(Self)
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "users/{}", self.0)
    }
}

/// A kind of resource that lives in a user's namespace, `users/{user}/{collection}/{handle}`.
pub trait Collection {
    /// The collection segment of the name, e.g. `definitions`.
    const COLLECTION: &'static str;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definitions;
impl Collection for Definitions {
    const COLLECTION: &'static str = "definitions";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instances;
impl Collection for Instances {
    const COLLECTION: &'static str = "instances";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projects;
impl Collection for Projects {
    const COLLECTION: &'static str = "projects";
}

/// `users/{owner}/{collection}/{handle}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedName<C> {
    pub owner: UserKey,
    pub handle: Handle,
    collection: PhantomData<C>,
}

pub type DefinitionName = OwnedName<Definitions>;
pub type InstanceName = OwnedName<Instances>;
pub type ProjectName = OwnedName<Projects>;

impl<C: Collection> OwnedName<C> {
    pub fn new(owner: UserKey, handle: Handle) -> Self {
        Self {
            owner,
            handle,
            collection: PhantomData,
        }
    }

    /// Parses the full name only.
    pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
        let shape = || {
            DomainError::invalid(
                field,
                format!("must look like users/{{user}}/{}/{{id}}", C::COLLECTION),
            )
        };
        let mut parts = value.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("users"), Some(owner), Some(collection), Some(handle), None)
                if collection == C::COLLECTION =>
            {
                Ok(Self::new(
                    UserKey::parse(field, owner)?,
                    Handle::parse(field, handle)?,
                ))
            }
            _ => Err(shape()),
        }
    }

    /// Parses a reference inside a request: the full name, `{owner}/{handle}`, or a bare
    /// `{handle}` meaning one of `caller`'s own (refused when the caller has no namespace).
    pub fn parse_reference(
        field: &str,
        value: &str,
        caller: Option<&UserKey>,
    ) -> Result<Self, DomainError> {
        if value.starts_with("users/") {
            return Self::parse(field, value);
        }
        match value.split_once('/') {
            Some((owner, handle)) => Ok(Self::new(
                UserKey::parse(field, owner)?,
                Handle::parse(field, handle)?,
            )),
            None => {
                let owner = caller.ok_or_else(|| {
                    DomainError::invalid(
                        field,
                        "a bare handle needs a caller with a namespace; give the full name",
                    )
                })?;
                Ok(Self::new(owner.clone(), Handle::parse(field, value)?))
            }
        }
    }
}

impl<C: Collection> fmt::Display for OwnedName<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "users/{}/{}/{}", self.owner, C::COLLECTION, self.handle)
    }
}

/// `users/{owner}/instances/{instance}/shares/{grantee}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareName {
    pub instance: InstanceName,
    pub grantee: Handle,
}

impl ShareName {
    pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
        let (instance, grantee) = value.rsplit_once("/shares/").ok_or_else(|| {
            DomainError::invalid(
                field,
                "must look like users/{user}/instances/{instance}/shares/{grantee}",
            )
        })?;
        Ok(Self {
            instance: InstanceName::parse(field, instance)?,
            grantee: Handle::parse(field, grantee)?,
        })
    }
}

impl fmt::Display for ShareName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/shares/{}", self.instance, self.grantee)
    }
}

/// `apiStandards/{standard}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiStandardName(pub Handle);

impl ApiStandardName {
    pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
        let handle = value
            .strip_prefix("apiStandards/")
            .ok_or_else(|| DomainError::invalid(field, "must look like apiStandards/{standard}"))?;
        Handle::parse(field, handle).map(Self)
    }

    /// A reference inside a request: the full name or the bare handle.
    pub fn parse_reference(field: &str, value: &str) -> Result<Self, DomainError> {
        if value.contains('/') {
            Self::parse(field, value)
        } else {
            Handle::parse(field, value).map(Self)
        }
    }
}

impl fmt::Display for ApiStandardName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "apiStandards/{}", self.0)
    }
}

/// The name a Create request asks for, from its raw fields (`parent`, the id field's name and
/// its value), before any validation: it labels refused calls in the audit trail, so it must be
/// built even from malformed input. An empty id names the parent; an unknown id field names the
/// parent too.
pub fn requested_child(parent: &str, id_field: &str, id: &str) -> String {
    if id.is_empty() {
        return parent.to_owned();
    }
    match id_field {
        "user_id" => format!("users/{id}"),
        "api_standard_id" => format!("apiStandards/{id}"),
        "definition_id" => format!("{parent}/{}/{id}", Definitions::COLLECTION),
        "instance_id" => format!("{parent}/{}/{id}", Instances::COLLECTION),
        "project_id" => format!("{parent}/{}/{id}", Projects::COLLECTION),
        _ => parent.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_follow_rfc_1034_labels() {
        for good in ["a", "openai-small", "x1", &"a".repeat(63)] {
            assert!(Handle::parse("f", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "1a",
            "a_b",
            "_system",
            "a.b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(Handle::parse("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_round_trip_and_references_resolve() {
        let full = DefinitionName::parse("name", "users/_system/definitions/openai-small").unwrap();
        assert_eq!(full.to_string(), "users/_system/definitions/openai-small");
        assert!(full.owner.is_system());
        let me = UserKey::parse("f", "alice").unwrap();
        let bare = DefinitionName::parse_reference("f", "mine", Some(&me)).unwrap();
        assert_eq!(bare.to_string(), "users/alice/definitions/mine");
        let pair = DefinitionName::parse_reference("f", "_system/openai-large", Some(&me)).unwrap();
        assert_eq!(pair.to_string(), "users/_system/definitions/openai-large");
        assert!(DefinitionName::parse("f", "users/alice/instances/x").is_err());
        assert!(DefinitionName::parse("f", "users/alice/definitions/x/y").is_err());
        assert!(UserName::parse("f", "users/_other").is_err());
        let share = ShareName::parse("f", "users/alice/instances/x/shares/bob").unwrap();
        assert_eq!(share.to_string(), "users/alice/instances/x/shares/bob");
        assert!(ShareName::parse("f", "users/alice/instances/x/shares/_system").is_err());
        assert!(ShareName::parse("f", "users/alice/instances/x").is_err());
    }
}
