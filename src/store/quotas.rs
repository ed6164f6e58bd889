//! Quotas in the database: how a [`Quota`] is stored (a JSON array in `instances.quota` and
//! `shares.quota`); the reservation a call makes before its provider call (`reserve_quota`, a
//! function of the migration `quotas_and_usage`), which takes every claim of a call or none,
//! atomically across replicas. Its correction after the call is [`super::quota_settlements`]'s.
//!
//! Every call of an instance with limits reserves against the same few counter rows, so under
//! load the rows are the bottleneck: reservations that arrive together are therefore sent as one
//! batch ([`GroupCommit`]), in which each row is locked and written once for all of them, the
//! calls still each all-or-nothing in their order. Alone, a reservation is one short statement.
//! Reservations and settlements run on the usage connections, which commit without waiting for
//! the WAL flush, so a hot row is held for microseconds, not a disk flush; a reservation lost to
//! a crash of PostgreSQL itself lets a few calls go uncounted, never blocks one.
//!
//! A busy instance far from its limits would still send every call here; so a reservation also
//! takes a lease for the replica's next calls (see [`super::quota_leases`]), and near a limit
//! every call comes here again.
//!
//! Each batch also applies the settlements waiting for its rows (see
//! [`super::quota_settlements`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};

use super::{
    Store, errors,
    group_commit::{BatchOutcome, BatchStatement, GroupCommit},
    quota_leases::LEASE_CALLS,
    quota_settlements::{QuotaSettlements, slot},
};
use crate::domain::{
    DomainError,
    quota::{
        Claim, CounterDelta, Quota, QuotaExceeded, QuotaLimit, QuotaMetric, QuotaPeriod,
        Reservation,
    },
};

/// One limit as stored: words, so that an operator reading the table needs no enum table.
#[derive(Serialize, Deserialize)]
struct StoredLimit {
    metric: String,
    period: String,
    limit: i64,
}

/// The JSON a quota is stored as; `None` (SQL NULL) for no quota.
pub(super) fn quota_to_json(quota: Option<&Quota>) -> Option<String> {
    let limits: Vec<StoredLimit> = quota?
        .limits()
        .iter()
        .map(|limit| StoredLimit {
            metric: limit.metric.as_str().to_owned(),
            period: limit.period.as_str().to_owned(),
            limit: limit.limit,
        })
        .collect();
    serde_json::to_string(&limits).ok()
}

/// A stored quota read back (the column as text); what the database holds was written by
/// [`quota_to_json`], so anything else is our fault.
pub(super) fn quota_from_json(stored: Option<&str>) -> Result<Option<Quota>, DomainError> {
    let Some(text) = stored else {
        return Ok(None);
    };
    let unreadable = || DomainError::Internal("a stored quota is not readable".to_owned());
    let limits: Vec<StoredLimit> = serde_json::from_str(text).map_err(|_| unreadable())?;
    let limits = limits
        .into_iter()
        .map(|stored| {
            Some(QuotaLimit {
                metric: QuotaMetric::from_str(&stored.metric)?,
                period: QuotaPeriod::from_str(&stored.period)?,
                limit: stored.limit,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(unreadable)?;
    Ok(Quota::new(limits))
}

/// A quota in words, for the audit trail: `10 requests/minute, 5000 input_tokens/month`.
pub(super) fn describe(quota: &Quota) -> String {
    quota
        .limits()
        .iter()
        .map(|l| format!("{} {}/{}", l.limit, l.metric.as_str(), l.period.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub use super::quota_leases::Window;

/// One call's reservation, as queued for a batch.
pub(super) struct ReserveValues {
    instance: i64,
    claims: Vec<Claim>,
    /// Where the settlements waiting for counter rows are (the store's one).
    settlements: Arc<QuotaSettlements>,
}

/// What the batch answered for one call.
#[derive(Clone, Debug)]
pub(super) struct Reserved {
    /// 0 when reserved; else the refusing claim, 1-based.
    refused: i32,
    retry_seconds: f64,
    /// One per claim: its window, the lease granted with it, the seconds its window has left.
    windows: Vec<Window>,
    leased: Vec<i64>,
    seconds_left: Vec<f64>,
}

/// Quota reservations, group-committed (`GroupCommit<ReserveBatch>` in the store).
pub(super) struct ReserveBatch;

const RESERVE: &str = "SELECT refused, retry_seconds, claim_windows, claim_leased, \
                             claim_seconds_left \
    FROM reserve_quota($1::int8[], $2::int8[], $3::int4[], $4::int2[], $5::timestamptz[], \
                       $6::int8[], $7::int4[], $8::int4[], $9::int2[], $10::int2[], $11::int8[], \
                       $12::int8[], $13::int8[])";

impl BatchStatement for ReserveBatch {
    type Values = ReserveValues;
    type Done = Reserved;
    const OPERATION: &'static str = "quota_reservation";
    // Reservations of one instance all lock its one or two counter rows: batches in flight at
    // once would only wait for each other.
    const IN_FLIGHT: usize = 1;

    async fn write(
        pool: &PgPool,
        rows: &[&ReserveValues],
    ) -> Result<Vec<(usize, Reserved)>, sqlx::Error> {
        let settlements = rows.first().map(|first| first.settlements.clone());
        reserve(pool, rows, settlements.as_deref()).await
    }
}

/// Runs `reserve_quota` for `calls`, in their order, applying first the settlements waiting for
/// their rows: each call's answer by position.
async fn reserve(
    pool: &PgPool,
    calls: &[&ReserveValues],
    settlements: Option<&QuotaSettlements>,
) -> Result<Vec<(usize, Reserved)>, sqlx::Error> {
    // The batch's counter rows, distinct and in key order (the order they are locked in).
    let mut keys: Vec<(i64, i64)> = calls
        .iter()
        .flat_map(|call| {
            call.claims
                .iter()
                .map(|claim| (call.instance, claim.grantee))
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let row_of = |key: (i64, i64)| {
        keys.binary_search(&key)
            .map(|found| i32::try_from(found + 1).unwrap_or(i32::MAX))
            .unwrap_or(0)
    };
    let corrections = settlements
        .map(|settlements| settlements.take_for(&keys))
        .unwrap_or_default();
    let claims: Vec<(i32, &ReserveValues, &Claim)> = calls
        .iter()
        .enumerate()
        .flat_map(|(position, call)| {
            let number = i32::try_from(position + 1).unwrap_or(i32::MAX);
            call.claims.iter().map(move |claim| (number, *call, claim))
        })
        .collect();
    let answer = sqlx::query(RESERVE)
        .bind(keys.iter().map(|key| key.0).collect::<Vec<i64>>())
        .bind(keys.iter().map(|key| key.1).collect::<Vec<i64>>())
        .bind(
            corrections
                .iter()
                .map(|d| row_of((d.instance, d.grantee)))
                .collect::<Vec<i32>>(),
        )
        .bind(
            corrections
                .iter()
                .map(|d| slot(&d.limit))
                .collect::<Vec<i16>>(),
        )
        .bind(
            corrections
                .iter()
                .map(|d| d.window)
                .collect::<Vec<Window>>(),
        )
        .bind(corrections.iter().map(|d| d.delta).collect::<Vec<i64>>())
        .bind(claims.iter().map(|c| c.0).collect::<Vec<i32>>())
        .bind(
            claims
                .iter()
                .map(|c| row_of((c.1.instance, c.2.grantee)))
                .collect::<Vec<i32>>(),
        )
        .bind(
            claims
                .iter()
                .map(|c| slot(&c.2.limit))
                .collect::<Vec<i16>>(),
        )
        .bind(
            claims
                .iter()
                .map(|c| c.2.limit.period.number())
                .collect::<Vec<i16>>(),
        )
        .bind(claims.iter().map(|c| c.2.limit.limit).collect::<Vec<i64>>())
        .bind(claims.iter().map(|c| c.2.amount).collect::<Vec<i64>>())
        .bind(
            claims
                .iter()
                .map(|c| c.2.amount.saturating_mul(LEASE_CALLS))
                .collect::<Vec<i64>>(),
        )
        .fetch_one(pool)
        .await;
    let row = match answer {
        Ok(row) => row,
        Err(error) => {
            // Not applied: they wait for the next batch (or the settler).
            if let Some(settlements) = settlements {
                settlements.put_back(corrections);
            }
            return Err(error);
        }
    };
    let refused: Vec<i32> = row.try_get("refused")?;
    let retry_seconds: Vec<f64> = row.try_get("retry_seconds")?;
    let mut windows = row.try_get::<Vec<Window>, _>("claim_windows")?.into_iter();
    let mut leased = row.try_get::<Vec<i64>, _>("claim_leased")?.into_iter();
    let mut seconds_left = row
        .try_get::<Vec<f64>, _>("claim_seconds_left")?
        .into_iter();
    Ok(calls
        .iter()
        .enumerate()
        .map(|(position, call)| {
            let reserved = Reserved {
                refused: refused.get(position).copied().unwrap_or(0),
                retry_seconds: retry_seconds.get(position).copied().unwrap_or(0.0),
                windows: windows.by_ref().take(call.claims.len()).collect(),
                leased: leased.by_ref().take(call.claims.len()).collect(),
                seconds_left: seconds_left.by_ref().take(call.claims.len()).collect(),
            };
            (position, reserved)
        })
        .collect())
}

impl Store {
    /// Reserves `claims` on instance `instance` (in lock order, see
    /// [`crate::domain::quota::claims`]): all of them, or none and the limit that refused.
    /// UNAVAILABLE if the database cannot write it: no reservation, no provider call.
    pub async fn reserve_quota(
        &self,
        instance: i64,
        claims: Vec<Claim>,
    ) -> Result<Result<Reservation<Window>, QuotaExceeded>, DomainError> {
        // Most calls of a busy instance far from its limits are served from leases.
        if let Some(windows) = self.settlements.leases.take(instance, &claims) {
            return Ok(Ok(Reservation {
                instance,
                claims,
                windows,
            }));
        }
        let values = ReserveValues {
            instance,
            claims: claims.clone(),
            settlements: self.settlements.clone(),
        };
        let reserved = match self.reservations.submit(values).await {
            BatchOutcome::Done(reserved) => reserved,
            BatchOutcome::Unavailable => return Err(DomainError::Unavailable),
            // Its batch failed as a whole: alone, for its own answer (or error).
            BatchOutcome::RunAlone(values) => {
                reserve(self.usage.pool(), &[&values], Some(&self.settlements))
                    .await
                    .map_err(errors::db)?
                    .pop()
                    .map(|(_, reserved)| reserved)
                    .ok_or_else(|| {
                        DomainError::Internal("a reservation got no answer".to_owned())
                    })?
            }
        };
        if reserved.refused > 0 {
            let claim = usize::try_from(reserved.refused - 1)
                .ok()
                .and_then(|index| claims.get(index))
                .ok_or_else(|| {
                    DomainError::Internal("a quota refusal named no claim".to_owned())
                })?;
            return Ok(Err(QuotaExceeded {
                scope: claim.scope(),
                limit: claim.limit,
                // A month is the longest window.
                retry_after: std::time::Duration::from_secs_f64(
                    reserved.retry_seconds.clamp(0.001, 32.0 * 86_400.0),
                ),
            }));
        }
        if reserved.windows.len() != claims.len()
            || reserved.leased.len() != claims.len()
            || reserved.seconds_left.len() != claims.len()
        {
            return Err(DomainError::Internal(
                "a quota reservation answered the wrong number of windows".to_owned(),
            ));
        }
        if reserved.leased.iter().any(|leased| *leased > 0) {
            self.settlements.start_settler();
        }
        for (((claim, window), leased), seconds_left) in claims
            .iter()
            .zip(&reserved.windows)
            .zip(&reserved.leased)
            .zip(&reserved.seconds_left)
        {
            if let Some(given_back) =
                self.settlements
                    .leases
                    .grant(instance, claim, *window, *leased, *seconds_left)
            {
                self.settle_quota(vec![given_back]);
            }
        }
        Ok(Ok(Reservation {
            instance,
            claims,
            windows: reserved.windows,
        }))
    }

    /// Leaves corrections of reservations for the next reservation of their rows, or the
    /// settler (see [`QuotaSettlements`]); returns at once.
    pub(super) fn settle_quota(&self, deltas: Vec<CounterDelta<Window>>) {
        if !deltas.is_empty() {
            self.settlements.queue(deltas);
        }
    }
}

/// The reservations' group commit, on the usage connections.
pub(super) fn reservations(usage_pool: PgPool) -> Arc<GroupCommit<ReserveBatch>> {
    GroupCommit::new(usage_pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::quota::RawLimit;

    #[test]
    fn a_quota_reads_back_as_it_was_stored() {
        let quota = Quota::parse(
            "quota",
            &[
                RawLimit {
                    metric: 2,
                    period: 4,
                    limit: 5000,
                },
                RawLimit {
                    metric: 1,
                    period: 1,
                    limit: 10,
                },
            ],
        )
        .unwrap();
        let stored = quota_to_json(quota.as_ref()).unwrap();
        assert_eq!(
            stored,
            r#"[{"metric":"requests","period":"minute","limit":10},{"metric":"input_tokens","period":"month","limit":5000}]"#
        );
        assert_eq!(quota_from_json(Some(&stored)).unwrap(), quota);
        assert_eq!(quota_to_json(None), None);
        assert!(quota_from_json(Some(r#"[{"metric":"x"}]"#)).is_err());
    }
}
