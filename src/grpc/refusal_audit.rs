//! Records refused mutations in the audit trail. Successful ones are recorded by the store in the
//! transaction of their change; a refusal has no such transaction, so this layer writes it once
//! the handler (or the `_system` guard below it) has answered with an error. Calls without a valid
//! token are not recorded: they have no caller, and recording them would let anyone fill the trail.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tonic::{Code, body::Body};

use super::{
    body::{DecodedRequest, Encoding, decode_frame, read_body, with_body},
    layer::{Middleware, Next},
    methods::{Method, MethodTable},
    status::to_status,
};
use crate::{
    domain::{audit::caller_label, caller::Caller},
    store::Store,
};

/// Writes refused mutations to the audit trail.
pub struct RefusalAudit {
    methods: Arc<MethodTable>,
    store: Store,
    max_message_bytes: usize,
}

impl RefusalAudit {
    pub fn new(methods: Arc<MethodTable>, store: Store, max_message_bytes: usize) -> Self {
        Self {
            methods,
            store,
            max_message_bytes,
        }
    }

    async fn record(&self, caller: &Caller, method: &str, target: &str, code: Code) {
        if let Err(error) = self
            .store
            .record_refusal(&caller_label(caller), method, target, code_name(code))
            .await
        {
            tracing::warn!(%error, method, "could not record a refused call in the audit trail");
        }
    }
}

/// The canonical upper-case name of a code, as the trail records it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Middleware for RefusalAudit {
    fn call(
        self: Arc<Self>,
        request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>> {
        let method = match self.methods.lookup(request.uri().path()) {
            Method::Ours(facts) if !facts.read_only => facts,
            _ => return Box::pin(next.run(request)),
        };
        let Some(caller) = request.extensions().get::<Caller>().cloned() else {
            return Box::pin(next.run(request));
        };
        Box::pin(async move {
            let encoding = Encoding::of(request.headers());
            let (parts, body) = request.into_parts();
            let bytes = match read_body(body, self.max_message_bytes).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    let status = to_status(error);
                    self.record(&caller, &method.short_name, "", status.code())
                        .await;
                    return status.into_http();
                }
            };
            // Decoded once here and handed to the `_system` guard below, which would otherwise
            // buffer and decode the same body again. A malformed body is left for it to refuse.
            let decoded =
                decode_frame(&method.input, encoding, &bytes, self.max_message_bytes).ok();
            let target = decoded
                .as_ref()
                .map(|message| method.requested_target(message))
                .unwrap_or_default();
            let mut request = with_body(parts, bytes);
            if let Some(message) = decoded {
                request.extensions_mut().insert(DecodedRequest(message));
            }
            let response = next.run(request).await;
            if let Some(code) = response
                .headers()
                .get("grpc-status")
                .map(|v| Code::from_bytes(v.as_bytes()))
                && code != Code::Ok
            {
                self.record(&caller, &method.short_name, &target, code)
                    .await;
            }
            response
        })
    }
}
