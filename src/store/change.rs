//! The one shape of every write: begin a transaction, lock and read what changes, let the policy
//! and the etag decide, write, and record the audit event in the same transaction as the change,
//! then commit. [`Change`] holds the transaction and the audit event so that no write can commit
//! without its event or forget the etag check; each resource keeps only its own SQL (how to lock
//! its row, what to write). Dropping a `Change` without [`Change::commit`] rolls everything back,
//! so an early `?` leaves nothing half-written.
//!
//! Two writes of instances do not use it, for speed: creates are group-committed by
//! [`super::instances::create_batches`], and updates are optimistic (read without a lock, then
//! one statement that writes the row only if it did not move), in `instances/write.rs`; in both,
//! one statement writes the row and its event together.

use std::fmt::Display;

use sqlx::{Postgres, Transaction};

use super::{Store, audit, errors};
use crate::domain::{DomainError, Versioned, audit::Audit, check_etag};

/// An open write with its audit event still to record.
pub(super) struct Change<'a> {
    tx: Transaction<'static, Postgres>,
    audit: &'a Audit,
    resource: String,
}

impl<'a> Change<'a> {
    /// Begins a change of `resource`, to be recorded as `audit` says.
    pub(super) async fn begin(
        store: &Store,
        audit: &'a Audit,
        resource: impl Display,
    ) -> Result<Self, DomainError> {
        Ok(Self {
            tx: store.pool.begin().await.map_err(errors::db)?,
            audit,
            resource: resource.to_string(),
        })
    }

    /// The transaction, for the resource's own statements.
    pub(super) fn tx(&mut self) -> &mut Transaction<'static, Postgres> {
        &mut self.tx
    }

    /// Refuses the change if the request's etag (empty: unconditional) is not the locked row's.
    pub(super) fn check_etag(
        &self,
        expected: &str,
        current: &impl Versioned,
    ) -> Result<(), DomainError> {
        check_etag(expected, &current.etag(), &self.resource)
    }

    /// Records one more event of this change, about another resource that it changed too (a
    /// project detached by a revocation), in the same transaction.
    pub(super) async fn record_also(
        &mut self,
        resource: impl Display,
        detail: &str,
    ) -> Result<(), DomainError> {
        audit::record(&mut self.tx, self.audit, &resource.to_string(), detail).await
    }

    /// Records the audit event (with `detail`) and commits both with the change.
    pub(super) async fn commit(self, detail: &str) -> Result<(), DomainError> {
        self.commit_as("OK", detail).await
    }

    /// [`Change::commit`] for a change whose event has an outcome of its own (a gRPC code name):
    /// an instance's test records what the test found.
    pub(super) async fn commit_as(
        mut self,
        outcome: &str,
        detail: &str,
    ) -> Result<(), DomainError> {
        audit::record_outcome(&mut self.tx, self.audit, &self.resource, outcome, detail).await?;
        self.tx.commit().await.map_err(errors::db)
    }
}
