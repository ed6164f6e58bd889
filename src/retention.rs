//! The retention sweep of `serve`: every `RETENTION_SWEEP_SECS`, deletes audit events older than
//! `AUDIT_RETENTION_DAYS` and daily usage totals older than `USAGE_RETENTION_DAYS`, a batch of
//! `RETENTION_BATCH_ROWS` at a time with a pause between batches, so that serving never waits
//! behind a long delete. Every replica runs it; one at a time deletes (see `store::retention`).

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    config::RetentionSettings,
    store::{
        Store,
        retention::{Pruned, Retained},
    },
};

/// The pause between two batches of one sweep.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// Sweeps until `stopping` turns true; returns at once when nothing has a retention.
pub async fn sweep_forever(
    store: Store,
    settings: RetentionSettings,
    mut stopping: watch::Receiver<bool>,
) {
    let tables: Vec<(Retained, u32)> = [
        (Retained::AuditEvents, settings.audit_days),
        (Retained::UsageDaily, settings.usage_days),
    ]
    .into_iter()
    .filter_map(|(table, days)| days.map(|days| (table, days)))
    .collect();
    if tables.is_empty() {
        return;
    }
    loop {
        for &(table, days) in &tables {
            if !sweep(&store, table, days, settings.batch_rows, &mut stopping).await {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.sweep_every) => {}
            _ = stopping.changed() => return,
        }
    }
}

/// Deletes `table`'s old rows batch by batch until none is left, another replica sweeps, or
/// the database fails (the next sweep tries again). False when the server is stopping.
async fn sweep(
    store: &Store,
    table: Retained,
    days: u32,
    batch: u32,
    stopping: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        if *stopping.borrow() {
            return false;
        }
        match store.prune(table, days, batch).await {
            Ok(Pruned::Rows(rows)) => {
                if rows > 0 {
                    crate::metrics::record_pruned(table.label(), rows);
                    tracing::debug!(table = table.label(), rows, "retention deleted old rows");
                }
                if rows < u64::from(batch) {
                    return true;
                }
            }
            Ok(Pruned::Busy) => return true,
            Err(error) => {
                tracing::warn!(table = table.label(), %error, "retention sweep failed; retrying at the next sweep");
                return true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(BETWEEN_BATCHES) => {}
            _ = stopping.changed() => return false,
        }
    }
}
