//! Quotas in the database: how a [`Quota`] is stored (a JSON array in `instances.quota` and
//! `shares.quota`), and the reservation a call makes before its provider call
//! (`reserve_quota`, a function of the migration `quotas_and_usage`): one statement that takes
//! every claim or none, atomically across replicas, on the usage connections (which commit
//! without waiting for the WAL flush: a reservation lost to a crash of PostgreSQL itself lets a
//! few calls go uncounted, never blocks one). The settlement travels with the call's audit event
//! (`usage_events`), so it costs no round trip of its own.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, errors};
use crate::domain::{
    DomainError,
    quota::{Claim, Quota, QuotaExceeded, QuotaLimit, QuotaMetric, QuotaPeriod, Reservation},
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

/// The window a counter was reserved in, as the database keyed it.
pub type Window = DateTime<Utc>;

const RESERVE: &str = "SELECT refused, retry_seconds, window_starts \
    FROM reserve_quota($1, $2::int8[], $3::int2[], $4::int2[], $5::int8[], $6::int8[])";

impl Store {
    /// Reserves `claims` on instance `instance` (in lock order, see
    /// [`crate::domain::quota::claims`]): all of them, or none and the limit that refused.
    /// UNAVAILABLE if the database cannot write it: no reservation, no provider call.
    pub async fn reserve_quota(
        &self,
        instance: i64,
        claims: Vec<Claim>,
    ) -> Result<Result<Reservation<Window>, QuotaExceeded>, DomainError> {
        let column = |pick: fn(&Claim) -> i64| claims.iter().map(pick).collect::<Vec<i64>>();
        let row = sqlx::query(RESERVE)
            .bind(instance)
            .bind(column(|c| c.grantee))
            .bind(
                claims
                    .iter()
                    .map(|c| c.limit.metric.number())
                    .collect::<Vec<i16>>(),
            )
            .bind(
                claims
                    .iter()
                    .map(|c| c.limit.period.number())
                    .collect::<Vec<i16>>(),
            )
            .bind(column(|c| c.limit.limit))
            .bind(column(|c| c.amount))
            .fetch_one(self.usage.pool())
            .await
            .map_err(errors::db)?;
        let refused: i32 = row.try_get("refused").map_err(errors::db)?;
        let retry_seconds: f64 = row.try_get("retry_seconds").map_err(errors::db)?;
        let windows: Vec<Window> = row.try_get("window_starts").map_err(errors::db)?;
        if refused > 0 {
            let claim = usize::try_from(refused - 1)
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
                    retry_seconds.clamp(0.001, 32.0 * 86_400.0),
                ),
            }));
        }
        if windows.len() != claims.len() {
            return Err(DomainError::Internal(
                "a quota reservation answered the wrong number of windows".to_owned(),
            ));
        }
        Ok(Ok(Reservation {
            instance,
            claims,
            windows,
        }))
    }
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
