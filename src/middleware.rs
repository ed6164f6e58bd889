//! The shape shared by every tower layer of the server: an async function of the request and
//! the rest of the stack. Each layer (trace, admission, authentication, refusal audit, `_system`
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

/// gRPC frames start with a 1-byte compression flag and a 4-byte big-endian length.
pub const FRAME_HEADER_LEN: usize = 5;

/// Buffers a unary request body of at most `max_message_bytes` (plus its frame header):
/// RESOURCE_EXHAUSTED when it is larger, INVALID_ARGUMENT when it cannot be read.
pub async fn read_body(
    body: Body,
    max_message_bytes: usize,
) -> Result<bytes::Bytes, crate::domain::DomainError> {
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    match Limited::new(body, max_message_bytes + FRAME_HEADER_LEN)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(crate::domain::DomainError::TooLarge(max_message_bytes))
        }
        Err(_) => Err(crate::domain::DomainError::invalid(
            "",
            "the request body could not be read",
        )),
    }
}

/// Rebuilds a request around a buffered body.
pub fn with_body(parts: http::request::Parts, bytes: bytes::Bytes) -> Request<Body> {
    Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)))
}

/// A request message already decoded by an outer layer, so that inner layers need not buffer and
/// decode the body again.
#[derive(Clone)]
pub struct DecodedRequest(pub prost_reflect::DynamicMessage);

/// Decodes one uncompressed unary gRPC frame as a message of type `input`.
pub fn decode_frame(
    input: &prost_reflect::MessageDescriptor,
    body: &[u8],
) -> Result<prost_reflect::DynamicMessage, crate::domain::DomainError> {
    use crate::domain::DomainError;
    let malformed = || DomainError::invalid("", "the request is not a well-formed gRPC message");
    if body.len() < FRAME_HEADER_LEN {
        return Err(malformed());
    }
    if body[0] != 0 {
        return Err(DomainError::invalid(
            "",
            "compressed requests are not accepted",
        ));
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != FRAME_HEADER_LEN + length {
        return Err(malformed());
    }
    prost_reflect::DynamicMessage::decode(input.clone(), &body[FRAME_HEADER_LEN..])
        .map_err(|_| malformed())
}
