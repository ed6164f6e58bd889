//! Admission control: at most `max_running` calls run at once, at most `max_queued` more wait
//! for a turn, and anything beyond is shed at once with RESOURCE_EXHAUSTED. Without it, a burst
//! would queue on the database pool until every call timed out; with it, the calls admitted keep
//! their latency and the rest learn immediately to back off. Health and reflection are exempt, so
//! that probes still answer under overload.
//!
//! Fairness: one connection, and one caller, may hold at most a set share of the running and
//! queued slots together; beyond it their calls are shed while others still get in. Of the
//! running slots they hold at most the same share of what can actually run: their calls beyond
//! it wait in the queue while other callers' calls run. And since authentication and the
//! request body come before this layer (see [`super`]), nothing here is ever held by a caller
//! who is not known or whose body has not arrived.
//!
//! Calls that wait on a provider (Embed, TestInstance) do not take these slots: they run in a
//! pool of their own (`PROVIDER_MAX_CONCURRENT_CALLS`), and each identity of the caller (the
//! acting user, and the service account acting for them) may hold at most
//! `PROVIDER_CALLS_PER_CALLER` of its places. A slow provider then holds up only the calls
//! that use it, never a read or a write, and one caller's slow provider not everyone's Embed.
//! A call over either limit is refused at once (RESOURCE_EXHAUSTED with a retry hint): waiting
//! for a place would only pile up calls behind a provider that is already slow.
//!
//! It is also the circuit breaker for database outages: while the health watcher finds the
//! database down, calls fail at once with UNAVAILABLE instead of each waiting out the pool's
//! connect timeout; the watcher's next good ping closes the circuit again.

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;

use crate::connection::ConnectionInfo;

use super::{
    layer::{Middleware, Next},
    methods::{Method, MethodTable},
    status::to_status,
};
use crate::{
    domain::{DomainError, caller::Caller, error::LimitReason},
    metrics::{GaugeHeld, ReasonLabel, metrics},
};

/// Counts a call refused at the door.
fn shed(reason: &'static str) {
    metrics()
        .admission_shed
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

pub struct Admission {
    methods: Arc<MethodTable>,
    /// Kept by the health watcher: false while the database does not answer.
    database_up: Arc<AtomicBool>,
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queued: usize,
    per_connection: Arc<Shares>,
    per_caller: Arc<Shares>,
    providers: ProviderPool,
}

/// The places of provider calls, apart from the admission slots.
struct ProviderPool {
    places: Arc<Semaphore>,
    size: usize,
    per_identity: Arc<Shares>,
}

/// How long a caller refused a provider call place is told to wait.
const PROVIDER_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// How many slots (running or queued) each key holds, against a cap per key, and the key's
/// share of the running slots: a key over its running share waits in the queue while other
/// keys' calls still run.
struct Shares {
    cap: usize,
    run_cap: usize,
    held: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

impl Shares {
    /// `percent` of the running and queued slots in all, and of the running slots at once.
    fn new(running: usize, queued: usize, percent: u8) -> Arc<Self> {
        let share = |slots: usize| (slots * usize::from(percent) / 100).max(1);
        Arc::new(Self {
            cap: share(running + queued),
            run_cap: share(running),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A cap on the slots alone (the provider call pool's per-caller places).
    fn capped(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            run_cap: cap,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// One more slot for `key`, or `None` when it holds its whole share already.
    fn take(self: &Arc<Self>, key: String) -> Option<Held> {
        let mut held = self.held.lock();
        let (count, runs) = held
            .entry(key.clone())
            .or_insert_with(|| (0, Arc::new(Semaphore::new(self.run_cap))));
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Held {
            runs: runs.clone(),
            shares: self.clone(),
            key,
        })
    }
}

/// A slot of one key's share; given back on drop.
struct Held {
    shares: Arc<Shares>,
    key: String,
    /// The key's share of the running slots.
    runs: Arc<Semaphore>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock();
        if let Some((count, _)) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The places a running call holds: its connection's and its caller's share of the running
/// slots, and a slot.
type RunPermits = (
    OwnedSemaphorePermit,
    OwnedSemaphorePermit,
    OwnedSemaphorePermit,
);

/// The shares of one connection and one caller (in percent of the running and queued slots).
#[derive(Debug, Clone, Copy)]
pub struct FairShares {
    pub per_connection_percent: u8,
    pub per_caller_percent: u8,
}

/// The provider call pool's size and each caller identity's cap in it.
#[derive(Debug, Clone, Copy)]
pub struct ProviderCallLimits {
    pub max_concurrent: usize,
    pub per_caller: usize,
}

impl Admission {
    pub fn new(
        methods: Arc<MethodTable>,
        max_running: usize,
        max_queued: usize,
        fair: FairShares,
        provider_calls: ProviderCallLimits,
        database_up: Arc<AtomicBool>,
    ) -> Self {
        let running = max_running.max(1);
        Self {
            per_connection: Shares::new(running, max_queued, fair.per_connection_percent),
            per_caller: Shares::new(running, max_queued, fair.per_caller_percent),
            providers: ProviderPool {
                places: Arc::new(Semaphore::new(provider_calls.max_concurrent.max(1))),
                size: provider_calls.max_concurrent.max(1),
                per_identity: Shares::capped(provider_calls.per_caller.max(1)),
            },
            methods,
            database_up,
            running: Arc::new(Semaphore::new(max_running.max(1))),
            waiting: AtomicUsize::new(0),
            max_queued,
        }
    }
}

impl Middleware for Admission {
    fn call(
        self: Arc<Self>,
        request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>> {
        let method = self.methods.of(&request);
        if matches!(method, Method::Public) {
            return Box::pin(next.run(request));
        }
        if !self.database_up.load(Ordering::SeqCst) {
            shed("circuit_open");
            return Box::pin(async { to_status(DomainError::Unavailable).into_http() });
        }
        if let Method::Ours(facts) = method
            && facts.calls_provider
        {
            return self.provider_call(request, next);
        }
        let connection = request
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|info| info.tcp.remote_addr())
            .map(|addr| addr.to_string())
            .unwrap_or_default();
        let caller = request
            .extensions()
            .get::<Caller>()
            .map(Caller::label)
            .unwrap_or_default();
        let (Some(connection_share), Some(caller_share)) = (
            self.per_connection.take(connection),
            self.per_caller.take(caller),
        ) else {
            shed("fair_share");
            return Box::pin(async { to_status(DomainError::Overloaded).into_http() });
        };
        Box::pin(async move {
            let permits = match self.run_now(&connection_share, &caller_share) {
                Some(permits) => permits,
                None => {
                    // Count ourselves in the queue; leave at once if it is full.
                    if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
                        self.waiting.fetch_sub(1, Ordering::SeqCst);
                        shed("queue_full");
                        return to_status(DomainError::Overloaded).into_http();
                    }
                    let queued = GaugeHeld::hold(&metrics().admission_queued);
                    let acquired = self.run_when_free(&connection_share, &caller_share).await;
                    drop(queued);
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    match acquired {
                        Some(permits) => permits,
                        None => return to_status(DomainError::Overloaded).into_http(),
                    }
                }
            };
            let running = GaugeHeld::hold(&metrics().admission_running);
            let response = next.run(request).await;
            drop(running);
            drop(permits);
            drop((connection_share, caller_share));
            response
        })
    }
}

impl Admission {
    /// The places to run at once, if the connection and the caller are within their shares of
    /// the running slots and a slot is free.
    fn run_now(&self, connection: &Held, caller: &Held) -> Option<RunPermits> {
        Some((
            connection.runs.clone().try_acquire_owned().ok()?,
            caller.runs.clone().try_acquire_owned().ok()?,
            self.running.clone().try_acquire_owned().ok()?,
        ))
    }

    /// The places to run, waiting for each in one order: the caller's share first (a call waiting
    /// for it holds nothing anyone else needs), then the connection's, then a slot; a call holds
    /// a connection's place only on its way to a slot, so no two calls wait for each other.
    async fn run_when_free(&self, connection: &Held, caller: &Held) -> Option<RunPermits> {
        let caller = caller.runs.clone().acquire_owned().await.ok()?;
        let connection = connection.runs.clone().acquire_owned().await.ok()?;
        let slot = self.running.clone().acquire_owned().await.ok()?;
        Some((connection, caller, slot))
    }
}

impl Admission {
    /// A call that waits on a provider: a place in the provider pool, within each of the
    /// caller's identities' caps, or RESOURCE_EXHAUSTED at once.
    fn provider_call(
        self: Arc<Self>,
        request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>> {
        let pool = &self.providers;
        let identities = request
            .extensions()
            .get::<Caller>()
            .map(provider_identities)
            .unwrap_or_default();
        let mut shares = Vec::with_capacity(identities.len());
        for identity in identities {
            match pool.per_identity.take(identity.clone()) {
                Some(held) => shares.push(held),
                None => {
                    shed("provider_calls_per_caller");
                    let refused = DomainError::InstanceLimited {
                        reason: LimitReason::CallerProviderCalls,
                        message: format!(
                            "{identity} already has {} provider calls running on this replica \
                             (PROVIDER_CALLS_PER_CALLER); retry shortly",
                            pool.per_identity.cap
                        ),
                        retry_after: PROVIDER_RETRY_AFTER,
                    };
                    return Box::pin(async move { to_status(refused).into_http() });
                }
            }
        }
        let Ok(place) = pool.places.clone().try_acquire_owned() else {
            shed("provider_pool_full");
            let refused = DomainError::InstanceLimited {
                reason: LimitReason::ProviderPool,
                message: format!(
                    "all {} provider call places of this replica are taken \
                     (PROVIDER_MAX_CONCURRENT_CALLS); retry shortly",
                    pool.size
                ),
                retry_after: PROVIDER_RETRY_AFTER,
            };
            return Box::pin(async move { to_status(refused).into_http() });
        };
        Box::pin(async move {
            let in_flight = GaugeHeld::hold(&metrics().provider_calls_in_flight);
            let response = next.run(request).await;
            drop((in_flight, place, shares));
            response
        })
    }
}

/// Every identity a provider call counts against: the user it is made for, and the service
/// account making it for them, so that an account cannot take a whole pool by acting for many
/// users, nor a user by calling through many accounts.
fn provider_identities(caller: &Caller) -> Vec<String> {
    match caller {
        Caller::Admin => vec!["admin".to_owned()],
        Caller::User(user) => {
            let mut identities = vec![format!("users/{}", user.handle)];
            if let Some(account) = &user.via {
                identities.push(format!("serviceAccounts/{}", account.handle));
            }
            identities
        }
        Caller::ServiceAccount(account) => vec![format!("serviceAccounts/{}", account.handle)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        caller::UserPrincipal,
        names::Handle,
        service_account::{Permission, ServiceAccountPrincipal},
    };

    fn handle(text: &str) -> Handle {
        Handle::parse("h", text).unwrap()
    }

    #[test]
    fn an_acting_call_counts_against_the_user_and_the_account() {
        let account = Arc::new(ServiceAccountPrincipal {
            id: 1,
            handle: handle("gateway"),
            permissions: vec![Permission::ActAsUser],
            act_for_users: vec![],
            client_certificate_subject: None,
        });
        let alice = UserPrincipal::new(2, handle("alice"), false);
        assert_eq!(
            provider_identities(&Caller::User(alice.clone().acted_for_by(account.clone()))),
            ["users/alice", "serviceAccounts/gateway"]
        );
        assert_eq!(provider_identities(&Caller::User(alice)), ["users/alice"]);
        assert_eq!(
            provider_identities(&Caller::ServiceAccount(account)),
            ["serviceAccounts/gateway"]
        );
    }

    #[tokio::test]
    async fn a_key_runs_at_most_its_share_of_the_running_slots_and_queues_the_rest() {
        // 4 running slots, 8 queued, 50 %: 6 slots in all, 2 of them running.
        let shares = Shares::new(4, 8, 50);
        let held: Vec<Held> = (0..6)
            .map(|_| shares.take("alice".into()).unwrap())
            .collect();
        assert!(
            shares.take("alice".into()).is_none(),
            "the whole share is held"
        );
        let running: Vec<_> = held
            .iter()
            .filter_map(|h| h.runs.clone().try_acquire_owned().ok())
            .collect();
        assert_eq!(running.len(), 2);
        assert!(
            shares.take("bob".into()).is_some(),
            "another key has its own share"
        );
        drop(running);
        drop(held);
        assert!(shares.held.lock().is_empty(), "nothing kept for idle keys");
    }
}
