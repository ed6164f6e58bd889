//! The version of an instance that a caller last wrote, kept in memory so that the same
//! caller's next update of it can start from it instead of reading the database first (an
//! update is then one statement).
//!
//! A hint is never trusted. The write that follows lands only if the row is still at the
//! hinted version and the caller's share still gives the hinted role (see
//! [`super::write`]); a refusal decided on a hint (an etag that does not match it, a field the
//! hinted version forbids) is decided again on a read from the database. So a stale hint
//! (another replica's write, a revoked share, a deleted instance) costs one more round trip and
//! never a wrong answer. Hints hold what the caller may see of the instance and nothing secret
//! (no key, sealed or not).

use parking_lot::Mutex;
use std::collections::HashMap;

use crate::domain::{caller::Caller, instance::Instance, names::InstanceName};

/// Hints kept at most; beyond, the map starts over (no eviction bookkeeping on the write path).
const CAPACITY: usize = 4096;

/// Who sees the instance (the caller's user id, or none for the configured administrator;
/// whether the caller is an administrator) and its name.
pub type HintKey = (Option<i64>, bool, String);

#[derive(Debug, Default)]
pub struct UpdateHints {
    entries: Mutex<HashMap<HintKey, Instance>>,
}

impl UpdateHints {
    /// The key of `caller`'s hint for `name`; none for a service account on its own (which
    /// writes no instance).
    pub fn key(caller: &Caller, name: &InstanceName) -> Option<HintKey> {
        match caller {
            Caller::Admin => Some((None, true, name.to_string())),
            Caller::User(user) => Some((Some(user.id), user.is_admin, name.to_string())),
            Caller::ServiceAccount(_) => None,
        }
    }

    /// Takes the hint (a concurrent update by the same caller reads the database instead).
    pub fn take(&self, key: &HintKey) -> Option<Instance> {
        self.entries.lock().remove(key)
    }

    /// Keeps `instance`, just written by the caller of `key`, for its next update.
    pub fn keep(&self, key: HintKey, instance: Instance) {
        let mut entries = self.entries.lock();
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(key, instance);
    }
}
