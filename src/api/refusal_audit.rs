//! Records refused mutations in the audit trail. Successful ones are recorded by the store in the
//! transaction of their change; a refusal has no such transaction, so this layer writes it once
//! the handler (or the `_system` guard below it) has answered with an error. Calls without a valid
//! token are not recorded: they have no caller, and recording them would let anyone fill the trail.

use std::{collections::HashMap, sync::Arc};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage, Value};
use tonic::{Code, body::Body};

use crate::{
    api::status::to_status,
    auth::system_guard::is_read_only_method,
    domain::{audit::caller_label, caller::Caller},
    middleware::{DecodedRequest, Middleware, Next, decode_frame, read_body, with_body},
    store::Store,
};

/// The mutating methods and their request types, keyed by gRPC path.
pub struct RefusalAudit {
    store: Store,
    inputs: HashMap<String, MessageDescriptor>,
    max_message_bytes: usize,
}

impl RefusalAudit {
    pub fn new(
        store: Store,
        descriptor_set: &[u8],
        max_message_bytes: usize,
    ) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let inputs = pool
            .services()
            .flat_map(|service| service.methods().collect::<Vec<_>>())
            .filter(|method| !is_read_only_method(method.name()))
            .map(|method| {
                (
                    format!("/{}/{}", method.parent_service().full_name(), method.name()),
                    method.input(),
                )
            })
            .collect();
        Ok(Self {
            store,
            inputs,
            max_message_bytes,
        })
    }
}

impl RefusalAudit {
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

/// The resource a request targets, as requested: its `name`, the `name` of its resource
/// message, or `parent` plus the new id (`users/a` + `definition_id: x` -> `users/a/definitions/x`).
pub fn requested_target(message: &DynamicMessage) -> String {
    let text = |field: &str| match message.get_field_by_name(field).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    if let Some(name) = text("name") {
        return name;
    }
    for field in message
        .descriptor()
        .fields()
        .filter(|f| message.has_field(f))
    {
        if let Value::Message(resource) = message.get_field(&field).as_ref()
            && let Some(Value::String(name)) = resource.get_field_by_name("name").as_deref()
            && !name.is_empty()
        {
            return name.clone();
        }
    }
    let id = [
        "definition_id",
        "instance_id",
        "project_id",
        "user_id",
        "api_standard_id",
    ]
    .iter()
    .find_map(|field| text(field).map(|id| (*field, id)));
    match (text("parent"), id) {
        (Some(parent), Some((field, id))) => {
            let collection = field.trim_end_matches("_id");
            format!("{parent}/{collection}s/{id}")
        }
        (Some(parent), None) => parent,
        (None, Some(("user_id", id))) => format!("users/{id}"),
        (None, Some(("api_standard_id", id))) => format!("apiStandards/{id}"),
        _ => String::new(),
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
        let path = request.uri().path().to_owned();
        let input = self.inputs.get(&path).cloned();
        let caller = request.extensions().get::<Caller>().cloned();
        let (Some(input), Some(caller)) = (input, caller) else {
            return Box::pin(next.run(request));
        };
        Box::pin(async move {
            let method = path.trim_start_matches("/llmregistry.v1.").to_owned();
            let (parts, body) = request.into_parts();
            let bytes = match read_body(body, self.max_message_bytes).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    let status = to_status(error);
                    self.record(&caller, &method, "", status.code()).await;
                    return status.into_http();
                }
            };
            // Decoded once here and handed to the `_system` guard below, which would otherwise
            // buffer and decode the same body again. A malformed body is left for it to refuse.
            let decoded = decode_frame(&input, &bytes).ok();
            let target = decoded.as_ref().map(requested_target).unwrap_or_default();
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
                self.record(&caller, &method, &target, code).await;
            }
            response
        })
    }
}
