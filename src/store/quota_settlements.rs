//! Quota settlements: the corrections of reservations once their calls are over (reported tokens
//! in place of the estimate, a release for a call that never reached the provider, unused units
//! of an idle lease). None needs an answer, so none costs a statement of its own under load: a
//! correction waits here for the next reservation batch that locks its counter row
//! (`quotas::reserve`, which applies it in the same statement); what no reservation takes along
//! within [`SETTLE_AFTER`] the settler writes (`settle_quota`). One that cannot be written leaves
//! its reservation standing, which counts the call as estimated, never less.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use parking_lot::Mutex;
use sqlx::PgPool;

use super::quota_leases::{QuotaLeases, Window};
use crate::domain::quota::{CounterDelta, QuotaLimit};

/// A counter row's slot for a limit: `(metric - 1) * 4 + period`, as the migration numbers them.
pub(super) fn slot(limit: &QuotaLimit) -> i16 {
    (limit.metric.number() - 1) * 4 + limit.period.number()
}

/// A counter row: instance and grantee (0 for the budget).
type CounterRow = (i64, i64);

/// How long a correction waits for a reservation of its row to take it along before the
/// settler writes it on its own.
pub(super) const SETTLE_AFTER: Duration = Duration::from_millis(100);

/// Corrections waiting for their rows; beyond this many, new ones are dropped (and their
/// reservations stand: the calls count as estimated).
const MAX_WAITING: usize = 65_536;

/// Settlements waiting for a reservation of their counter rows (keyed by instance and grantee),
/// and the settler that writes the rest every [`SETTLE_AFTER`].
#[derive(Debug)]
pub(super) struct QuotaSettlements {
    pool: PgPool,
    waiting: Mutex<HashMap<CounterRow, Vec<CounterDelta<Window>>>>,
    settler: OnceLock<()>,
    /// The units this replica holds for its next calls; the settler gives back idle ones.
    pub(super) leases: QuotaLeases,
}

impl QuotaSettlements {
    pub(super) fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            waiting: Mutex::new(HashMap::new()),
            settler: OnceLock::new(),
            leases: QuotaLeases::default(),
        })
    }

    pub(super) fn queue(self: &Arc<Self>, deltas: Vec<CounterDelta<Window>>) {
        self.start_settler();
        self.put_back(deltas);
    }

    /// The settler starts with the first correction or lease (it needs the caller's runtime).
    pub(super) fn start_settler(self: &Arc<Self>) {
        self.settler.get_or_init(|| {
            tokio::spawn(settle_forever(Arc::downgrade(self)));
        });
    }

    pub(super) fn put_back(&self, deltas: Vec<CounterDelta<Window>>) {
        let mut waiting = self.waiting.lock();
        let held: usize = waiting.values().map(Vec::len).sum();
        if held + deltas.len() > MAX_WAITING {
            tracing::warn!("quota settlements are backed up; reservations stand as taken");
            return;
        }
        for delta in deltas {
            waiting
                .entry((delta.instance, delta.grantee))
                .or_default()
                .push(delta);
        }
    }

    /// The corrections waiting for `keys` (taken: the caller applies them or puts them back).
    pub(super) fn take_for(&self, keys: &[(i64, i64)]) -> Vec<CounterDelta<Window>> {
        let mut waiting = self.waiting.lock();
        keys.iter()
            .filter_map(|key| waiting.remove(key))
            .flatten()
            .collect()
    }

    fn take_all(&self) -> Vec<CounterDelta<Window>> {
        self.waiting
            .lock()
            .drain()
            .flat_map(|(_, deltas)| deltas)
            .collect()
    }
}

/// Every [`SETTLE_AFTER`], writes what no reservation took along; ends with the store.
async fn settle_forever(settlements: std::sync::Weak<QuotaSettlements>) {
    loop {
        tokio::time::sleep(SETTLE_AFTER).await;
        let Some(settlements) = settlements.upgrade() else {
            return;
        };
        let mut deltas = settlements.take_all();
        deltas.extend(settlements.leases.give_back_idle());
        if deltas.is_empty() {
            continue;
        }
        crate::metrics::record_group_commit("quota_settlement", deltas.len());
        if let Err(error) = settle(&settlements.pool, &deltas).await {
            tracing::warn!(corrections = deltas.len(), %error, "quota settlements not written; their reservations stand");
        }
    }
}

async fn settle(pool: &PgPool, deltas: &[CounterDelta<Window>]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT settle_quota($1::int8[], $2::int8[], $3::int2[], $4::timestamptz[], $5::int8[])",
    )
    .bind(deltas.iter().map(|d| d.instance).collect::<Vec<i64>>())
    .bind(deltas.iter().map(|d| d.grantee).collect::<Vec<i64>>())
    .bind(deltas.iter().map(|d| slot(&d.limit)).collect::<Vec<i16>>())
    .bind(deltas.iter().map(|d| d.window).collect::<Vec<Window>>())
    .bind(deltas.iter().map(|d| d.delta).collect::<Vec<i64>>())
    .execute(pool)
    .await?;
    Ok(())
}
