//! Usage events (every Embed and TestInstance that reached an instance) written together.
//!
//! Each call waits until its event is committed before it answers, so an answered call is on
//! the record. But one insert and one commit per call would make the audit trail the busiest
//! part of Embed, so one task writes whatever events are waiting as one multi-row INSERT (group
//! commit): under load a commit carries many events, alone it carries one. The task's
//! connections commit without waiting for the WAL flush (`synchronous_commit = off`): an event
//! survives a crash of this process, and only a crash of PostgreSQL itself within a fraction of
//! a second (3 × `wal_writer_delay` at most) could lose it. Changes and their events stay fully
//! synchronous in their own transactions.

use std::sync::{Arc, OnceLock};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::errors;
use crate::domain::{DomainError, audit::resource_owner};

/// Most events in one INSERT.
const MAX_BATCH: usize = 512;
/// Events waiting for the writer; beyond this, callers wait for room (never dropped).
const QUEUE: usize = 4096;

/// One event, as `audit_events` stores it.
#[derive(Debug)]
pub struct UsageEvent {
    pub caller: String,
    /// The user a service account acted for, if it did.
    pub subject: Option<String>,
    pub method: &'static str,
    pub resource: String,
    pub outcome: &'static str,
    pub detail: String,
}

struct Pending {
    event: UsageEvent,
    written: oneshot::Sender<bool>,
}

#[derive(Debug)]
pub struct UsageEvents {
    pool: PgPool,
    sender: OnceLock<mpsc::Sender<Pending>>,
}

impl UsageEvents {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            sender: OnceLock::new(),
        })
    }

    /// Writes `event`, returning once it is committed; UNAVAILABLE if it could not be.
    pub async fn record(&self, event: UsageEvent) -> Result<(), DomainError> {
        // The writer starts with the first event (it needs the caller's runtime).
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(write_batches(self.pool.clone(), receiver));
            sender
        });
        let (written, done) = oneshot::channel();
        sender
            .send(Pending { event, written })
            .await
            .map_err(|_| DomainError::Unavailable)?;
        match done.await {
            Ok(true) => Ok(()),
            _ => Err(DomainError::Unavailable),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Takes what is waiting (at least one event), writes it in one statement, tells each caller.
async fn write_batches(pool: PgPool, mut receiver: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        crate::metrics::record_group_commit("usage_event", batch.len());
        let written = insert(&pool, &batch).await;
        if let Err(error) = &written {
            tracing::warn!(events = batch.len(), error = %error, "usage events not written");
        }
        for pending in batch.drain(..) {
            let _ = pending.written.send(written.is_ok());
        }
    }
}

async fn insert(pool: &PgPool, batch: &[Pending]) -> Result<(), DomainError> {
    let column = |pick: fn(&UsageEvent) -> Option<&str>| -> Vec<Option<&str>> {
        batch.iter().map(|pending| pick(&pending.event)).collect()
    };
    sqlx::query(
        "INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail, subject) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                              $7::text[])",
    )
    .bind(column(|e| Some(&e.caller)))
    .bind(column(|e| Some(e.method)))
    .bind(column(|e| Some(&e.resource)))
    .bind(column(|e| resource_owner(&e.resource)))
    .bind(column(|e| Some(e.outcome)))
    .bind(column(|e| Some(&e.detail)))
    .bind(column(|e| e.subject.as_deref()))
    .execute(pool)
    .await
    .map_err(errors::db)?;
    Ok(())
}
