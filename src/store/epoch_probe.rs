//! Fresh reads of the read cache's epoch (see [`super::read_cache`]), shared between calls.
//!
//! A call may answer from the cache only after a read of the epoch that was sent *after* the call
//! arrived. One read per call would cost as much as the query the cache saves, so reads are
//! batched: a single task reads the epoch on its own connection, round after round, whenever
//! calls are waiting, and every call waiting when a round starts is served by that round. Under
//! load a round serves many calls; a call waits for at most the round in flight plus its own.
//!
//! When the database does not answer, a round reports no epoch and the calls go to the database
//! themselves, which then answers UNAVAILABLE like any query.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio::sync::{Notify, watch};

/// How long one round may take to connect or to read; a round that takes longer reports no
/// epoch and drops its connection.
const ROUND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a call waits for its round before going to the database itself.
const WAIT_TIMEOUT: Duration = Duration::from_millis(2_500);

/// The outcome of one round: its number and the epoch it read (`None`: the read failed).
#[derive(Clone, Copy, Debug)]
struct Reading {
    round: u64,
    epoch: Option<i64>,
}

#[derive(Debug)]
pub struct EpochProbe {
    options: PgConnectOptions,
    /// The number of the last round started (sent).
    rounds_started: AtomicU64,
    /// Wakes the reading task; a wake while a round is in flight makes it start another after.
    wake: Notify,
    published: watch::Sender<Reading>,
    /// The reading task, started by the first call (it needs the caller's runtime).
    task: OnceLock<()>,
    /// Set on shutdown: the task ends and drops its connection; calls read the database.
    closed: AtomicBool,
}

impl EpochProbe {
    /// A probe that reads through its own connection, opened with `options`.
    pub fn new(options: PgConnectOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            rounds_started: AtomicU64::new(0),
            wake: Notify::new(),
            published: watch::Sender::new(Reading {
                round: 0,
                epoch: None,
            }),
            task: OnceLock::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Stops the reading task (with its connection); later calls get no epoch.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// An epoch read that was sent after this call began, or `None` when none arrived in time.
    pub async fn fresh_epoch(self: &Arc<Self>) -> Option<i64> {
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        self.task.get_or_init(|| {
            tokio::spawn(Arc::clone(self).run());
        });
        let mut readings = self.published.subscribe();
        // Any round with a greater number starts after this load, hence after the call began.
        let needed = self.rounds_started.load(Ordering::SeqCst) + 1;
        self.wake.notify_one();
        let waited = tokio::time::timeout(
            WAIT_TIMEOUT,
            readings.wait_for(|reading| reading.round >= needed),
        )
        .await;
        match waited {
            Ok(Ok(reading)) => reading.epoch,
            _ => None,
        }
    }

    /// The reading task: one round per wake-up, for as long as the process runs.
    async fn run(self: Arc<Self>) {
        let mut connection = None;
        loop {
            self.wake.notified().await;
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let round = self.rounds_started.fetch_add(1, Ordering::SeqCst) + 1;
            let epoch = self.read(&mut connection).await;
            self.published.send_replace(Reading { round, epoch });
        }
    }

    async fn read(&self, connection: &mut Option<PgConnection>) -> Option<i64> {
        if connection.is_none() {
            let opened =
                tokio::time::timeout(ROUND_TIMEOUT, PgConnection::connect_with(&self.options))
                    .await;
            match opened {
                Ok(Ok(opened)) => *connection = Some(opened),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "read cache: cannot connect to read the epoch");
                    return None;
                }
                Err(_) => return None,
            }
        }
        let open = connection.as_mut()?;
        let read = tokio::time::timeout(
            ROUND_TIMEOUT,
            sqlx::query_scalar::<_, i64>("SELECT value FROM read_cache_epoch").fetch_one(open),
        )
        .await;
        match read {
            Ok(Ok(epoch)) => Some(epoch),
            _ => {
                // Broken or hung: start the next round on a new connection.
                *connection = None;
                None
            }
        }
    }
}
