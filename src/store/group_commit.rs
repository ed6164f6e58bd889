//! Group commit: writes that arrive together share one statement and one commit.
//!
//! Under load, most of what a small write costs PostgreSQL is paid per statement and per
//! transaction (a round trip, executor start-up, a commit with its WAL flush), not per row. So
//! writes of one kind are queued, and one dispatcher task sends whatever is queued as a single
//! multi-row statement ([`BatchStatement`]), with at most [`MAX_BATCHES_IN_FLIGHT`] statements at
//! a time. Nothing waits for a batch to fill: a write that finds a free slot goes at once, alone
//! if it is alone, so a lone write costs what it did before; batches only form while earlier
//! ones are in flight.
//!
//! Each write is still atomic and durable on its own terms: the statement writes each row with
//! its audit event, hence in the same transaction, and the caller is answered only after that
//! transaction has committed. A statement writes only the rows that certainly succeed; a write
//! it skips, or every write of a statement that fails as a whole, is answered
//! [`BatchOutcome::RunAlone`] with its values, and its caller runs the one-row statement, which
//! gives exactly the answer a lone write would get.

use parking_lot::Mutex;
use std::{
    future::Future,
    sync::{Arc, OnceLock},
};

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::store::errors;

/// How many batch statements of one kind may be in flight at once. Writes that arrive while all
/// are busy queue up and form the next batch; a few in flight keep the database busy while one
/// commits.
const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// The most writes one statement carries.
const MAX_BATCH_ROWS: usize = 64;

/// One kind of write that can be sent many rows at a time.
pub(in crate::store) trait BatchStatement: Send + Sync + 'static {
    /// Everything one write needs (already sealed: no plaintext key).
    type Values: Send + Sync + 'static;
    /// What the database answered for a row it wrote.
    type Done: Clone + Send + 'static;
    /// The `operation` label of the batch size metric.
    const OPERATION: &'static str;
    /// How many of its batches may be in flight at once. Writes of different rows gain from a
    /// few; writes that all contend for the same few rows (quota counters) only wait for each
    /// other's locks, and gain from larger batches instead.
    const IN_FLIGHT: usize = MAX_BATCHES_IN_FLIGHT;

    /// Writes `rows` in one statement; answers the position (0-based) and outcome of each row it
    /// wrote. Rows it skipped are missing from the answer.
    fn write(
        pool: &PgPool,
        rows: &[&Self::Values],
    ) -> impl Future<Output = Result<Vec<(usize, Self::Done)>, sqlx::Error>> + Send;
}

/// The answer to one queued write.
pub(in crate::store) enum BatchOutcome<S: BatchStatement> {
    /// Written and committed.
    Done(S::Done),
    /// Not written; the caller runs the one-row statement with these values for its own answer.
    RunAlone(Box<S::Values>),
    /// The database cannot be reached (or the batches stopped, at shutdown); running alone would
    /// only wait for it a second time.
    Unavailable,
}

/// What a batch statement did with one of its writes.
#[derive(Clone)]
enum Written<D> {
    Done(D),
    Skipped,
    Unavailable,
}

struct Pending<S: BatchStatement> {
    values: S::Values,
    reply: oneshot::Sender<BatchOutcome<S>>,
}

/// The queue of writes of one kind and its dispatcher task.
pub(in crate::store) struct GroupCommit<S: BatchStatement> {
    queue: mpsc::UnboundedSender<Pending<S>>,
    /// The receiving end, until the first write starts the dispatcher (it needs the caller's
    /// runtime) and takes it.
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Pending<S>>>>,
    started: OnceLock<()>,
    pool: PgPool,
}

impl<S: BatchStatement> std::fmt::Debug for GroupCommit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("operation", &S::OPERATION)
            .finish_non_exhaustive()
    }
}

impl<S: BatchStatement> GroupCommit<S> {
    pub fn new(pool: PgPool) -> Arc<Self> {
        let (queue, receiver) = mpsc::unbounded_channel();
        Arc::new(Self {
            queue,
            receiver: Mutex::new(Some(receiver)),
            started: OnceLock::new(),
            pool,
        })
    }

    /// Queues `values` and waits for its batch to commit (or to skip it).
    pub async fn submit(&self, values: S::Values) -> BatchOutcome<S> {
        self.started.get_or_init(|| {
            let receiver = self.receiver.lock().take();
            if let Some(receiver) = receiver {
                tokio::spawn(dispatch::<S>(self.pool.clone(), receiver));
            }
        });
        let (reply, answer) = oneshot::channel();
        if let Err(unsent) = self.queue.send(Pending { values, reply }) {
            return BatchOutcome::RunAlone(Box::new(unsent.0.values));
        }
        // No reply means the batch task is gone, which happens only at shutdown.
        answer.await.unwrap_or(BatchOutcome::Unavailable)
    }
}

/// The dispatcher: takes a free slot, then everything queued (up to [`MAX_BATCH_ROWS`]), and
/// sends it as one batch. Ends when the store is dropped.
async fn dispatch<S: BatchStatement>(pool: PgPool, mut queue: mpsc::UnboundedReceiver<Pending<S>>) {
    let slots = Arc::new(Semaphore::new(S::IN_FLIGHT.max(1)));
    loop {
        // The slot is taken before the queue is read, so that writes arriving while every slot
        // is busy gather into the next batch instead of each taking a slot of its own.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_ROWS {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // A caller that gave up (deadline, cancellation) before its batch left is not written.
        batch.retain(|pending| !pending.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let written = write_batch::<S>(&pool, &batch).await;
            drop(slot);
            for (pending, written) in batch.into_iter().zip(written) {
                let outcome = match written {
                    Written::Done(done) => BatchOutcome::Done(done),
                    Written::Skipped => BatchOutcome::RunAlone(Box::new(pending.values)),
                    Written::Unavailable => BatchOutcome::Unavailable,
                };
                let _ = pending.reply.send(outcome);
            }
        });
    }
}

/// Writes a batch; one outcome per write, in order.
async fn write_batch<S: BatchStatement>(
    pool: &PgPool,
    batch: &[Pending<S>],
) -> Vec<Written<S::Done>> {
    crate::metrics::record_group_commit(S::OPERATION, batch.len());
    let rows: Vec<&S::Values> = batch.iter().map(|pending| &pending.values).collect();
    match S::write(pool, &rows).await {
        Ok(done) => {
            let mut written = vec![Written::Skipped; batch.len()];
            for (position, done) in done {
                if let Some(slot) = written.get_mut(position) {
                    *slot = Written::Done(done);
                }
            }
            written
        }
        Err(error) if errors::is_unavailable(&error) => {
            tracing::warn!(%error, "database unavailable");
            vec![Written::Unavailable; batch.len()]
        }
        Err(error) => {
            // Nothing was written; each write finds its own answer alone.
            tracing::debug!(%error, rows = batch.len(), operation = S::OPERATION, "batch failed; running alone");
            vec![Written::Skipped; batch.len()]
        }
    }
}

/// One field of a batch's rows, as an array parameter of its statement.
pub(in crate::store) fn column<'a, V, T>(rows: &[&'a V], field: impl Fn(&'a V) -> T) -> Vec<T> {
    rows.iter().map(|values| field(values)).collect()
}
