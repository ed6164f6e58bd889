//! The rows of a dhamps-vdb database in one shape per kind, whichever schema they come from,
//! and the statements that read them that way (one per kind and schema). `$1` of every
//! statement is the source's time zone.

use chrono::{DateTime, Utc};

/// A dhamps-vdb user.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceUser {
    pub handle: String,
    pub name: String,
    pub has_email: bool,
    /// The hex SHA-256 of the user's dhamps-vdb API key, as stored (`vdb_key`/`vdb_api_key`).
    pub key_digest: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// A dhamps-vdb API standard.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceStandard {
    pub handle: String,
    pub description: String,
    pub key_method: String,
    pub key_field: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// A dhamps-vdb definition (schema 4 only).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceDefinition {
    pub id: i32,
    pub handle: String,
    pub owner: String,
    pub endpoint: String,
    pub description: String,
    pub api_standard: String,
    pub model: String,
    pub dimensions: i32,
    pub context_limit: i32,
    pub is_public: bool,
    pub shared_with: i64,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// A dhamps-vdb instance (schema 4) or LLM service (schema 3).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceInstance {
    pub id: i32,
    pub handle: String,
    pub owner: String,
    pub endpoint: String,
    pub description: String,
    pub api_standard: String,
    pub model: String,
    pub dimensions: i32,
    pub context_limit: i32,
    pub definition_id: Option<i32>,
    /// Schema 4: AES-256-GCM under the dhamps-vdb `ENCRYPTION_KEY`.
    pub sealed_key: Option<Vec<u8>>,
    /// Schema 3: the key in plaintext (`''` means none).
    pub plain_key: Option<String>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// A grant of an instance to a user other than its owner.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceShare {
    pub instance_id: i32,
    pub grantee: String,
    pub role: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// A dhamps-vdb project.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceProject {
    pub id: i32,
    pub handle: String,
    pub owner: String,
    pub description: String,
    /// Schema 4: its instance; schema 3: the first LLM service it was linked to.
    pub instance_id: Option<i32>,
    /// Schema 3: how many more LLM services it was linked to (a project here has one).
    pub other_instances: i64,
    pub has_metadata_scheme: bool,
    pub public_read: bool,
    /// Users other than its owner that were members.
    pub members: i64,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

impl SourceUser {
    /// How the report and the audit trail name this row.
    pub fn identity(&self) -> String {
        format!("users/{}", self.handle)
    }
}

impl SourceStandard {
    /// How the report and the audit trail name this row.
    pub fn identity(&self) -> String {
        format!("api_standards/{}", self.handle)
    }
}

impl SourceDefinition {
    /// How the report and the audit trail name this row.
    pub fn identity(&self) -> String {
        format!("definitions/{} ({}/{})", self.id, self.owner, self.handle)
    }
}

impl SourceInstance {
    /// How the report and the audit trail name this row.
    pub fn identity(&self) -> String {
        format!("instances/{} ({}/{})", self.id, self.owner, self.handle)
    }
}

impl SourceShare {
    /// How the report and the audit trail name this row.
    pub fn identity(&self) -> String {
        format!(
            "instances/{}/shared_with/{}",
            self.instance_id, self.grantee
        )
    }
}

impl SourceProject {
    /// How the report and the audit trail name this row.
    pub fn identity(&self) -> String {
        format!("projects/{} ({}/{})", self.id, self.owner, self.handle)
    }
}

/// Sorts handles this registry accepts as they are before the others, so that they win.
macro_rules! valid_first {
    ($column:literal) => {
        concat!(
            "(",
            $column,
            " ~ '^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$') DESC, ",
            $column,
            " COLLATE \"C\""
        )
    };
}

/// `$1` is the source's time zone: its timestamps have none.
macro_rules! times {
    () => {
        "(created_at AT TIME ZONE $1::text) AS created, (updated_at AT TIME ZONE $1::text) AS updated"
    };
    ($alias:literal) => {
        concat!(
            "(", $alias, ".created_at AT TIME ZONE $1::text) AS created, (", $alias,
            ".updated_at AT TIME ZONE $1::text) AS updated"
        )
    };
}

pub(super) const USERS_V4: &str = concat!(
    "SELECT user_handle::text AS handle, coalesce(name, '') AS name, ",
    "coalesce(email, '') <> '' AS has_email, vdb_key::text AS key_digest, ",
    times!(),
    " FROM users ORDER BY ",
    valid_first!("user_handle")
);
pub(super) const USERS_V3: &str = concat!(
    "SELECT user_handle::text AS handle, coalesce(name, '') AS name, ",
    "coalesce(email, '') <> '' AS has_email, vdb_api_key::text AS key_digest, ",
    times!(),
    " FROM users ORDER BY ",
    valid_first!("user_handle")
);
pub(super) const STANDARDS: &str = concat!(
    "SELECT api_standard_handle::text AS handle, coalesce(description, '') AS description, ",
    "key_method::text AS key_method, coalesce(key_field, '')::text AS key_field, ",
    times!(),
    " FROM api_standards ORDER BY ",
    valid_first!("api_standard_handle")
);
pub(super) const DEFINITIONS_V4: &str = concat!(
    "SELECT d.definition_id AS id, d.definition_handle::text AS handle, d.owner::text AS owner, ",
    "d.endpoint, coalesce(d.description, '') AS description, d.api_standard::text AS api_standard, ",
    "d.model, d.dimensions, d.context_limit, d.is_public, ",
    "(SELECT count(*) FROM definitions_shared_with s WHERE s.definition_id = d.definition_id) AS shared_with, ",
    times!("d"),
    " FROM definitions d ORDER BY d.owner COLLATE \"C\", ",
    valid_first!("d.definition_handle"),
    ", d.definition_id"
);
pub(super) const INSTANCES_V4: &str = concat!(
    "SELECT instance_id AS id, instance_handle::text AS handle, owner::text AS owner, endpoint, ",
    "coalesce(description, '') AS description, api_standard::text AS api_standard, model, ",
    "dimensions, context_limit, definition_id, api_key_encrypted AS sealed_key, ",
    "NULL::text AS plain_key, ",
    times!(),
    " FROM instances ORDER BY owner COLLATE \"C\", ",
    valid_first!("instance_handle"),
    ", instance_id"
);
pub(super) const INSTANCES_V3: &str = concat!(
    "SELECT llm_service_id AS id, llm_service_handle::text AS handle, owner::text AS owner, ",
    "endpoint, coalesce(description, '') AS description, api_standard::text AS api_standard, ",
    "model, dimensions, 0 AS context_limit, NULL::integer AS definition_id, ",
    "NULL::bytea AS sealed_key, api_key AS plain_key, ",
    times!(),
    " FROM llm_services ORDER BY owner COLLATE \"C\", ",
    valid_first!("llm_service_handle"),
    ", llm_service_id"
);
pub(super) const SHARES_V4: &str = concat!(
    "SELECT s.instance_id, s.user_handle::text AS grantee, s.role::text AS role, ",
    times!("s"),
    " FROM instances_shared_with s ORDER BY s.instance_id, s.user_handle COLLATE \"C\""
);
// Before the refactor, the owner's own row in users_llm_services is ownership, not a share.
pub(super) const SHARES_V3: &str = concat!(
    "SELECT s.llm_service_id AS instance_id, s.user_handle::text AS grantee, s.role::text AS role, ",
    times!("s"),
    " FROM users_llm_services s JOIN llm_services l ON l.llm_service_id = s.llm_service_id ",
    "WHERE s.user_handle <> l.owner ORDER BY s.llm_service_id, s.user_handle COLLATE \"C\""
);
pub(super) const PROJECTS_V4: &str = concat!(
    "SELECT p.project_id AS id, p.project_handle::text AS handle, p.owner::text AS owner, ",
    "coalesce(p.description, '') AS description, p.instance_id, 0::bigint AS other_instances, ",
    "coalesce(p.metadata_scheme, '') <> '' AS has_metadata_scheme, ",
    "coalesce(p.public_read, false) AS public_read, ",
    "(SELECT count(*) FROM users_projects m WHERE m.project_id = p.project_id AND m.user_handle <> p.owner) AS members, ",
    times!("p"),
    " FROM projects p ORDER BY p.owner COLLATE \"C\", ",
    valid_first!("p.project_handle"),
    ", p.project_id"
);
// Before the refactor a project could link several LLM services; dhamps-vdb's own upgrade kept
// the first by link time, and so does this import (the others are reported).
pub(super) const PROJECTS_V3: &str = concat!(
    "SELECT p.project_id AS id, p.project_handle::text AS handle, p.owner::text AS owner, ",
    "coalesce(p.description, '') AS description, ",
    "(SELECT pl.llm_service_id FROM projects_llm_services pl WHERE pl.project_id = p.project_id ",
    "ORDER BY pl.created_at, pl.llm_service_id LIMIT 1) AS instance_id, ",
    "greatest((SELECT count(*) FROM projects_llm_services pl WHERE pl.project_id = p.project_id) - 1, 0) AS other_instances, ",
    "coalesce(p.metadata_scheme, '') <> '' AS has_metadata_scheme, ",
    "coalesce(p.public_read, false) AS public_read, ",
    "(SELECT count(*) FROM users_projects m WHERE m.project_id = p.project_id AND m.user_handle <> p.owner) AS members, ",
    times!("p"),
    " FROM projects p ORDER BY p.owner COLLATE \"C\", ",
    valid_first!("p.project_handle"),
    ", p.project_id"
);
