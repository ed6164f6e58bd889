//! Retention: deletes audit events and daily usage totals older than their settings, in small
//! batches, one replica at a time. Each batch is its own short transaction that first takes a
//! transaction-scoped advisory lock without waiting: a replica that finds it taken leaves the
//! sweep to the one holding it, and nothing is held between batches or after a crash.

use super::{Store, errors};
use crate::domain::DomainError;

/// The advisory lock key of the sweep (an arbitrary constant: "retention" in ASCII, folded).
const SWEEP_LOCK: i64 = 0x7265_7465_6e74;

/// A table with a retention setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    AuditEvents,
    UsageDaily,
}

impl Retained {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::AuditEvents => "audit_events",
            Self::UsageDaily => "usage_daily",
        }
    }

    /// Deletes at most `$2` rows older than `$1` days, oldest first (both walk an index from its
    /// start: the ids of the trail grow with time; the ledger's key starts with its day).
    fn statement(self) -> &'static str {
        match self {
            Self::AuditEvents => {
                "DELETE FROM audit_events WHERE id IN ( \
                 SELECT id FROM audit_events \
                 WHERE time < now() - make_interval(days => $1) ORDER BY id LIMIT $2)"
            }
            Self::UsageDaily => {
                "DELETE FROM usage_daily WHERE (day, instance, subject, caller) IN ( \
                 SELECT day, instance, subject, caller FROM usage_daily \
                 WHERE day < (now() AT TIME ZONE 'UTC')::date - $1 \
                 ORDER BY day, instance, subject, caller LIMIT $2)"
            }
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pruned {
    /// This many rows were deleted (fewer than the batch: nothing older is left).
    Rows(u64),
    /// Another replica is sweeping.
    Busy,
}

impl Store {
    /// Deletes one batch of `table`'s rows older than `days` days, at most `batch` rows.
    pub async fn prune(
        &self,
        table: Retained,
        days: u32,
        batch: u32,
    ) -> Result<Pruned, DomainError> {
        let mut tx = self.pool.begin().await.map_err(errors::db)?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(SWEEP_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(errors::db)?;
        if !locked {
            return Ok(Pruned::Busy);
        }
        let days = i32::try_from(days).unwrap_or(i32::MAX);
        let deleted = sqlx::query(table.statement())
            .bind(days)
            .bind(i64::from(batch))
            .execute(&mut *tx)
            .await
            .map_err(errors::db)?
            .rows_affected();
        tx.commit().await.map_err(errors::db)?;
        Ok(Pruned::Rows(deleted))
    }
}
