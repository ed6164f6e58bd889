//! The audit trail in the database. Successful mutations record their event inside their own
//! transaction (so a rolled-back change leaves none, a committed one always one); refusals are
//! recorded on their own by the request layer.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder, Transaction};

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

/// `SELECT ... WHERE id < before` with the filters in use and `narrow`'s own condition, newest
/// first, at most `limit`.
fn push_filtered(
    query: &mut QueryBuilder<Postgres>,
    filter: &AuditFilter,
    before: i64,
    limit: i64,
    narrow: impl FnOnce(&mut QueryBuilder<Postgres>),
) {
    query
        .push(
            "SELECT id, time, caller, subject, method, resource, outcome, detail \
             FROM audit_events WHERE id < ",
        )
        .push_bind(before);
    if let Some(resource) = &filter.resource {
        query
            .push(" AND (resource = ")
            .push_bind(resource.clone())
            .push(" OR resource LIKE ")
            .push_bind(like_prefix(resource))
            .push(")");
    }
    if let Some(caller) = &filter.caller {
        query.push(" AND caller = ").push_bind(caller.clone());
    }
    if let Some(subject) = &filter.subject {
        query.push(" AND subject = ").push_bind(subject.clone());
    }
    narrow(query);
    query.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
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
    /// [`usage_events`](super::usage_events). Returns once the event is committed. Its quota
    /// settlement, if any, is queued for the settler (see [`super::quotas`]).
    pub async fn record_use(&self, mut event: UsageEvent) -> Result<(), DomainError> {
        self.settle_quota(std::mem::take(&mut event.settlement));
        self.usage.record(event).await
    }

    /// Events newest first, before the cursor (an event id). The statement names only the
    /// filters in use (one shape per combination, each planned for its own indexes); a user's
    /// view, their namespace's events *or* those done on their behalf, is the union of two
    /// index-ordered scans, so a page costs the same at any size of the trail.
    pub async fn list_audit_events(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, DomainError> {
        let before = cursor::start_after::<RowId>(page)?.map_or(i64::MAX, |RowId(id)| id);
        let limit = cursor::fetch_limit(page);
        let mut query = QueryBuilder::<Postgres>::new("");
        match &filter.visible_to {
            Some(Visibility::User { handle }) => {
                query.push("SELECT * FROM ((");
                push_filtered(&mut query, filter, before, limit, |q| {
                    q.push(" AND resource_owner = ").push_bind(handle.clone());
                });
                query.push(") UNION (");
                push_filtered(&mut query, filter, before, limit, |q| {
                    q.push(" AND subject = ")
                        .push_bind(format!("users/{handle}"));
                });
                query.push(")) e ORDER BY id DESC LIMIT ").push_bind(limit);
            }
            Some(Visibility::ServiceAccount { label }) => {
                push_filtered(&mut query, filter, before, limit, |q| {
                    q.push(" AND caller = ").push_bind(label.clone());
                });
            }
            None => push_filtered(&mut query, filter, before, limit, |_| {}),
        }
        let rows = query
            .build_query_as::<EventRow>()
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
