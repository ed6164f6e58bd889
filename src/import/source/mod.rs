//! The dhamps-vdb database, read only: which of its two schemas it has (tern's `db_version` 3,
//! before its LLM-service refactor, or 4), and its rows in one shape per kind whichever schema
//! they come from. Everything is read in one `REPEATABLE READ READ ONLY` transaction, so the
//! import sees one consistent moment of the source and cannot change it; rows are streamed in
//! the order the import needs (valid handles first, so they win collisions), never loaded whole.
//!
//! The schemas are dhamps-vdb's `internal/database/migrations` 001 to 004.

use std::collections::BTreeSet;

use anyhow::{Context as _, bail};
use futures_util::{Stream, StreamExt as _};
use sqlx::{Connection as _, Executor as _, PgConnection};

mod rows;
mod schema;

pub use rows::{
    SourceDefinition, SourceInstance, SourceProject, SourceShare, SourceStandard, SourceUser,
};
pub use schema::SchemaVersion;

use rows::{
    DEFINITIONS_V4, INSTANCES_V3, INSTANCES_V4, PROJECTS_V3, PROJECTS_V4, SHARES_V3, SHARES_V4,
    STANDARDS, USERS_V3, USERS_V4,
};

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
