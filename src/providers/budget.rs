//! The process-wide budget for provider reply bytes in memory (`PROVIDER_REPLY_BUDGET_BYTES`).
//! A reply's bytes are counted as they arrive, before they are kept: a call whose next chunk
//! would take the process past the budget waits briefly for others to finish, then is refused
//! with RESOURCE_EXHAUSTED. So many concurrent large replies cannot add up past the memory the
//! operator sized the process for; each reply is also held to `PROVIDER_MAX_REPLY_BYTES`.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::{
    domain::{DomainError, error::LimitReason},
    metrics::metrics,
};

/// The unit the budget is counted in: whole KiB, so that a budget of gigabytes fits the
/// semaphore's permit count.
const UNIT: usize = 1024;

/// How long a reply waits for room before its call is refused.
pub const WAIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct ReplyBudget {
    units: Arc<Semaphore>,
    total_units: usize,
}

/// The room one reply holds; given back when dropped.
#[derive(Debug, Default)]
pub struct ReplyRoom {
    permit: Option<OwnedSemaphorePermit>,
    units: usize,
}

impl ReplyBudget {
    pub fn new(bytes: usize) -> Self {
        let total_units = bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            units: Arc::new(Semaphore::new(total_units)),
            total_units,
        }
    }

    /// Grows `room` to hold `bytes` in all, waiting up to [`WAIT`] (and never past `deadline`)
    /// for others to give room back.
    pub async fn grow(
        &self,
        room: &mut ReplyRoom,
        bytes: usize,
        deadline: Instant,
    ) -> Result<(), DomainError> {
        let needed = bytes.div_ceil(UNIT);
        if needed <= room.units {
            return Ok(());
        }
        let more = needed - room.units;
        let refused = || DomainError::InstanceLimited {
            reason: LimitReason::ProviderReplyMemory,
            message: format!(
                "provider replies in flight on this replica fill its budget of {} KiB \
                 (PROVIDER_REPLY_BUDGET_BYTES); retry shortly",
                self.total_units
            ),
            retry_after: WAIT,
        };
        let count = u32::try_from(more).map_err(|_| refused())?;
        if more > self.total_units {
            return Err(refused());
        }
        let until = deadline.min(Instant::now() + WAIT);
        let permit = match tokio::time::timeout_at(
            until,
            self.units.clone().acquire_many_owned(count),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            _ => return Err(refused()),
        };
        metrics()
            .provider_reply_bytes
            .inc_by(i64::try_from(more * UNIT).unwrap_or(i64::MAX));
        match &mut room.permit {
            Some(held) => held.merge(permit),
            None => room.permit = Some(permit),
        }
        room.units = needed;
        Ok(())
    }
}

impl Drop for ReplyRoom {
    fn drop(&mut self) {
        if self.units > 0 {
            metrics()
                .provider_reply_bytes
                .dec_by(i64::try_from(self.units * UNIT).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_taken_as_bytes_arrive_and_given_back_on_drop() {
        let budget = ReplyBudget::new(8 * UNIT);
        let soon = Instant::now() + Duration::from_millis(50);
        let mut first = ReplyRoom::default();
        budget.grow(&mut first, 3 * UNIT, soon).await.unwrap();
        budget.grow(&mut first, 6 * UNIT, soon).await.unwrap();
        let mut second = ReplyRoom::default();
        assert!(matches!(
            budget.grow(&mut second, 3 * UNIT, soon).await,
            Err(DomainError::InstanceLimited {
                reason: LimitReason::ProviderReplyMemory,
                ..
            })
        ));
        drop(first);
        budget
            .grow(
                &mut second,
                8 * UNIT,
                Instant::now() + Duration::from_millis(50),
            )
            .await
            .unwrap();
        // More than the whole budget is refused at once, not waited for.
        let mut third = ReplyRoom::default();
        assert!(budget.grow(&mut third, 9 * UNIT, soon).await.is_err());
    }
}
