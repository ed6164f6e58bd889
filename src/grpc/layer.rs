//! The shape shared by every tower layer of the edge: an async function of the request and the
//! rest of the stack. Each layer (trace, admission, authentication, refusal audit, `_system`
//! guard) implements [`Middleware`]; [`MiddlewareLayer`] does the tower plumbing once.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt, util::BoxCloneService};

/// The rest of the stack, below a middleware.
pub struct Next(BoxCloneService<Request<Body>, Response<Body>, Infallible>);

impl Next {
    /// Passes the request on and waits for the answer.
    pub async fn run(self, request: Request<Body>) -> Response<Body> {
        match self.0.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// One layer's behaviour: answer itself, or pass the request to `next` (and look at the answer).
pub trait Middleware: Send + Sync + 'static {
    fn call(
        self: Arc<Self>,
        request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>>;
}

/// Turns a [`Middleware`] into a tower layer.
pub struct MiddlewareLayer<M> {
    middleware: Arc<M>,
}

impl<M> MiddlewareLayer<M> {
    pub fn new(middleware: M) -> Self {
        Self {
            middleware: Arc::new(middleware),
        }
    }
}

impl<M> Clone for MiddlewareLayer<M> {
    fn clone(&self) -> Self {
        Self {
            middleware: self.middleware.clone(),
        }
    }
}

impl<M, S> Layer<S> for MiddlewareLayer<M>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Service = MiddlewareService<M>;

    fn layer(&self, inner: S) -> Self::Service {
        MiddlewareService {
            middleware: self.middleware.clone(),
            inner: BoxCloneService::new(inner),
        }
    }
}

pub struct MiddlewareService<M> {
    middleware: Arc<M>,
    inner: BoxCloneService<Request<Body>, Response<Body>, Infallible>,
}

impl<M> Clone for MiddlewareService<M> {
    fn clone(&self) -> Self {
        Self {
            middleware: self.middleware.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<M: Middleware> Service<Request<Body>> for MiddlewareService<M> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one that must serve this call.
        let clone = self.inner.clone();
        let next = Next(std::mem::replace(&mut self.inner, clone));
        let answer = self.middleware.clone().call(request, next);
        Box::pin(async move { Ok(answer.await) })
    }
}
