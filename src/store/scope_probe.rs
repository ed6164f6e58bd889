//! Which read cache scopes changed, learned from the database and shared between calls (see
//! [`super::read_cache`]).
//!
//! A call may answer from the cache only after a look at the scopes that was sent *after* the
//! call arrived. One look per call would cost as much as the query the cache saves, so looks are
//! batched: a single task asks on its own connection, round after round, whenever calls are
//! waiting, and every call waiting when a round starts is served by that round.
//!
//! What a round asks: the scopes whose row was changed by a transaction at or after the
//! *watermark*, the xmin of the previous round's snapshot, and this round's own xmin, in one
//! statement (one snapshot). Why no commit is missed, whatever the order of commits: every
//! transaction whose xid is below a snapshot's xmin had finished when the snapshot was taken, so
//! the previous round saw it (or it was older still and an earlier round did). A transaction
//! with a larger xid either had committed by this round's snapshot, and is in this answer, or
//! is still at or above this round's xmin, and the next round asks for it. Scope rows are found
//! through their index on `changed_xid`, so a round reads only what changed.
//!
//! The first round only takes a watermark; the cache accepts answers only from queries sent
//! after it ([`super::read_cache::ReadStart`]). When the database does not answer, a round reports
//! nothing fresh, keeps the watermark, and the calls go to the database themselves, which then
//! answers UNAVAILABLE like any query.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{Connection, PgConnection, Row, postgres::PgConnectOptions};
use tokio::sync::{Notify, watch};

use super::read_cache::{Fresh, ReadCache};

/// How long one round may take to connect or to read; a round that takes longer reports nothing
/// fresh and drops its connection.
const ROUND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a call waits for its round before going to the database itself.
const WAIT_TIMEOUT: Duration = Duration::from_millis(2_500);

/// The most changed scopes one round takes in; beyond, it resets the cache instead (see
/// [`ROUND`]).
const MAX_CHANGES_PER_ROUND: usize = 1000;

/// The scopes changed at or after the watermark `$1` (none on the first round, when it is NULL)
/// and this snapshot's xmin, the next watermark: two index range scans on `changed_xid` in one
/// snapshot, in the same order, each at most one more than [`MAX_CHANGES_PER_ROUND`]. Most
/// rounds see no change at all, and then only the newest `changed_xid` is read (one probe at the
/// end of the index; a subquery in a branch not taken is not run), so a quiet round costs about
/// one single-row read.
const ROUND: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin, \
     CASE WHEN (SELECT max(changed_xid) FROM read_cache_scopes) >= $1::text::xid8 THEN \
       ARRAY(SELECT scope FROM read_cache_scopes WHERE changed_xid >= $1::text::xid8 \
             ORDER BY changed_xid, scope LIMIT 1001) ELSE '{}' END AS scopes, \
     CASE WHEN (SELECT max(changed_xid) FROM read_cache_scopes) >= $1::text::xid8 THEN \
       ARRAY(SELECT value FROM read_cache_scopes WHERE changed_xid >= $1::text::xid8 \
             ORDER BY changed_xid, scope LIMIT 1001) ELSE '{}' END AS counters";

/// The outcome of one round: its number and whether it was applied.
#[derive(Clone, Copy, Debug)]
struct Reading {
    round: u64,
    applied: bool,
}

#[derive(Debug)]
pub struct ScopeProbe {
    options: PgConnectOptions,
    cache: Arc<ReadCache>,
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

impl ScopeProbe {
    /// A probe that reads through its own connection, opened with `options`, into `cache`.
    pub fn new(options: PgConnectOptions, cache: Arc<ReadCache>) -> Arc<Self> {
        Arc::new(Self {
            // The round's statement is prepared once and run thousands of times a second. With
            // a parameter, PostgreSQL would plan it anew on every run (its generic plan, priced
            // for an unknown watermark, looks dearer than each custom one) and the planning
            // costs more than the run: the generic plan is the right one for any watermark
            // (two index range scans), so it is forced for this connection.
            options: options.options([("plan_cache_mode", "force_generic_plan")]),
            cache,
            rounds_started: AtomicU64::new(0),
            wake: Notify::new(),
            published: watch::Sender::new(Reading {
                round: 0,
                applied: false,
            }),
            task: OnceLock::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Stops the reading task (with its connection); later calls get nothing fresh.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Proof that a round sent after this call began has been applied to the cache, or `None`
    /// when none was in time.
    pub async fn fresh(self: &Arc<Self>) -> Option<Fresh> {
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
            Ok(Ok(reading)) if reading.applied => Some(Fresh::after_a_round_applied()),
            _ => None,
        }
    }

    /// The reading task: one round per wake-up, for as long as the process runs.
    async fn run(self: Arc<Self>) {
        let mut connection = None;
        let mut watermark: Option<String> = None;
        loop {
            self.wake.notified().await;
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let round = self.rounds_started.fetch_add(1, Ordering::SeqCst) + 1;
            let applied = self.round(&mut connection, &mut watermark).await;
            self.published.send_replace(Reading { round, applied });
        }
    }

    /// One round: reads what changed since `watermark`, applies it, moves the watermark.
    async fn round(
        &self,
        connection: &mut Option<PgConnection>,
        watermark: &mut Option<String>,
    ) -> bool {
        if connection.is_none() {
            let opened =
                tokio::time::timeout(ROUND_TIMEOUT, PgConnection::connect_with(&self.options))
                    .await;
            match opened {
                Ok(Ok(opened)) => *connection = Some(opened),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "read cache: cannot connect to look at the scopes");
                    return false;
                }
                Err(_) => return false,
            }
        }
        let Some(open) = connection.as_mut() else {
            return false;
        };
        let read = tokio::time::timeout(
            ROUND_TIMEOUT,
            sqlx::query(ROUND)
                .bind(watermark.as_deref())
                .fetch_one(open),
        )
        .await;
        let row = match read {
            Ok(Ok(row)) => row,
            _ => {
                // Broken or hung: the next round starts on a new connection, from the same
                // watermark.
                *connection = None;
                return false;
            }
        };
        let parsed = (|| -> Result<_, sqlx::Error> {
            let next: String = row.try_get("xmin")?;
            let scopes: Vec<i64> = row.try_get("scopes")?;
            let counters: Vec<i64> = row.try_get("counters")?;
            Ok((next, scopes, counters))
        })();
        let Ok((next, scopes, counters)) = parsed else {
            return false;
        };
        if scopes.len() > MAX_CHANGES_PER_ROUND {
            // Too many changes to take in one by one (a bulk change, or a long pause): forget
            // every answer instead, which is always safe.
            self.cache.reset_round();
        } else {
            let changed: Vec<(i64, i64)> = scopes.into_iter().zip(counters).collect();
            self.cache.apply_round(&changed);
        }
        *watermark = Some(next);
        true
    }
}
