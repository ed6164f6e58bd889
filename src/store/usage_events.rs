//! Usage events (every Embed and TestInstance that reached an instance) written together, with
//! what they add to the daily usage ledger and their quota settlements (`record_uses`, a
//! function of the migration `quotas_and_usage`: one statement, so the ledger always agrees
//! with the audit trail and a use costs no round trip beyond its event).
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

use super::{errors, quotas::Window};
use crate::domain::{DomainError, audit::resource_owner, quota::CounterDelta};

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
    /// Whether the use counts in the usage ledger (Embed, TestInstance; not a key's release).
    pub in_ledger: bool,
    /// Input tokens the provider reported, and those estimated where it reported none.
    pub input_tokens: i64,
    pub estimated_tokens: i64,
    /// Corrections of the call's quota reservation (empty without one).
    pub settlement: Vec<CounterDelta<Window>>,
}

impl UsageEvent {
    /// On whose behalf the use was made (the acting account's user, or the caller itself), if
    /// it counts in the ledger.
    fn usage_subject(&self) -> Option<&str> {
        self.in_ledger
            .then(|| self.subject.as_deref().unwrap_or(&self.caller))
    }
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

    /// The usage connections (they commit without waiting for the WAL flush).
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
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
    let events: Vec<&UsageEvent> = batch.iter().map(|pending| &pending.event).collect();
    write(pool, &events).await
}

/// Writes `events` (audit events, ledger totals, settlements) in one statement, on `executor`:
/// the usage connections for a batch, or the transaction of a test's outcome.
pub(super) async fn write<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    events: &[&UsageEvent],
) -> Result<(), DomainError> {
    let text = |pick: fn(&UsageEvent) -> Option<&str>| -> Vec<Option<&str>> {
        events.iter().map(|event| pick(event)).collect()
    };
    let number = |pick: fn(&UsageEvent) -> i64| -> Vec<i64> {
        events.iter().map(|event| pick(event)).collect()
    };
    let deltas: Vec<&CounterDelta<Window>> = events
        .iter()
        .flat_map(|event| event.settlement.iter())
        .collect();
    sqlx::query(
        "SELECT record_uses($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                            $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[], \
                            $11::int8[], $12::int8[], $13::int2[], $14::int2[], \
                            $15::timestamptz[], $16::int8[])",
    )
    .bind(text(|e| Some(&e.caller)))
    .bind(text(|e| e.subject.as_deref()))
    .bind(text(|e| Some(e.method)))
    .bind(text(|e| Some(&e.resource)))
    .bind(text(|e| resource_owner(&e.resource)))
    .bind(text(|e| Some(e.outcome)))
    .bind(text(|e| Some(&e.detail)))
    .bind(text(|e| e.usage_subject()))
    .bind(number(|e| e.input_tokens))
    .bind(number(|e| e.estimated_tokens))
    .bind(deltas.iter().map(|d| d.instance).collect::<Vec<i64>>())
    .bind(deltas.iter().map(|d| d.grantee).collect::<Vec<i64>>())
    .bind(
        deltas
            .iter()
            .map(|d| d.limit.metric.number())
            .collect::<Vec<i16>>(),
    )
    .bind(
        deltas
            .iter()
            .map(|d| d.limit.period.number())
            .collect::<Vec<i16>>(),
    )
    .bind(deltas.iter().map(|d| d.window).collect::<Vec<Window>>())
    .bind(deltas.iter().map(|d| d.delta).collect::<Vec<i64>>())
    .execute(executor)
    .await
    .map_err(errors::db)?;
    Ok(())
}
