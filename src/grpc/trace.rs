//! A span per RPC with its method, caller, status code and latency, closed by one `rpc finished`
//! event. The status is read from the response headers (errors are usually trailers-only) or,
//! for answers with a body, from the trailers as they pass.

use std::{sync::Arc, time::Instant};

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use tonic::{Code, body::Body};

use super::layer::{Middleware, Next};
use tracing::{Instrument, Span, field::Empty};

/// Opens the span of each RPC and logs its end.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcTrace;

impl Middleware for RpcTrace {
    fn call(
        self: Arc<Self>,
        request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>> {
        let span = tracing::info_span!(
            "rpc",
            method = %request.uri().path(),
            caller = Empty,
            code = Empty,
            latency_ms = Empty,
        );
        let started = Instant::now();
        Box::pin(
            async move {
                let response = next.run(request).await;
                let span = Span::current();
                if let Some(code) = status_of(response.headers()) {
                    finish(&span, code, started);
                    return response;
                }
                let (parts, body) = response.into_parts();
                let body = body.map_frame(move |frame| {
                    if let Some(trailers) = frame.trailers_ref() {
                        finish(&span, status_of(trailers).unwrap_or(Code::Unknown), started);
                    }
                    frame
                });
                Response::from_parts(parts, Body::new(body))
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
