//! The dhamps-vdb database, read only: which of its two schemas it has (tern's `db_version` 3,
//! before its LLM-service refactor, or 4), and its rows in one shape per kind whichever schema
//! they come from. Everything is read in one `REPEATABLE READ READ ONLY` transaction, so the
//! import sees one consistent moment of the source and cannot change it; rows are streamed in
//! the order the import needs (valid handles first, so they win collisions), never loaded whole.
//!
//! The schemas are dhamps-vdb's `internal/database/migrations` 001 to 004.

use std::collections::BTreeSet;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt as _};
use sqlx::{Connection as _, Executor as _, PgConnection};

/// The schema versions this import reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaVersion {
    /// Before the refactor: `llm_services` with a plaintext `api_key`, `users_llm_services`
    /// (ownership and shares, roles owner/writer/reader), `projects_llm_services`.
    V3,
    /// The current one: `definitions`, `instances` with `api_key_encrypted`, `instances_shared_with`
    /// (roles owner/editor/reader), `projects.instance_id`.
    V4,
}

impl SchemaVersion {
    pub fn number(self) -> i32 {
        match self {
            Self::V3 => 3,
            Self::V4 => 4,
        }
    }

    /// The tables and columns the import reads, which the source must have.
    fn required_columns(self) -> &'static [(&'static str, &'static [&'static str])] {
        const COMMON_PROJECTS: &[&str] = &[
            "project_id",
            "project_handle",
            "owner",
            "description",
            "metadata_scheme",
            "public_read",
            "created_at",
            "updated_at",
        ];
        const STANDARDS: &[&str] = &[
            "api_standard_handle",
            "description",
            "key_method",
            "key_field",
            "created_at",
            "updated_at",
        ];
        const MEMBERS: &[&str] = &["user_handle", "project_id", "role"];
        match self {
            Self::V3 => &[
                (
                    "users",
                    &[
                        "user_handle",
                        "name",
                        "email",
                        "vdb_api_key",
                        "created_at",
                        "updated_at",
                    ],
                ),
                ("api_standards", STANDARDS),
                (
                    "llm_services",
                    &[
                        "llm_service_id",
                        "llm_service_handle",
                        "owner",
                        "endpoint",
                        "description",
                        "api_key",
                        "api_standard",
                        "model",
                        "dimensions",
                        "created_at",
                        "updated_at",
                    ],
                ),
                (
                    "users_llm_services",
                    &[
                        "user_handle",
                        "llm_service_id",
                        "role",
                        "created_at",
                        "updated_at",
                    ],
                ),
                ("projects", COMMON_PROJECTS),
                (
                    "projects_llm_services",
                    &["project_id", "llm_service_id", "created_at"],
                ),
                ("users_projects", MEMBERS),
            ],
            Self::V4 => &[
                (
                    "users",
                    &[
                        "user_handle",
                        "name",
                        "email",
                        "vdb_key",
                        "created_at",
                        "updated_at",
                    ],
                ),
                ("api_standards", STANDARDS),
                (
                    "definitions",
                    &[
                        "definition_id",
                        "definition_handle",
                        "owner",
                        "endpoint",
                        "description",
                        "api_standard",
                        "model",
                        "dimensions",
                        "context_limit",
                        "is_public",
                        "created_at",
                        "updated_at",
                    ],
                ),
                ("definitions_shared_with", &["user_handle", "definition_id"]),
                (
                    "instances",
                    &[
                        "instance_id",
                        "instance_handle",
                        "owner",
                        "endpoint",
                        "description",
                        "api_standard",
                        "model",
                        "dimensions",
                        "context_limit",
                        "definition_id",
                        "api_key_encrypted",
                        "created_at",
                        "updated_at",
                    ],
                ),
                (
                    "instances_shared_with",
                    &[
                        "user_handle",
                        "instance_id",
                        "role",
                        "created_at",
                        "updated_at",
                    ],
                ),
                (
                    "projects",
                    &[
                        "project_id",
                        "project_handle",
                        "owner",
                        "description",
                        "metadata_scheme",
                        "public_read",
                        "instance_id",
                        "created_at",
                        "updated_at",
                    ],
                ),
                ("users_projects", MEMBERS),
            ],
        }
    }
}

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

const USERS_V4: &str = concat!(
    "SELECT user_handle::text AS handle, coalesce(name, '') AS name, ",
    "coalesce(email, '') <> '' AS has_email, vdb_key::text AS key_digest, ",
    times!(),
    " FROM users ORDER BY ",
    valid_first!("user_handle")
);
const USERS_V3: &str = concat!(
    "SELECT user_handle::text AS handle, coalesce(name, '') AS name, ",
    "coalesce(email, '') <> '' AS has_email, vdb_api_key::text AS key_digest, ",
    times!(),
    " FROM users ORDER BY ",
    valid_first!("user_handle")
);
const STANDARDS: &str = concat!(
    "SELECT api_standard_handle::text AS handle, coalesce(description, '') AS description, ",
    "key_method::text AS key_method, coalesce(key_field, '')::text AS key_field, ",
    times!(),
    " FROM api_standards ORDER BY ",
    valid_first!("api_standard_handle")
);
const DEFINITIONS_V4: &str = concat!(
    "SELECT d.definition_id AS id, d.definition_handle::text AS handle, d.owner::text AS owner, ",
    "d.endpoint, coalesce(d.description, '') AS description, d.api_standard::text AS api_standard, ",
    "d.model, d.dimensions, d.context_limit, d.is_public, ",
    "(SELECT count(*) FROM definitions_shared_with s WHERE s.definition_id = d.definition_id) AS shared_with, ",
    times!("d"),
    " FROM definitions d ORDER BY d.owner COLLATE \"C\", ",
    valid_first!("d.definition_handle"),
    ", d.definition_id"
);
const INSTANCES_V4: &str = concat!(
    "SELECT instance_id AS id, instance_handle::text AS handle, owner::text AS owner, endpoint, ",
    "coalesce(description, '') AS description, api_standard::text AS api_standard, model, ",
    "dimensions, context_limit, definition_id, api_key_encrypted AS sealed_key, ",
    "NULL::text AS plain_key, ",
    times!(),
    " FROM instances ORDER BY owner COLLATE \"C\", ",
    valid_first!("instance_handle"),
    ", instance_id"
);
const INSTANCES_V3: &str = concat!(
    "SELECT llm_service_id AS id, llm_service_handle::text AS handle, owner::text AS owner, ",
    "endpoint, coalesce(description, '') AS description, api_standard::text AS api_standard, ",
    "model, dimensions, 0 AS context_limit, NULL::integer AS definition_id, ",
    "NULL::bytea AS sealed_key, api_key AS plain_key, ",
    times!(),
    " FROM llm_services ORDER BY owner COLLATE \"C\", ",
    valid_first!("llm_service_handle"),
    ", llm_service_id"
);
const SHARES_V4: &str = concat!(
    "SELECT s.instance_id, s.user_handle::text AS grantee, s.role::text AS role, ",
    times!("s"),
    " FROM instances_shared_with s ORDER BY s.instance_id, s.user_handle COLLATE \"C\""
);
// Before the refactor, the owner's own row in users_llm_services is ownership, not a share.
const SHARES_V3: &str = concat!(
    "SELECT s.llm_service_id AS instance_id, s.user_handle::text AS grantee, s.role::text AS role, ",
    times!("s"),
    " FROM users_llm_services s JOIN llm_services l ON l.llm_service_id = s.llm_service_id ",
    "WHERE s.user_handle <> l.owner ORDER BY s.llm_service_id, s.user_handle COLLATE \"C\""
);
const PROJECTS_V4: &str = concat!(
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
const PROJECTS_V3: &str = concat!(
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

/// The source database in its read-only transaction.
pub struct Source {
    /// In `REPEATABLE READ READ ONLY` from [`Source::open`] to [`Source::close`].
    connection: PgConnection,
    pub version: SchemaVersion,
    timezone: String,
}

impl Source {
    /// Connects, opens the read-only snapshot, checks the time zone and the schema.
    pub async fn open(url: &str, timezone: &str) -> anyhow::Result<Self> {
        let mut connection = PgConnection::connect(url).await.with_context(|| {
            format!(
                "cannot reach the dhamps-vdb database at {}",
                crate::store::database::server_address(url)
            )
        })?;
        connection
            .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .context("opening a read-only transaction on the dhamps-vdb database")?;
        sqlx::query("SELECT now() AT TIME ZONE $1::text")
            .bind(timezone)
            .execute(&mut connection)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "--source-timezone {timezone:?} is not a time zone PostgreSQL knows"
                )
            })?;
        let version = detect(&mut connection).await?;
        Ok(Self {
            connection,
            version,
            timezone: timezone.to_owned(),
        })
    }

    /// Ends the read-only transaction (nothing was written).
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.connection
            .execute("ROLLBACK")
            .await
            .context("closing the dhamps-vdb transaction")?;
        self.connection
            .close()
            .await
            .context("closing the dhamps-vdb connection")
    }

    pub fn users(&mut self) -> impl Stream<Item = anyhow::Result<SourceUser>> + '_ {
        let sql = match self.version {
            SchemaVersion::V3 => USERS_V3,
            SchemaVersion::V4 => USERS_V4,
        };
        self.rows(sql, "users")
    }

    pub fn standards(&mut self) -> impl Stream<Item = anyhow::Result<SourceStandard>> + '_ {
        self.rows(STANDARDS, "api_standards")
    }

    /// Schema 3 has no definitions: the stream is empty.
    pub fn definitions(&mut self) -> impl Stream<Item = anyhow::Result<SourceDefinition>> + '_ {
        let sql = match self.version {
            // No rows, so no row is ever decoded (one query shape keeps one stream type).
            SchemaVersion::V3 => "SELECT NULL::integer AS id WHERE false",
            SchemaVersion::V4 => DEFINITIONS_V4,
        };
        self.rows(sql, "definitions")
    }

    pub fn instances(&mut self) -> impl Stream<Item = anyhow::Result<SourceInstance>> + '_ {
        let sql = match self.version {
            SchemaVersion::V3 => INSTANCES_V3,
            SchemaVersion::V4 => INSTANCES_V4,
        };
        self.rows(sql, "instances")
    }

    pub fn shares(&mut self) -> impl Stream<Item = anyhow::Result<SourceShare>> + '_ {
        let sql = match self.version {
            SchemaVersion::V3 => SHARES_V3,
            SchemaVersion::V4 => SHARES_V4,
        };
        self.rows(sql, "shares")
    }

    pub fn projects(&mut self) -> impl Stream<Item = anyhow::Result<SourceProject>> + '_ {
        let sql = match self.version {
            SchemaVersion::V3 => PROJECTS_V3,
            SchemaVersion::V4 => PROJECTS_V4,
        };
        self.rows(sql, "projects")
    }

    fn rows<'s, R>(
        &'s mut self,
        sql: &'static str,
        what: &'static str,
    ) -> impl Stream<Item = anyhow::Result<R>> + 's
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 's,
    {
        sqlx::query_as::<_, R>(sql)
            .bind(self.timezone.clone())
            .fetch(&mut self.connection)
            .map(move |row| row.with_context(|| format!("reading the dhamps-vdb {what}")))
    }
}

/// Which schema the source has, by tern's `db_version` and the columns the import reads;
/// anything else is refused, naming what was found.
async fn detect(connection: &mut PgConnection) -> anyhow::Result<SchemaVersion> {
    let has_version_table: bool =
        sqlx::query_scalar("SELECT to_regclass('db_version') IS NOT NULL")
            .fetch_one(&mut *connection)
            .await
            .context("reading the dhamps-vdb schema")?;
    if !has_version_table {
        bail!("the source has no db_version table: it is not a dhamps-vdb database");
    }
    let versions: Vec<i32> = sqlx::query_scalar("SELECT version::integer FROM db_version")
        .fetch_all(&mut *connection)
        .await
        .context("reading the dhamps-vdb schema version")?;
    let version = match versions.as_slice() {
        [3] => SchemaVersion::V3,
        [4] => SchemaVersion::V4,
        [other] => bail!(
            "the dhamps-vdb database is at schema version {other}; this import reads versions 3 \
             and 4 (migrate dhamps-vdb to 4, or use a registry release that knows {other})"
        ),
        found => bail!(
            "the dhamps-vdb db_version table holds {} rows, not one: cannot tell its schema",
            found.len()
        ),
    };
    let present: BTreeSet<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema()",
    )
    .fetch_all(&mut *connection)
    .await
    .context("reading the dhamps-vdb columns")?
    .into_iter()
    .collect();
    let missing: Vec<String> = version
        .required_columns()
        .iter()
        .flat_map(|(table, columns)| columns.iter().map(move |column| (*table, *column)))
        .filter(|(table, column)| !present.contains(&((*table).to_owned(), (*column).to_owned())))
        .map(|(table, column)| format!("{table}.{column}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the dhamps-vdb database says schema version {} but lacks {}: refusing to guess",
            version.number(),
            missing.join(", ")
        );
    }
    Ok(version)
}
