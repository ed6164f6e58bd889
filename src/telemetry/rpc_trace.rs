//! A span per RPC with its method, caller, status code and latency, closed by one `rpc finished`
//! event. The status is read from the response headers (errors are usually trailers-only) or,
//! for answers with a body, from the trailers as they pass.

use std::{
    task::{Context, Poll},
    time::Instant,
};

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use tonic::{Code, body::Body};
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty};

#[derive(Clone, Copy, Debug, Default)]
pub struct RpcTraceLayer;

impl<S> Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTrace { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RpcTrace<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for RpcTrace<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let span = tracing::info_span!(
            "rpc",
            method = %request.uri().path(),
            caller = Empty,
            code = Empty,
            latency_ms = Empty,
        );
        let started = Instant::now();
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = future.await?;
                let span = Span::current();
                if let Some(code) = status_of(response.headers()) {
                    finish(&span, code, started);
                    return Ok(response);
                }
                let (parts, body) = response.into_parts();
                let body = body.map_frame(move |frame| {
                    if let Some(trailers) = frame.trailers_ref() {
                        finish(&span, status_of(trailers).unwrap_or(Code::Unknown), started);
                    }
                    frame
                });
                Ok(Response::from_parts(parts, Body::new(body)))
            }
            .instrument(span),
        )
    }
}

fn status_of(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

fn finish(span: &Span, code: Code, started: Instant) {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.record("code", format!("{code:?}"));
    span.record("latency_ms", latency_ms);
    span.in_scope(|| match code {
        Code::Internal | Code::Unknown | Code::DataLoss => tracing::error!("rpc finished"),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
            tracing::warn!("rpc finished")
        }
        _ => tracing::info!("rpc finished"),
    });
}
