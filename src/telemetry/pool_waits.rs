//! The database pool's acquisition times, as a metric. sqlx has no metrics of its own, but it
//! can emit one trace event per acquisition (target `sqlx::pool::acquire`, field
//! `acquired_after_secs`; switched on in `store::database::connect`). This layer, with a filter
//! of its own so that the log filter never hides those events from it, records each into
//! `llmr_db_pool_acquire_seconds`; the events reach no log.

use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, layer::Context};

use crate::metrics::metrics;

/// sqlx's target for acquisition events.
pub const POOL_ACQUIRE_TARGET: &str = "sqlx::pool::acquire";

/// The layer and the filter that routes only acquisition events to it.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    PoolWaits.with_filter(acquisitions_only())
}

/// The log filter, with acquisition events turned off whatever it says (they are metrics, not
/// log lines). A directive rather than a filter function, so that every callsite's interest
/// stays static: a dynamic filter would make the subscriber weigh every span and event of
/// every call (measured: GetInstance lost a third of its rate).
pub fn without_acquisitions(filter: EnvFilter) -> EnvFilter {
    match format!("{POOL_ACQUIRE_TARGET}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

fn acquisitions_only() -> Targets {
    Targets::new().with_target(POOL_ACQUIRE_TARGET, tracing::Level::TRACE)
}

struct PoolWaits;

impl<S: Subscriber> Layer<S> for PoolWaits {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut acquired_after = AcquiredAfter(None);
        event.record(&mut acquired_after);
        if let Some(seconds) = acquired_after.0 {
            metrics().db_pool_acquire.observe(seconds);
        }
    }
}

/// Picks `acquired_after_secs` out of an event.
struct AcquiredAfter(Option<f64>);

impl Visit for AcquiredAfter {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "acquired_after_secs" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}
