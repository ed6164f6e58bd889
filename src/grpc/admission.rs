//! Admission control: at most `max_running` calls run at once, at most `max_queued` more wait
//! for a turn, and anything beyond is shed at once with RESOURCE_EXHAUSTED. Without it, a burst
//! would queue on the database pool until every call timed out; with it, the calls admitted keep
//! their latency and the rest learn immediately to back off. Health and reflection are exempt, so
//! that probes still answer under overload.
//!
//! Fairness: one connection, and one caller, may hold at most a set share of the running and
//! queued slots together; beyond it their calls are shed while others still get in. And since
//! authentication and the request body come before this layer (see [`super`]), nothing here is
//! ever held by a caller who is not known or whose body has not arrived.
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

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::{body::Body, transport::server::TcpConnectInfo};

use crate::tls::ConnectionInfo;

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

/// How many slots (running or queued) each key holds, against a cap per key.
struct Shares {
    cap: usize,
    held: Mutex<HashMap<String, usize>>,
}

impl Shares {
    fn new(total: usize, percent: u8) -> Arc<Self> {
        Self::capped((total * usize::from(percent) / 100).max(1))
    }

    fn capped(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// One more slot for `key`, or `None` when it holds its whole share already.
    fn take(self: &Arc<Self>, key: String) -> Option<Held> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Held {
            shares: self.clone(),
            key,
        })
    }
}

/// A slot of one key's share; given back on drop.
struct Held {
    shares: Arc<Shares>,
    key: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self
            .shares
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

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
        let total = max_running.max(1) + max_queued;
        Self {
            per_connection: Shares::new(total, fair.per_connection_percent),
            per_caller: Shares::new(total, fair.per_caller_percent),
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
        let method = self.methods.lookup(request.uri().path());
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
        let extensions = request.extensions();
        let connection = extensions
            .get::<TcpConnectInfo>()
            .or_else(|| extensions.get::<ConnectionInfo>().map(|info| &info.tcp))
            .and_then(TcpConnectInfo::remote_addr)
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
            let permit = match self.running.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Count ourselves in the queue; leave at once if it is full.
                    if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
                        self.waiting.fetch_sub(1, Ordering::SeqCst);
                        shed("queue_full");
                        return to_status(DomainError::Overloaded).into_http();
                    }
                    let queued = GaugeHeld::hold(&metrics().admission_queued);
                    let acquired = self.running.clone().acquire_owned().await;
                    drop(queued);
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    match acquired {
                        Ok(permit) => permit,
                        Err(_) => return to_status(DomainError::Overloaded).into_http(),
                    }
                }
            };
            let running = GaugeHeld::hold(&metrics().admission_running);
            let response = next.run(request).await;
            drop(running);
            drop(permit);
            drop((connection_share, caller_share));
            response
        })
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
