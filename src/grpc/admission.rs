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

use crate::tls::TlsConnectInfo;

use super::{
    layer::{Middleware, Next},
    methods::{Method, MethodTable},
    status::to_status,
};
use crate::{
    domain::{DomainError, caller::Caller},
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
}

/// How many slots (running or queued) each key holds, against a cap per key.
struct Shares {
    cap: usize,
    held: Mutex<HashMap<String, usize>>,
}

impl Shares {
    fn new(total: usize, percent: u8) -> Arc<Self> {
        Arc::new(Self {
            cap: (total * usize::from(percent) / 100).max(1),
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

impl Admission {
    pub fn new(
        methods: Arc<MethodTable>,
        max_running: usize,
        max_queued: usize,
        fair: FairShares,
        database_up: Arc<AtomicBool>,
    ) -> Self {
        let total = max_running.max(1) + max_queued;
        Self {
            per_connection: Shares::new(total, fair.per_connection_percent),
            per_caller: Shares::new(total, fair.per_caller_percent),
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
        if matches!(self.methods.lookup(request.uri().path()), Method::Public) {
            return Box::pin(next.run(request));
        }
        if !self.database_up.load(Ordering::SeqCst) {
            shed("circuit_open");
            return Box::pin(async { to_status(DomainError::Unavailable).into_http() });
        }
        let extensions = request.extensions();
        let connection = extensions
            .get::<TcpConnectInfo>()
            .or_else(|| extensions.get::<TlsConnectInfo>().map(|info| &info.tcp))
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
