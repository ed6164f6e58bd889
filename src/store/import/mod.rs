//! The registry side of an import from another system (`import-dhamps-vdb`): one transaction
//! that holds the whole import, the ledger of what each source row became (so a second run
//! imports nothing twice), and batched writes of users, API standards, definitions, instances,
//! shares and projects with their audit events. Everything is written in batches with `unnest`,
//! so a hundred thousand rows take a few hundred statements.
//!
//! The caller (`crate::import`) decides what to write; this module only knows the tables.

mod people;
mod services;
mod statistics;

pub use people::{NewProject, NewShare, NewUser, ProjectUpdate};
pub use services::{NewDefinition, NewInstance, NewStandard, ServiceFields, ServiceUpdate};

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::Store;
use crate::domain::audit::resource_owner;
use statistics::Table;

/// The kinds of source rows the ledger knows, in the order an import writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LedgerKind {
    User,
    ApiStandard,
    Definition,
    Instance,
    Share,
    Project,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::ApiStandard => "api_standard",
            Self::Definition => "definition",
            Self::Instance => "instance",
            Self::Share => "share",
            Self::Project => "project",
        }
    }

    /// The ledger rows of this kind, each with the version its registry object has now (NULL
    /// when that object is gone): a revision, or a share's role.
    fn lookup_sql(self) -> &'static str {
        macro_rules! lookup {
            ($join:literal, $version:literal) => {
                concat!(
                    "SELECT l.source_key, l.target_id, l.target_name, \
                     l.source_fingerprint, l.target_version, ",
                    $version,
                    " AS current_version FROM import_ledger l ",
                    $join,
                    " WHERE l.source = $1 AND l.kind = $2 AND l.source_key = ANY($3)"
                )
            };
        }
        match self {
            Self::User => lookup!(
                "LEFT JOIN users t ON t.id = l.target_id",
                "t.revision::text"
            ),
            Self::ApiStandard => lookup!(
                "LEFT JOIN api_standards t ON t.id = l.target_id",
                "t.revision::text"
            ),
            Self::Definition => lookup!(
                "LEFT JOIN definitions t ON t.id = l.target_id",
                "t.revision::text"
            ),
            Self::Instance => lookup!(
                "LEFT JOIN instances t ON t.id = l.target_id",
                "t.revision::text"
            ),
            Self::Share => lookup!(
                "LEFT JOIN shares t ON t.instance_id = l.target_id AND t.grantee_id = l.target_user_id",
                "t.role"
            ),
            Self::Project => lookup!(
                "LEFT JOIN projects t ON t.id = l.target_id",
                "t.revision::text"
            ),
        }
    }
}

/// What an earlier import made of a source row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerEntry {
    pub source_key: String,
    pub target_id: i64,
    pub target_name: String,
    pub source_fingerprint: Vec<u8>,
    /// The registry object's version as that import left it.
    pub target_version: String,
    /// Its version now; `None` when it has been deleted since.
    pub current_version: Option<String>,
}

/// A ledger row to write (insert or replace).
#[derive(Debug, Clone)]
pub struct LedgerRecord {
    pub source_key: String,
    pub target_id: i64,
    pub target_user_id: Option<i64>,
    pub target_name: String,
    pub fingerprint: Vec<u8>,
    pub target_version: String,
}

/// One audit event of the import: the object's full name and what was done.
#[derive(Debug, Clone)]
pub struct ImportEvent {
    pub resource: String,
    pub detail: String,
}

/// The import's transaction on the registry's database.
pub struct ImportTx {
    tx: Transaction<'static, Postgres>,
    /// The system imported from, as the ledger names it.
    source: &'static str,
    /// The operator command, as the audit trail names the caller and method.
    command: &'static str,
    /// Rows written per table, for [`statistics`].
    growth: statistics::Growth,
}

impl Store {
    /// Begins the one transaction an import runs in.
    pub async fn begin_import(
        &self,
        source: &'static str,
        command: &'static str,
    ) -> anyhow::Result<ImportTx> {
        let tx = self
            .pool
            .begin()
            .await
            .context("beginning the registry's transaction")?;
        Ok(ImportTx {
            tx,
            source,
            command,
            growth: statistics::Growth::default(),
        })
    }
}

impl ImportTx {
    /// Makes the import visible (or, for a dry run, [`Self::rollback`]).
    pub async fn commit(self) -> anyhow::Result<()> {
        self.tx.commit().await.context("committing the import")
    }

    pub async fn rollback(self) -> anyhow::Result<()> {
        self.tx.rollback().await.context("rolling the import back")
    }

    /// The ledger rows of `kind` for these source keys.
    pub async fn ledger(
        &mut self,
        kind: LedgerKind,
        keys: &[String],
    ) -> anyhow::Result<HashMap<String, LedgerEntry>> {
        let rows: Vec<LedgerEntry> = sqlx::query_as(kind.lookup_sql())
            .bind(self.source)
            .bind(kind.as_str())
            .bind(keys)
            .fetch_all(&mut *self.tx)
            .await
            .with_context(|| format!("reading the import ledger ({})", kind.as_str()))?;
        Ok(rows
            .into_iter()
            .map(|row| (row.source_key.clone(), row))
            .collect())
    }

    /// Writes (or replaces) ledger rows of `kind`.
    pub async fn record(&mut self, kind: LedgerKind, rows: &[LedgerRecord]) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = rows.iter().map(|r| r.source_key.as_str()).collect();
        let ids: Vec<i64> = rows.iter().map(|r| r.target_id).collect();
        let user_ids: Vec<Option<i64>> = rows.iter().map(|r| r.target_user_id).collect();
        let names: Vec<&str> = rows.iter().map(|r| r.target_name.as_str()).collect();
        let fingerprints: Vec<&[u8]> = rows.iter().map(|r| r.fingerprint.as_slice()).collect();
        let versions: Vec<&str> = rows.iter().map(|r| r.target_version.as_str()).collect();
        sqlx::query(
            "INSERT INTO import_ledger (source, kind, source_key, target_id, target_user_id, \
                 target_name, source_fingerprint, target_version) \
             SELECT $1, $2, * FROM unnest($3::text[], $4::bigint[], $5::bigint[], $6::text[], \
                 $7::bytea[], $8::text[]) \
             ON CONFLICT (source, kind, source_key) DO UPDATE SET \
                 target_id = EXCLUDED.target_id, target_user_id = EXCLUDED.target_user_id, \
                 target_name = EXCLUDED.target_name, \
                 source_fingerprint = EXCLUDED.source_fingerprint, \
                 target_version = EXCLUDED.target_version, import_time = now()",
        )
        .bind(self.source)
        .bind(kind.as_str())
        .bind(keys)
        .bind(ids)
        .bind(user_ids)
        .bind(names)
        .bind(fingerprints)
        .bind(versions)
        .execute(&mut *self.tx)
        .await
        .with_context(|| format!("writing the import ledger ({})", kind.as_str()))?;
        self.wrote(statistics::Table::Ledger, rows.len()).await
    }

    /// Records one audit event per imported or updated object, caller and method the command.
    pub async fn audit(&mut self, events: &[ImportEvent]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let resources: Vec<&str> = events.iter().map(|e| e.resource.as_str()).collect();
        let owners: Vec<Option<&str>> =
            events.iter().map(|e| resource_owner(&e.resource)).collect();
        let details: Vec<&str> = events.iter().map(|e| e.detail.as_str()).collect();
        sqlx::query(
            "INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail) \
             SELECT $1, $1, r, o, 'OK', d \
             FROM unnest($2::text[], $3::text[], $4::text[]) AS x(r, o, d)",
        )
        .bind(self.command)
        .bind(resources)
        .bind(owners)
        .bind(details)
        .execute(&mut *self.tx)
        .await
        .context("writing the audit trail")?;
        Ok(())
    }

    /// Which of these (owner, handle) pairs are taken in `table`; the owner is ignored (give 0)
    /// for users and API standards, whose handles are global.
    pub async fn taken_handles(
        &mut self,
        table: HandleTable,
        pairs: &[(i64, String)],
    ) -> anyhow::Result<HashSet<(i64, String)>> {
        let sql = match table {
            HandleTable::Users => {
                "SELECT x.o, x.h FROM unnest($1::bigint[], $2::text[]) AS x(o, h) \
                 WHERE EXISTS (SELECT 1 FROM users WHERE handle = x.h)"
            }
            HandleTable::ApiStandards => {
                "SELECT x.o, x.h FROM unnest($1::bigint[], $2::text[]) AS x(o, h) \
                 WHERE EXISTS (SELECT 1 FROM api_standards WHERE handle = x.h)"
            }
            HandleTable::Definitions => {
                "SELECT x.o, x.h FROM unnest($1::bigint[], $2::text[]) AS x(o, h) \
                 WHERE EXISTS (SELECT 1 FROM definitions WHERE owner_id = x.o AND handle = x.h)"
            }
            HandleTable::Instances => {
                "SELECT x.o, x.h FROM unnest($1::bigint[], $2::text[]) AS x(o, h) \
                 WHERE EXISTS (SELECT 1 FROM instances WHERE owner_id = x.o AND handle = x.h)"
            }
            HandleTable::Projects => {
                "SELECT x.o, x.h FROM unnest($1::bigint[], $2::text[]) AS x(o, h) \
                 WHERE EXISTS (SELECT 1 FROM projects WHERE owner_id = x.o AND handle = x.h)"
            }
        };
        let rows: Vec<(i64, String)> = sqlx::query_as(sql)
            .bind(pairs.iter().map(|p| p.0).collect::<Vec<_>>())
            .bind(pairs.iter().map(|p| p.1.as_str()).collect::<Vec<_>>())
            .fetch_all(&mut *self.tx)
            .await
            .context("reading taken handles")?;
        Ok(rows.into_iter().collect())
    }

    /// The ids of users by handle (the reserved `_system` included).
    pub async fn user_ids(&mut self, handles: &[String]) -> anyhow::Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT handle, id FROM users WHERE handle = ANY($1)")
                .bind(handles)
                .fetch_all(&mut *self.tx)
                .await
                .context("reading users")?;
        Ok(rows.into_iter().collect())
    }
}

/// The tables whose handles an import allocates: unique overall (users, API standards) or
/// within an owner (the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandleTable {
    Users,
    ApiStandards,
    Definitions,
    Instances,
    Projects,
}

/// Create and update times as the source had them.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}
