//! The read cache's memory for one kind of answer: answers tagged with the counters they were
//! read at, in two generations, and the lookup that answers only with current ones.

use std::collections::HashMap;

use super::Deps;
use crate::metrics::{KindLabel, metrics};

/// An answer and the counters it was read at.
#[derive(Debug, Clone)]
pub(super) struct Tagged<T> {
    pub(super) deps: Deps,
    pub(super) answer: T,
}

/// One kind of answer, in two generations: answers are added to the young one; when the cache
/// is full the young generation becomes the old one and the old one is dropped, and an answer
/// found in the old generation moves back to the young one. So the answers in use survive a
/// full cache (an approximation of least-recently-used with no bookkeeping per hit), where
/// starting over emptied it and every hot answer had to be read again.
#[derive(Debug)]
pub(super) struct Generations<K, T> {
    pub(super) young: HashMap<K, Tagged<T>>,
    pub(super) old: HashMap<K, Tagged<T>>,
}

impl<K, T> Default for Generations<K, T> {
    fn default() -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq, T> Generations<K, T> {
    pub(super) fn insert(&mut self, key: K, tagged: Tagged<T>) {
        self.old.remove(&key);
        self.young.insert(key, tagged);
    }

    pub(super) fn age(&mut self) {
        self.old = std::mem::take(&mut self.young);
    }

    pub(super) fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

/// Whether an answer read at `deps` is as new as everything this process heard of (`known`).
pub(super) fn is_current(known: &HashMap<i64, i64>, deps: &Deps) -> bool {
    deps.0
        .iter()
        .all(|(scope, value)| known.get(scope).is_none_or(|known| value >= known))
}

/// Looks `key` up in `map`: the answer if it is current (moved to the young generation if it
/// was in the old one), else `None` (and a stale one is dropped, counted as an invalidation).
pub(super) fn lookup<K, T>(
    known: &HashMap<i64, i64>,
    map: &mut Generations<K, T>,
    key: &K,
    kind: &'static str,
) -> Option<T>
where
    K: std::hash::Hash + Eq + Clone,
    T: Clone,
{
    let found = if let Some(tagged) = map.young.get(key) {
        if is_current(known, &tagged.deps) {
            Some(tagged.answer.clone())
        } else {
            map.young.remove(key);
            metrics().cache_invalidations.inc();
            None
        }
    } else {
        match map.old.remove(key) {
            None => None,
            Some(tagged) if is_current(known, &tagged.deps) => {
                let answer = tagged.answer.clone();
                map.young.insert(key.clone(), tagged);
                Some(answer)
            }
            Some(_) => {
                metrics().cache_invalidations.inc();
                None
            }
        }
    };
    counted(kind, found)
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
