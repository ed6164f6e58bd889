//! Admission control: at most `max_running` calls run at once, at most `max_queued` more wait
//! for a turn, and anything beyond is shed at once with RESOURCE_EXHAUSTED. Without it, a burst
//! would queue on the database pool until every call timed out; with it, the calls admitted keep
//! their latency and the rest learn immediately to back off. Health and reflection are exempt, so
//! that probes still answer under overload.
//!
//! It is also the circuit breaker for database outages: while the health watcher finds the
//! database down, calls fail at once with UNAVAILABLE instead of each waiting out the pool's
//! connect timeout; the watcher's next good ping closes the circuit again.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::body::Body;

use super::{
    layer::{Middleware, Next},
    methods::{Method, MethodTable},
    status::to_status,
};
use crate::domain::DomainError;

pub struct Admission {
    methods: Arc<MethodTable>,
    /// Kept by the health watcher: false while the database does not answer.
    database_up: Arc<AtomicBool>,
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queued: usize,
}

impl Admission {
    pub fn new(
        methods: Arc<MethodTable>,
        max_running: usize,
        max_queued: usize,
        database_up: Arc<AtomicBool>,
    ) -> Self {
        Self {
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
            return Box::pin(async { to_status(DomainError::Unavailable).into_http() });
        }
        Box::pin(async move {
            let permit = match self.running.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Count ourselves in the queue; leave at once if it is full.
                    if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
                        self.waiting.fetch_sub(1, Ordering::SeqCst);
                        return to_status(DomainError::Overloaded).into_http();
                    }
                    let acquired = self.running.clone().acquire_owned().await;
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    match acquired {
                        Ok(permit) => permit,
                        Err(_) => return to_status(DomainError::Overloaded).into_http(),
                    }
                }
            };
            let response = next.run(request).await;
            drop(permit);
            response
        })
    }
}
