//! Quota leases: units of a limit that a reservation took for this replica's next calls
//! (`reserve_quota` grants them: at most a sixteenth of what the limit has left, at most
//! [`LEASE_CALLS`] calls' worth), handed out here without a round trip until the window ends or
//! they run out. A call takes all its claims from leases or goes to the database for all of
//! them, so a call is still all-or-nothing. Units counted in the database are never more than
//! the limit, so no limit is ever passed; what a lease strands is bounded: a lease untouched for
//! [`LEASE_IDLE`] is given back (see `quotas::settle_forever`), and near a limit there are no
//! leases at all.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::domain::quota::{Claim, CounterDelta, QuotaLimit, QuotaMetric, QuotaPeriod};

/// The window a counter was reserved in, as the database keyed it.
pub type Window = DateTime<Utc>;

/// The most calls' worth a lease may hold.
pub(super) const LEASE_CALLS: i64 = 64;

/// A lease not drawn on for this long is given back.
pub(super) const LEASE_IDLE: Duration = Duration::from_secs(1);

/// Which counter slot a lease is of.
type LeaseKey = (i64, i64, QuotaMetric, QuotaPeriod);

#[derive(Debug)]
struct Lease {
    /// The limit it was granted under: a lease is not drawn on under another (a lowered limit
    /// takes effect at once; what the lease holds comes back when it is idle).
    limit: i64,
    window: Window,
    /// When its window ends, by this process's clock (from the database's time left).
    expires: Instant,
    left: i64,
    touched: Instant,
}

/// The leases this replica holds.
#[derive(Debug, Default)]
pub(super) struct QuotaLeases {
    held: Mutex<HashMap<LeaseKey, Lease>>,
}

fn key(instance: i64, claim: &Claim) -> LeaseKey {
    (
        instance,
        claim.grantee,
        claim.limit.metric,
        claim.limit.period,
    )
}

impl QuotaLeases {
    /// Takes every claim of a call from the leases, or none: the windows the units were
    /// counted in, one per claim; `None` when one claim has no lease enough for it.
    pub(super) fn take(&self, instance: i64, claims: &[Claim]) -> Option<Vec<Window>> {
        let now = Instant::now();
        let mut held = self.held.lock();
        let enough = claims.iter().all(|claim| {
            held.get(&key(instance, claim)).is_some_and(|lease| {
                lease.expires > now
                    && lease.limit == claim.limit.limit
                    && lease.left >= claim.amount
            })
        });
        if !enough {
            return None;
        }
        let mut windows = Vec::with_capacity(claims.len());
        for claim in claims {
            let lease = held.get_mut(&key(instance, claim))?;
            lease.left -= claim.amount;
            lease.touched = now;
            windows.push(lease.window);
        }
        Some(windows)
    }

    /// Adds what a reservation granted: `leased` units of each claim's slot in `window`, whose
    /// window ends `seconds_left` from now. A lease of another window or limit is replaced; the
    /// correction answered gives back what it held in the same window (the database counted it).
    pub(super) fn grant(
        &self,
        instance: i64,
        claim: &Claim,
        window: Window,
        leased: i64,
        seconds_left: f64,
    ) -> Option<CounterDelta<Window>> {
        if leased <= 0 {
            return None;
        }
        let now = Instant::now();
        let expires = now + Duration::from_secs_f64(seconds_left.clamp(0.0, 32.0 * 86_400.0));
        let granted = Lease {
            limit: claim.limit.limit,
            window,
            expires,
            left: leased,
            touched: now,
        };
        let mut held = self.held.lock();
        let replaced = match held.get_mut(&key(instance, claim)) {
            Some(lease) if lease.window == window && lease.limit == claim.limit.limit => {
                lease.left += leased;
                lease.touched = now;
                return None;
            }
            Some(lease) => Some(std::mem::replace(lease, granted)),
            None => {
                held.insert(key(instance, claim), granted);
                None
            }
        }?;
        (replaced.window == window && replaced.left > 0).then(|| CounterDelta {
            instance,
            grantee: claim.grantee,
            limit: claim.limit,
            window,
            delta: -replaced.left,
        })
    }

    /// Removes the leases idle for [`LEASE_IDLE`] or past their window, and answers the
    /// corrections that give back the unused units of those still in their window.
    pub(super) fn give_back_idle(&self) -> Vec<CounterDelta<Window>> {
        let now = Instant::now();
        let mut returned = Vec::new();
        self.held
            .lock()
            .retain(|&(instance, grantee, metric, period), lease| {
                if lease.expires <= now {
                    return false;
                }
                if now.duration_since(lease.touched) < LEASE_IDLE {
                    return true;
                }
                if lease.left > 0 {
                    returned.push(CounterDelta {
                        instance,
                        grantee,
                        limit: QuotaLimit {
                            metric,
                            period,
                            limit: 0,
                        },
                        window: lease.window,
                        delta: -lease.left,
                    });
                }
                false
            });
        returned
    }
}
