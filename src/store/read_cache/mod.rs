//! The read cache: who a token belongs to (a user, or a service account with the user it acts
//! for), GetInstance and GetProjectInstance answers, and what an Embed needs of its instance or
//! project, kept in memory so that the hottest calls need no query of their own, without ever
//! answering from stale data, on any replica, and without one tenant's writes evicting another
//! tenant's answers.
//!
//! Why it is never stale: every cached answer depends on a few *scopes* (migration
//! `read_cache_scopes`: the caller's user or service account row, the instance with its shares,
//! the project, the definition, and the API standards every tenant shares), and every
//! transaction that changes a scope bumps that scope's counter as it commits. An answer is stored with the counters of its scopes ([`Deps`]), read in the
//! same snapshot as its data. This process learns which scopes changed from
//! [`super::scope_probe`], round after round, and keeps the newest counter it heard of for each
//! ([`Entries::known`]). A call answers from the cache only after a round *sent after the call
//! arrived* has been applied ([`Fresh`]), and only with an answer whose counters are all at
//! least the known ones. A change acknowledged before the call arrived was committed before
//! that round's snapshot, so the round (or an earlier one) reported it, and an answer read
//! before it carries an older counter: it is dropped. An answer read in an even newer snapshot
//! carries newer counters, which is fine. A write touches only its own scopes, so the answers of
//! other tenants stay.
//!
//! Only answers that found something are cached, so creating a user or an instance, which
//! cannot change such an answer, bumps nothing. The cache is bounded: answers are kept in two
//! generations, and when it is full the older one is dropped ([`Generations`]: no eviction
//! bookkeeping on the hot path, and the answers in use stay); the known counters too are
//! bounded, and when they are forgotten no answer read before that moment may be added (see
//! [`ReadStart`]).

mod generations;

use parking_lot::Mutex;
use std::{collections::HashMap, sync::Arc};

use self::generations::{Generations, Tagged, is_current, lookup};
use crate::{
    domain::{
        caller::UserPrincipal, embedding::InstanceForCall, instance::Instance,
        service_account::ServiceAccountPrincipal,
    },
    metrics::metrics,
};

/// The scope of what every tenant shares (API standards).
pub const SHARED_SCOPE: i64 = 0;

/// The SQL expression for the counter of scope `kind`/`id` (an SQL expression, as a string
/// literal), or of the shared scope, for queries that tag what they read with it; 0 until the
/// scope's first change.
///
/// Inline, not through the migration's `read_cache_value()`: a SQL function holding a subquery
/// is not inlined, and PostgreSQL parses and plans its body anew in every statement that calls
/// it (a profile of the mixed load found a third of the database's time there); inline, it is
/// planned once with the prepared statement.
macro_rules! scope_counter {
    (shared) => {
        "coalesce((SELECT value FROM read_cache_scopes WHERE scope = 0), 0)"
    };
    ($kind:literal, $id:literal) => {
        concat!(
            "coalesce((SELECT value FROM read_cache_scopes WHERE scope = (",
            $kind,
            "::bigint << 56) | ",
            $id,
            "), 0)"
        )
    };
}
pub(super) use scope_counter;

/// The counters an instance answer depends on, as the columns `caller_counter` (the caller's
/// user row, whose id is the SQL expression `$caller`), `instance_counter` (the instance `x`
/// found, with its shares) and `shared_counter` (the API standards): what GetInstance and Embed
/// tag their cached answers with.
macro_rules! instance_answer_counters {
    ($caller:literal) => {
        concat!(
            $crate::store::read_cache::scope_counter!(1, $caller),
            " AS caller_counter, ",
            $crate::store::read_cache::scope_counter!(3, "x.id"),
            " AS instance_counter, ",
            $crate::store::read_cache::scope_counter!(shared),
            " AS shared_counter"
        )
    };
}
pub(super) use instance_answer_counters;

/// What a scope is one row of (migration `read_cache_scopes`, `read_cache_scope(kind, id)`).
#[derive(Debug, Clone, Copy)]
pub enum ScopeKind {
    User = 1,
    ServiceAccount = 2,
    /// An instance's row and its shares.
    Instance = 3,
    Project = 4,
    Definition = 5,
}

/// The scope of row `id` of `kind`, as the database computes it.
pub fn scope(kind: ScopeKind, id: i64) -> i64 {
    ((kind as i64) << 56) | id
}

/// The scopes an answer depends on, with their counters as read with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deps(Vec<(i64, i64)>);

impl Deps {
    pub fn new() -> Self {
        Self(Vec::with_capacity(5))
    }

    /// Adds scope `scope` read at counter `value` (nothing for a scope that is absent).
    pub fn with(mut self, scope: Option<i64>, value: i64) -> Self {
        if let Some(scope) = scope {
            self.0.push((scope, value));
        }
        self
    }
}

/// Proof that a probe round sent after the current call arrived has been applied: only with it
/// may a call answer from the cache. Made by [`super::scope_probe`] when its round for the call
/// is applied, and by the token paths (`instances::by_token`, `instances::for_call`) for a call
/// whose token the edge checked through the probe already.
#[derive(Debug, Clone, Copy)]
pub struct Fresh(());

impl Fresh {
    pub(super) fn after_a_round_applied() -> Self {
        Self(())
    }
}

/// Where the cache stood before a query was sent: an answer that query reads may be added only
/// if a round had been applied by then (the probe's watermark covers the query's snapshot) and
/// the known counters were not reset since (they would have forgotten changes the answer misses).
#[derive(Debug, Clone, Copy)]
pub struct ReadStart {
    rounds_applied: u64,
    resets: u64,
}

/// An Embed question: who asks (a user in person, by id) and which instance or project it names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallKey {
    pub user_id: i64,
    /// The full name of the instance or project.
    pub target: String,
}

/// A GetInstance question: who asks (by the hash of their token) and for which instance; or a
/// GetProjectInstance question, for which project (kept apart from the instances).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    pub token_hash: [u8; 32],
    pub owner: String,
    pub handle: String,
}

/// Which question an [`InstanceKey`] asks: GetInstance (it names the instance) or
/// GetProjectInstance (it names the project). Their answers are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAnswer {
    Instance,
    ProjectInstance,
}

impl InstanceAnswer {
    /// The `kind` label of the cache's metrics.
    fn label(self) -> &'static str {
        match self {
            Self::Instance => "instance",
            Self::ProjectInstance => "project_instance",
        }
    }
}

/// A service account question: its token hash and the user it names to act for ("" for none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountKey {
    pub token_hash: [u8; 32],
    pub act_as: String,
}

/// A service account and, when it names one, the user it acts for.
pub type AccountAnswer = (Arc<ServiceAccountPrincipal>, Option<UserPrincipal>);

/// GetInstance or GetProjectInstance answers: the caller, and the instance as they see it.
type InstanceAnswers = Generations<InstanceKey, (UserPrincipal, Instance)>;

#[derive(Debug, Default)]
struct Entries {
    /// The newest counter heard of for each scope that changed since this process started (or
    /// since the last reset).
    known: HashMap<i64, i64>,
    rounds_applied: u64,
    resets: u64,
    /// Token hash → the user holding it.
    principals: Generations<[u8; 32], UserPrincipal>,
    /// Only answers that found the user are kept: creating a user bumps nothing.
    accounts: Generations<AccountKey, AccountAnswer>,
    /// (token hash, owner, handle) → the instance as that token's user sees it.
    instances: InstanceAnswers,
    /// (token hash, project owner, project handle) → the instance bound to that project, as
    /// that token's user sees it (GetProjectInstance).
    project_instances: InstanceAnswers,
    /// (caller's user id, instance or project name) → what an Embed needs of the instance (its
    /// sealed key, never the opened one).
    call_targets: Generations<CallKey, InstanceForCall>,
}

impl Entries {
    fn len(&self) -> usize {
        self.young_len()
            + self.principals.old.len()
            + self.accounts.old.len()
            + self.instances.old.len()
            + self.project_instances.old.len()
            + self.call_targets.old.len()
    }

    fn young_len(&self) -> usize {
        self.principals.young.len()
            + self.accounts.young.len()
            + self.instances.young.len()
            + self.project_instances.young.len()
            + self.call_targets.young.len()
    }

    fn age(&mut self) {
        self.principals.age();
        self.accounts.age();
        self.instances.age();
        self.project_instances.age();
        self.call_targets.age();
    }

    /// The known counters, and the answers of `kind`.
    fn instance_answers(
        &mut self,
        kind: InstanceAnswer,
    ) -> (&HashMap<i64, i64>, &mut InstanceAnswers) {
        match kind {
            InstanceAnswer::Instance => (&self.known, &mut self.instances),
            InstanceAnswer::ProjectInstance => (&self.known, &mut self.project_instances),
        }
    }

    fn clear_answers(&mut self) {
        self.principals.clear();
        self.accounts.clear();
        self.instances.clear();
        self.project_instances.clear();
        self.call_targets.clear();
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

    /// Applies one probe round: the scopes that changed and their counters.
    pub(super) fn apply_round(&self, changed: &[(i64, i64)]) {
        let mut entries = self.entries.lock();
        for &(scope, value) in changed {
            let known = entries.known.entry(scope).or_insert(value);
            *known = (*known).max(value);
        }
        // Bounded like the answers: forgetting every counter is safe together with every
        // answer and every read in flight (`ReadStart`).
        if entries.known.len() > self.capacity.max(1024) {
            entries.known.clear();
            entries.clear_answers();
            entries.resets += 1;
            metrics().cache_invalidations.inc();
        }
        entries.rounds_applied += 1;
    }

    /// Applies a round that saw too many changes to list: every answer and every known counter
    /// is dropped, and reads in flight may not add theirs (they may predate those changes).
    pub(super) fn reset_round(&self) {
        let mut entries = self.entries.lock();
        entries.known.clear();
        entries.clear_answers();
        entries.resets += 1;
        entries.rounds_applied += 1;
        metrics().cache_invalidations.inc();
    }

    /// Where the cache stands before a query whose answer may be added.
    pub fn read_start(&self) -> ReadStart {
        let entries = self.entries.lock();
        ReadStart {
            rounds_applied: entries.rounds_applied,
            resets: entries.resets,
        }
    }

    /// The user holding this token, if known and current.
    pub fn principal(&self, _fresh: &Fresh, token_hash: &[u8; 32]) -> Option<UserPrincipal> {
        let mut entries = self.entries.lock();
        let Entries {
            known, principals, ..
        } = &mut *entries;
        lookup(known, principals, token_hash, "principal")
    }

    /// A service account and the user it names, if known and current.
    pub fn account(&self, _fresh: &Fresh, key: &AccountKey) -> Option<AccountAnswer> {
        let mut entries = self.entries.lock();
        let Entries {
            known, accounts, ..
        } = &mut *entries;
        lookup(known, accounts, key, "service_account")
    }

    /// The GetInstance or GetProjectInstance answer for this question, if known and current.
    pub fn instance(
        &self,
        _fresh: &Fresh,
        kind: InstanceAnswer,
        key: &InstanceKey,
    ) -> Option<(UserPrincipal, Instance)> {
        let mut entries = self.entries.lock();
        let (known, answers) = entries.instance_answers(kind);
        lookup(known, answers, key, kind.label())
    }

    /// What an Embed of `key` needs, if known and current.
    pub fn call_target(&self, _fresh: &Fresh, key: &CallKey) -> Option<InstanceForCall> {
        let mut entries = self.entries.lock();
        let Entries {
            known,
            call_targets,
            ..
        } = &mut *entries;
        lookup(known, call_targets, key, "call_target")
    }

    /// Remembers who holds a token, read at `deps` by a query sent after `start`.
    pub fn remember_principal(
        &self,
        start: ReadStart,
        deps: Deps,
        token_hash: [u8; 32],
        principal: UserPrincipal,
    ) {
        if let Some(mut entries) = self.room_for(start, &deps) {
            entries.principals.insert(
                token_hash,
                Tagged {
                    deps,
                    answer: principal,
                },
            );
        }
    }

    /// Remembers a service account and the user it names, read at `deps` after `start`.
    pub fn remember_account(
        &self,
        start: ReadStart,
        deps: Deps,
        key: AccountKey,
        answer: AccountAnswer,
    ) {
        if let Some(mut entries) = self.room_for(start, &deps) {
            entries.accounts.insert(key, Tagged { deps, answer });
        }
    }

    /// Remembers a GetInstance answer (which found the instance) or a GetProjectInstance
    /// answer (a bound instance the caller may see), read at `deps` after `start`; also who
    /// holds the token, which depends on the caller's scope alone (`caller_deps`).
    pub fn remember_instance(
        &self,
        start: ReadStart,
        deps: Deps,
        caller_deps: Deps,
        kind: InstanceAnswer,
        key: InstanceKey,
        answer: (UserPrincipal, Instance),
    ) {
        if let Some(mut entries) = self.room_for(start, &deps) {
            entries.principals.insert(
                key.token_hash,
                Tagged {
                    deps: caller_deps,
                    answer: answer.0.clone(),
                },
            );
            entries
                .instance_answers(kind)
                .1
                .insert(key, Tagged { deps, answer });
        }
    }

    /// Remembers what an Embed found (an instance the caller may use), read at `deps` after
    /// `start`.
    pub fn remember_call_target(
        &self,
        start: ReadStart,
        deps: Deps,
        key: CallKey,
        found: InstanceForCall,
    ) {
        if let Some(mut entries) = self.room_for(start, &deps) {
            entries.call_targets.insert(
                key,
                Tagged {
                    deps,
                    answer: found,
                },
            );
        }
    }

    /// The entries, if an answer read at `deps` by a query sent after `start` may be added to
    /// them (making room if full).
    fn room_for(
        &self,
        start: ReadStart,
        deps: &Deps,
    ) -> Option<parking_lot::MutexGuard<'_, Entries>> {
        if !self.enabled() {
            return None;
        }
        let mut entries = self.entries.lock();
        if start.rounds_applied == 0
            || start.resets != entries.resets
            || !is_current(&entries.known, deps)
        {
            return None;
        }
        // The young generation (with the answer about to be added, and a principal with it)
        // becomes the old one when it would outgrow half the cache, or the whole cache would
        // outgrow its capacity (answers moved back from the old generation count in the young
        // one); if the former young one alone is still too big, both go.
        if entries.young_len() + 2 > self.capacity.div_ceil(2) || entries.len() + 2 > self.capacity
        {
            entries.age();
            if entries.len() + 2 > self.capacity {
                entries.clear_answers();
            }
        }
        Some(entries)
    }

    /// Answers held now.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests;
