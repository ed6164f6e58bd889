//! Usage events (every Embed and TestInstance that reached an instance) written together, with
//! what they add to the daily usage ledger (one statement, [`write`]: so the ledger always
//! agrees with the audit trail, and a use costs no round trip beyond its event).
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

/// The events' audit rows and their daily totals, at one time (so the day of an event is its
/// total's day). The ledger's rows are upserted in key order, so that two writers (replicas, a
/// test's transaction) never wait for each other both ways; only the ledger's own events are
/// counted (`usage_subject` NULL: on the trail only, such as a key's release).
const WRITE_USES: &str = "WITH t AS (SELECT clock_timestamp() AS at), \
    e AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                               $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[]) \
          AS e (caller, subject, method, resource, owner, outcome, detail, usage_subject, \
                tokens, estimated)), \
    audited AS ( \
        INSERT INTO audit_events (time, caller, method, resource, resource_owner, outcome, \
                                  detail, subject) \
        SELECT t.at, e.caller, e.method, e.resource, e.owner, e.outcome, e.detail, e.subject \
        FROM e, t), \
    counted AS ( \
        INSERT INTO usage_daily AS u (day, instance, instance_owner, subject, caller, requests, \
                                      succeeded, failed, input_tokens, input_tokens_estimated) \
        SELECT (t.at AT TIME ZONE 'UTC')::date, e.resource, min(e.owner), e.usage_subject, \
               e.caller, count(*), count(*) FILTER (WHERE e.outcome = 'OK'), \
               count(*) FILTER (WHERE e.outcome <> 'OK'), sum(e.tokens), sum(e.estimated) \
        FROM e, t WHERE e.usage_subject IS NOT NULL \
        GROUP BY t.at, e.resource, e.usage_subject, e.caller \
        ORDER BY e.resource, e.usage_subject, e.caller \
        ON CONFLICT (day, instance, subject, caller) DO UPDATE SET \
            requests = u.requests + EXCLUDED.requests, \
            succeeded = u.succeeded + EXCLUDED.succeeded, \
            failed = u.failed + EXCLUDED.failed, \
            input_tokens = u.input_tokens + EXCLUDED.input_tokens, \
            input_tokens_estimated = u.input_tokens_estimated + EXCLUDED.input_tokens_estimated) \
    SELECT 1";

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

/// Writes `events` (audit events and ledger totals) in one statement, on `executor`: the usage
/// connections for a batch, or the transaction of a test's outcome.
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
    sqlx::query(WRITE_USES)
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
        .execute(executor)
        .await
        .map_err(errors::db)?;
    Ok(())
}
