//! The background work of wrapped keys while serving: the transit token renewed before it
//! expires, and a primary data key made by `rotate-keys` adopted. When transit cannot be
//! reached the service keeps serving with the data keys it holds, says so in its log and in
//! `llmr_transit_token_renewal_failing`, and only what needs transit (a data key it has not
//! met) fails, with UNAVAILABLE.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::Keys;
use crate::metrics::metrics;

/// How soon a failed renewal is tried again.
const RENEWAL_RETRY: Duration = Duration::from_secs(5);

/// Starts the upkeep of `keys` if they are wrapped; `refresh_every` is how often the database's
/// primary data key is compared with the ring's.
pub fn spawn_upkeep(
    keys: &Arc<Keys>,
    refresh_every: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    keys.wrapped.as_ref()?;
    let keys = Arc::clone(keys);
    Some(tokio::spawn(async move {
        let Some(wrapped) = keys.wrapped.as_ref() else {
            return;
        };
        let mut renew_at = Some(Instant::now());
        let mut failing = false;
        let mut next_refresh = Instant::now() + refresh_every;
        loop {
            let now = Instant::now();
            if renew_at.is_some_and(|at| at <= now) {
                renew_at = match wrapped.wrapper.keep_alive().await {
                    Ok(next) => {
                        if failing {
                            tracing::info!("the transit token is renewed again");
                        }
                        failing = false;
                        next.map(|after| Instant::now() + after)
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(
                                "renewing the transit token failed; serving with the data keys in \
                                 hand, and only a data key not yet met will fail: {error}"
                            );
                        }
                        failing = true;
                        Some(Instant::now() + RENEWAL_RETRY)
                    }
                };
                metrics()
                    .transit_token_renewal_failing
                    .set(i64::from(failing));
            }
            if next_refresh <= now {
                if let Err(error) = wrapped.adopt_primary(&keys.held).await {
                    tracing::warn!("checking for a new primary data key failed: {error:#}");
                }
                next_refresh = Instant::now() + refresh_every;
            }
            let wake = renew_at.map_or(next_refresh, |at| at.min(next_refresh));
            tokio::time::sleep_until(wake).await;
        }
    }))
}
