//! The read cache: who a token belongs to (a user, or a service account with the user it acts
//! for), GetInstance answers, and what an Embed needs of its instance, kept in memory so that the hottest calls need no query of their own, without ever
//! answering from stale data.
//!
//! Why it is never stale, even with several replicas: every transaction that could change a
//! cached answer bumps a counter in the database, the epoch, as it commits (migration
//! `read_cache_epoch`; the epoch grows in commit order). Each entry is tagged with the epoch read
//! in the same snapshot as its data. Before answering from the cache, a call waits for a fresh
//! read of the epoch that was *sent after the call arrived* ([`super::epoch_probe`]); if the
//! epoch moved, the cache is emptied first. A change acknowledged before the call arrived has
//! committed before that read, so the read sees its bump and no entry from before it survives.
//! An entry tagged with a newer epoch than that read comes from an even newer snapshot, which is
//! fine. Only answers that found something are cached, so creating a user or an instance, which
//! cannot change such an answer, needs no bump. An Embed's answer also depends on the instance's
//! API standard, the definition it came from and, for a project, the project's binding: those
//! tables bump the epoch too (migration `embeddings`).
//!
//! The cache is bounded: when it is full it starts over (no eviction bookkeeping on the hot path).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{
    domain::{
        caller::UserPrincipal, embedding::InstanceForCall, instance::Instance,
        service_account::ServiceAccountPrincipal,
    },
    metrics::{KindLabel, metrics},
};

/// The answers the cache holds, at one epoch.
#[derive(Debug, Default)]
struct Entries {
    epoch: i64,
    /// Token hash → the user holding it.
    principals: HashMap<[u8; 32], UserPrincipal>,
    /// (service account token hash, handle of the user it names to act for, "" for none) → the
    /// account and that user. Only answers that found the user are kept: creating a user does
    /// not move the epoch.
    accounts: HashMap<AccountKey, AccountAnswer>,
    /// (token hash, owner, handle) → the instance as that token's user sees it.
    instances: HashMap<InstanceKey, (UserPrincipal, Instance)>,
    /// (caller's user id, instance or project name) → what an Embed needs of the instance (its
    /// sealed key, never the opened one).
    call_targets: HashMap<CallKey, InstanceForCall>,
}

/// A service account question: its token hash and the user it names to act for ("" for none).
pub type AccountKey = ([u8; 32], String);

/// A service account and, when it names one, the user it acts for.
pub type AccountAnswer = (Arc<ServiceAccountPrincipal>, Option<UserPrincipal>);

/// An Embed question: who asks (user id) and which instance or project it names.
pub type CallKey = (i64, String);

/// A GetInstance question: who asks (by token hash) and for which instance.
pub type InstanceKey = ([u8; 32], String, String);

impl Entries {
    /// Moves to `epoch` if it is newer, dropping every answer of the older one. Returns whether
    /// answers tagged `epoch` belong here now.
    fn observe(&mut self, epoch: i64) -> bool {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.clear();
            metrics().cache_invalidations.inc();
        }
        epoch == self.epoch
    }

    fn clear(&mut self) {
        self.principals.clear();
        self.accounts.clear();
        self.instances.clear();
        self.call_targets.clear();
    }

    fn len(&self) -> usize {
        self.principals.len() + self.accounts.len() + self.instances.len() + self.call_targets.len()
    }
}

/// See the module documentation. Shared by all calls of one process.
#[derive(Debug)]
pub struct ReadCache {
    capacity: usize,
    entries: Mutex<Entries>,
}

impl ReadCache {
    /// A cache of at most `capacity` answers; 0 turns it off.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(Entries::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The user holding this token, if known at `fresh_epoch` (an epoch read after the call
    /// arrived) or later.
    pub fn principal(&self, fresh_epoch: i64, token_hash: &[u8; 32]) -> Option<UserPrincipal> {
        let mut entries = self.lock()?;
        entries.observe(fresh_epoch);
        counted("principal", entries.principals.get(token_hash).cloned())
    }

    /// The service account holding a token, and the user it names, if known at `fresh_epoch`
    /// or later.
    pub fn account(&self, fresh_epoch: i64, key: &AccountKey) -> Option<AccountAnswer> {
        let mut entries = self.lock()?;
        entries.observe(fresh_epoch);
        counted("service_account", entries.accounts.get(key).cloned())
    }

    /// Remembers a service account and the user it names, as read at `epoch`.
    pub fn remember_account(&self, epoch: i64, key: AccountKey, answer: AccountAnswer) {
        if let Some(mut entries) = self.room_at(epoch) {
            entries.accounts.insert(key, answer);
        }
    }

    /// The GetInstance answer for this question, if known at `fresh_epoch` or later.
    pub fn instance(
        &self,
        fresh_epoch: i64,
        key: &InstanceKey,
    ) -> Option<(UserPrincipal, Instance)> {
        let mut entries = self.lock()?;
        entries.observe(fresh_epoch);
        counted("instance", entries.instances.get(key).cloned())
    }

    /// What an Embed of `key` needs, if known at `fresh_epoch` or later.
    pub fn call_target(&self, fresh_epoch: i64, key: &CallKey) -> Option<InstanceForCall> {
        let mut entries = self.lock()?;
        entries.observe(fresh_epoch);
        counted("call_target", entries.call_targets.get(key).cloned())
    }

    /// Remembers what an Embed found (an instance the caller may use), as read at `epoch`.
    pub fn remember_call_target(&self, epoch: i64, key: CallKey, found: InstanceForCall) {
        if let Some(mut entries) = self.room_at(epoch) {
            entries.call_targets.insert(key, found);
        }
    }

    /// Remembers who holds a token, as read at `epoch` (in the same snapshot).
    pub fn remember_principal(&self, epoch: i64, token_hash: [u8; 32], principal: UserPrincipal) {
        if let Some(mut entries) = self.room_at(epoch) {
            entries.principals.insert(token_hash, principal);
        }
    }

    /// Remembers a GetInstance answer (which found the instance), as read at `epoch`.
    pub fn remember_instance(
        &self,
        epoch: i64,
        key: InstanceKey,
        answer: (UserPrincipal, Instance),
    ) {
        if let Some(mut entries) = self.room_at(epoch) {
            entries.principals.insert(key.0, answer.0.clone());
            entries.instances.insert(key, answer);
        }
    }

    /// The entries, if an answer read at `epoch` may be added to them (making room if full).
    fn room_at(&self, epoch: i64) -> Option<std::sync::MutexGuard<'_, Entries>> {
        if !self.enabled() {
            return None;
        }
        let mut entries = self.lock()?;
        if !entries.observe(epoch) {
            return None;
        }
        if entries.len() + 2 > self.capacity {
            entries.clear();
        }
        Some(entries)
    }

    /// Answers held now.
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |entries| entries.len())
    }

    /// The entries; `None` (a miss) if a panic elsewhere poisoned the lock, which never happens
    /// while holding it here, but a miss is always a safe answer.
    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Entries>> {
        self.entries.lock().ok()
    }
}

/// Counts a lookup of `kind` as a hit or a miss.
fn counted<T>(kind: &'static str, found: Option<T>) -> Option<T> {
    let metrics = metrics();
    let family = if found.is_some() {
        &metrics.cache_hits
    } else {
        &metrics.cache_misses
    };
    family.get_or_create(&KindLabel { kind }).inc();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::names::Handle;

    fn alice() -> UserPrincipal {
        UserPrincipal::new(7, Handle::parse("user", "alice").unwrap(), false)
    }

    #[test]
    fn a_newer_epoch_drops_every_answer() {
        let cache = ReadCache::new(100);
        cache.remember_principal(5, [1; 32], alice());
        assert!(cache.principal(5, &[1; 32]).is_some());
        // A fresh read of an older epoch cannot happen after a newer one, but it must not lose
        // newer answers either: they come from newer snapshots.
        assert!(cache.principal(4, &[1; 32]).is_some());
        assert!(cache.principal(6, &[1; 32]).is_none());
        // An answer read before the move is not taken.
        cache.remember_principal(5, [1; 32], alice());
        assert!(cache.principal(6, &[1; 32]).is_none());
        // One read after it is.
        cache.remember_principal(7, [1; 32], alice());
        assert!(cache.principal(6, &[1; 32]).is_some());
    }

    #[test]
    fn a_full_cache_starts_over_and_zero_capacity_turns_it_off() {
        let cache = ReadCache::new(3);
        for n in 0..3u8 {
            cache.remember_principal(1, [n; 32], alice());
        }
        assert!(
            cache.principal(1, &[0; 32]).is_none(),
            "started over when full"
        );
        assert!(cache.principal(1, &[2; 32]).is_some());
        let off = ReadCache::new(0);
        off.remember_principal(1, [0; 32], alice());
        assert!(off.principal(1, &[0; 32]).is_none());
    }
}
