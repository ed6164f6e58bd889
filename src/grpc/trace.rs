//! A span per RPC with its method, caller, status code and latency, closed by one `rpc finished`
//! event. The status is read from the response headers (errors are usually trailers-only) or,
//! for answers with a body, from the trailers as they pass.
//!
//! The span carries the call's W3C trace context: the caller's `traceparent` (trace id and its
//! span id as `parent_span_id`) or a new trace, and our own `span_id`. The context is also put in
//! the request's extensions, so that outgoing provider calls carry a child `traceparent`.

use std::{sync::Arc, time::Instant};

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use tonic::{Code, body::Body};

use super::{
    layer::{Middleware, Next},
    methods::{Method, MethodTable},
};
use crate::{
    metrics::{MethodLabel, RpcLabels, method_label, metrics},
    rpc::code_name,
    trace_context::TraceContext,
};
use tracing::{Instrument, Span, field::Empty};

/// Opens the span of each RPC, logs its end and counts it in the metrics.
#[derive(Debug)]
pub struct RpcTrace {
    methods: Arc<MethodTable>,
}

impl RpcTrace {
    pub fn new(methods: Arc<MethodTable>) -> Self {
        Self { methods }
    }

    /// The method as a metrics label: one of the contract's, or of the public services', by
    /// path; anything else is `other`, so that made-up paths cannot grow the series.
    fn method_label(method: &Method, path: &str) -> &'static str {
        const PUBLIC_METHODS: [&str; 4] = [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ];
        match method {
            Method::Ours(_) => method_label(path),
            Method::Public if PUBLIC_METHODS.contains(&path) => method_label(path),
            _ => "other",
        }
    }
}

impl Middleware for RpcTrace {
    fn call(
        self: Arc<Self>,
        request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let trace = TraceContext::continue_or_start(header("traceparent"), header("tracestate"));
        let span = tracing::info_span!(
            "rpc",
            method = %request.uri().path(),
            trace_id = %trace.trace_id,
            span_id = %trace.span_id,
            parent_span_id = trace.parent_span_id.as_deref(),
            caller = Empty,
            code = Empty,
            latency_ms = Empty,
        );
        let mut request = request;
        request.extensions_mut().insert(trace);
        // The one lookup of the method: every later layer reads it from the extensions.
        let method = self.methods.lookup(request.uri().path());
        let label = Self::method_label(&method, request.uri().path());
        request.extensions_mut().insert(method);
        let started = Instant::now();
        // The connection counts this stream open until the answer (it closes when idle).
        let stream = request
            .extensions()
            .get::<crate::connection::ConnectionInfo>()
            .map(|info| info.activity.stream());
        Box::pin(
            async move {
                let response = next.run(request).await;
                let span = Span::current();
                if let Some(code) = status_of(response.headers()) {
                    finish(&span, label, code, started);
                    return response;
                }
                let (parts, body) = response.into_parts();
                // The stream counts as open until its body (a Watch's, say) is done with.
                let body = body.map_frame(move |frame| {
                    let _open = &stream;
                    if let Some(trailers) = frame.trailers_ref() {
                        let code = status_of(trailers).unwrap_or(Code::Unknown);
                        finish(&span, label, code, started);
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

fn finish(span: &Span, method: &'static str, code: Code, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = metrics();
    metrics
        .rpc_requests
        .get_or_create(&RpcLabels {
            method,
            code: code_name(code),
        })
        .inc();
    metrics
        .rpc_duration
        .get_or_create(&MethodLabel { method })
        .observe(elapsed);
    let latency_ms = elapsed * 1000.0;
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
