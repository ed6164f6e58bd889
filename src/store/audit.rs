//! The audit trail in the database. Successful mutations record their event inside their own
//! transaction (so a rolled-back change leaves none, a committed one always one); refusals are
//! recorded on their own by the request layer.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::{
    Store, UsageEvent,
    cursor::{self, RowId},
    errors,
};
use crate::domain::{
    DomainError,
    audit::{Audit, AuditEvent, resource_owner},
    pagination::{Page, PageRequest},
};

/// Records the successful change `audit` made to `resource`, in the change's transaction.
pub(super) async fn record(
    tx: &mut Transaction<'_, Postgres>,
    audit: &Audit,
    resource: &str,
    detail: &str,
) -> Result<(), DomainError> {
    record_outcome(tx, audit, resource, "OK", detail).await
}

/// Records a call's event with its own outcome (a gRPC code name), in a transaction of the
/// caller's.
pub(super) async fn record_outcome(
    tx: &mut Transaction<'_, Postgres>,
    audit: &Audit,
    resource: &str,
    outcome: &str,
    detail: &str,
) -> Result<(), DomainError> {
    insert(
        &mut **tx,
        &audit.caller,
        audit.subject.as_deref(),
        audit.method,
        resource,
        outcome,
        detail,
    )
    .await
}

async fn insert<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    caller: &str,
    subject: Option<&str>,
    method: &str,
    resource: &str,
    outcome: &str,
    detail: &str,
) -> Result<(), DomainError> {
    sqlx::query(
        "INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail, subject) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(caller)
    .bind(method)
    .bind(resource)
    .bind(resource_owner(resource))
    .bind(outcome)
    .bind(detail)
    .bind(subject)
    .execute(executor)
    .await
    .map_err(errors::db)?;
    Ok(())
}

/// Which events a listing returns.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// This resource or anything under it.
    pub resource: Option<String>,
    pub caller: Option<String>,
    /// Only events done for this user (`users/{u}`) by a service account.
    pub subject: Option<String>,
    /// What a caller who is not an administrator may read (forced for them).
    pub visible_to: Option<Visibility>,
}

/// The events a caller who is not an administrator may read.
#[derive(Debug, Clone)]
pub enum Visibility {
    /// A user: events of resources in their namespace, and events done on their behalf.
    User { handle: String },
    /// A service account on its own: the events it caused.
    ServiceAccount { label: String },
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    time: DateTime<Utc>,
    caller: String,
    subject: Option<String>,
    method: String,
    resource: String,
    outcome: String,
    detail: String,
}

/// Escapes LIKE's wildcards (handles contain `_`).
fn like_prefix(prefix: &str) -> String {
    let escaped = prefix
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("{escaped}/%")
}

impl Store {
    /// Records a refused mutation (its own transaction: there is no change to join).
    pub async fn record_refusal(
        &self,
        caller: &str,
        subject: Option<&str>,
        method: &str,
        resource: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<(), DomainError> {
        insert(
            &self.pool, caller, subject, method, resource, outcome, detail,
        )
        .await
    }

    /// Records one use of an instance (Embed, TestInstance) with its counts and outcome, on its
    /// own (a use changes nothing to join), group-committed with other uses: see
    /// [`usage_events`](super::usage_events). Returns once the event is committed.
    pub async fn record_use(&self, event: UsageEvent) -> Result<(), DomainError> {
        self.usage.record(event).await
    }

    /// Events newest first, before the cursor (an event id).
    pub async fn list_audit_events(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, DomainError> {
        let before = cursor::start_after::<RowId>(page)?.map_or(i64::MAX, |RowId(id)| id);
        let (owner, on_behalf_of, only_caller) = match &filter.visible_to {
            None => (None, None, None),
            Some(Visibility::User { handle }) => {
                (Some(handle.clone()), Some(format!("users/{handle}")), None)
            }
            Some(Visibility::ServiceAccount { label }) => (None, None, Some(label.clone())),
        };
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT id, time, caller, subject, method, resource, outcome, detail FROM audit_events \
             WHERE id < $1 \
               AND ($2::text IS NULL OR resource = $2 OR resource LIKE $3) \
               AND ($4::text IS NULL OR caller = $4) \
               AND ($5::text IS NULL OR subject = $5) \
               AND ($6::text IS NULL OR resource_owner = $6 OR subject = $7) \
               AND ($8::text IS NULL OR caller = $8) \
             ORDER BY id DESC LIMIT $9",
        )
        .bind(before)
        .bind(filter.resource.as_deref())
        .bind(filter.resource.as_deref().map(like_prefix))
        .bind(filter.caller.as_deref())
        .bind(filter.subject.as_deref())
        .bind(owner)
        .bind(on_behalf_of)
        .bind(only_caller)
        .bind(cursor::fetch_limit(page))
        .fetch_all(&self.pool)
        .await
        .map_err(errors::db)?;
        let found = rows
            .into_iter()
            .map(|row| AuditEvent {
                id: row.id,
                time: row.time,
                caller: row.caller,
                subject: row.subject,
                method: row.method,
                resource: row.resource,
                outcome: row.outcome,
                detail: row.detail,
            })
            .collect();
        Ok(cursor::page_of(found, page, |event: &AuditEvent| {
            RowId(event.id)
        }))
    }
}
