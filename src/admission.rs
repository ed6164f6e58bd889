//! Admission control: at most `max_running` calls run at once, at most `max_queued` more wait
//! for a turn, and anything beyond is shed at once with RESOURCE_EXHAUSTED. Without it, a burst
//! would queue on the database pool until every call timed out; with it, the calls admitted keep
//! their latency and the rest learn immediately to back off. Health and reflection are exempt, so
//! that probes still answer under overload.
//!
//! It is also the circuit breaker for database outages: while the health watcher finds the
//! database down, calls fail at once with UNAVAILABLE instead of each waiting out the pool's
//! connect timeout; the watcher's next good ping closes the circuit again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::{api::status::to_status, auth::is_public_path, domain::DomainError};

pub struct Admission {
    /// Kept by the health watcher: false while the database does not answer.
    database_up: Arc<AtomicBool>,
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queued: usize,
}

impl Admission {
    pub fn new(max_running: usize, max_queued: usize, database_up: Arc<AtomicBool>) -> Self {
        Self {
            database_up,
            running: Arc::new(Semaphore::new(max_running.max(1))),
            waiting: AtomicUsize::new(0),
            max_queued,
        }
    }
}

#[derive(Clone)]
pub struct AdmissionLayer {
    admission: Arc<Admission>,
}

impl AdmissionLayer {
    pub fn new(admission: Arc<Admission>) -> Self {
        Self { admission }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            admission: self.admission.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S> Service<Request<Body>> for AdmissionService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if is_public_path(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        if !self.admission.database_up.load(Ordering::SeqCst) {
            return Box::pin(async { Ok(to_status(DomainError::Unavailable).into_http()) });
        }
        let admission = self.admission.clone();
        Box::pin(async move {
            let permit = match admission.running.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Count ourselves in the queue; leave at once if it is full.
                    if admission.waiting.fetch_add(1, Ordering::SeqCst) >= admission.max_queued {
                        admission.waiting.fetch_sub(1, Ordering::SeqCst);
                        return Ok(to_status(DomainError::Overloaded).into_http());
                    }
                    let acquired = admission.running.clone().acquire_owned().await;
                    admission.waiting.fetch_sub(1, Ordering::SeqCst);
                    match acquired {
                        Ok(permit) => permit,
                        Err(_) => return Ok(to_status(DomainError::Overloaded).into_http()),
                    }
                }
            };
            let response = inner.call(request).await;
            drop(permit);
            response
        })
    }
}
