//! The per-instance limit of concurrent provider calls on this replica
//! (`PROVIDER_CONCURRENCY_PER_INSTANCE`): one busy instance cannot take every connection and
//! admission slot, and a provider's own concurrency limit is not hammered by one registry. A
//! call over the limit is refused at once (RESOURCE_EXHAUSTED with a retry hint) rather than
//! queued, since it would otherwise hold an admission slot while it waits.

use parking_lot::Mutex;
use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::domain::{DomainError, error::LimitReason};

/// How long a refused caller is told to wait.
const RETRY_AFTER: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct InstanceGate {
    limit: usize,
    running: Mutex<HashMap<i64, usize>>,
}

/// One running call of an instance; leaving frees its place.
#[derive(Debug)]
pub struct GatePass {
    gate: Arc<InstanceGate>,
    instance: i64,
}

impl InstanceGate {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one call of `instance` (its row id), or RESOURCE_EXHAUSTED naming `name`.
    pub fn enter(
        self: &Arc<Self>,
        instance: i64,
        name: &dyn std::fmt::Display,
    ) -> Result<GatePass, DomainError> {
        let mut running = self.running.lock();
        let count = running.entry(instance).or_insert(0);
        if *count >= self.limit {
            return Err(DomainError::InstanceLimited {
                reason: LimitReason::Concurrency,
                message: format!(
                    "{name} already has {} provider calls running on this replica \
                     (PROVIDER_CONCURRENCY_PER_INSTANCE); retry shortly",
                    self.limit
                ),
                retry_after: RETRY_AFTER,
            });
        }
        *count += 1;
        Ok(GatePass {
            gate: self.clone(),
            instance,
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.running.lock().len()
    }
}

impl Drop for GatePass {
    fn drop(&mut self) {
        let mut running = self.gate.running.lock();
        if let Some(count) = running.get_mut(&self.instance) {
            *count -= 1;
            if *count == 0 {
                // Entries live only while calls run, so the map stays as small as the traffic.
                running.remove(&self.instance);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_per_instance_and_frees_on_drop() {
        let gate = InstanceGate::new(2);
        let first = gate.enter(1, &"a");
        let second = gate.enter(1, &"a");
        assert!(first.is_ok() && second.is_ok());
        assert!(matches!(
            gate.enter(1, &"a"),
            Err(DomainError::InstanceLimited { .. })
        ));
        assert!(
            gate.enter(2, &"b").is_ok(),
            "another instance has its own places"
        );
        drop(first);
        assert!(gate.enter(1, &"a").is_ok());
        drop(second);
        assert_eq!(gate.tracked(), 0);
    }
}
