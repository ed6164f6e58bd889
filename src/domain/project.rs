//! Projects: a user's project bound to exactly one instance the user can use, or detached when
//! that instance was revoked from under it (deleted, unshared or its owner deleted, with `force`).

use chrono::{DateTime, Utc};

use super::names::{InstanceName, ProjectName};

/// A project as stored.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: ProjectName,
    pub description: String,
    /// `None` while detached.
    pub instance: Option<InstanceName>,
    /// Why and when the project lost its instance; `None` while bound.
    pub detached: Option<Detachment>,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Project {
    pub fn etag(&self) -> String {
        super::etag(self.revision, self.update_time)
    }
}

/// Why and when a project was detached from its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detachment {
    pub reason: String,
    pub time: DateTime<Utc>,
}

/// What GetProjectInstance finds behind a project the caller may see.
#[derive(Debug, Clone)]
pub enum ProjectBinding<I> {
    /// Bound; the instance as the caller sees it (`None` would mean the owner cannot see it,
    /// which revocation never leaves behind).
    Bound(Option<I>),
    /// Its instance was revoked; the owner must bind it again.
    Detached(Detachment),
}
