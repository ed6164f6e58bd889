//! Projects: a user's project bound to exactly one instance the user can use.

use chrono::{DateTime, Utc};

use super::names::{InstanceName, ProjectName};

/// A project as stored.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: ProjectName,
    pub description: String,
    pub instance: InstanceName,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Project {
    pub fn etag(&self) -> String {
        super::etag(self.revision, self.update_time)
    }
}
