//! The `_system` write guard: one layer in front of every service that refuses any mutating call
//! aimed at `users/_system` unless the caller is an administrator (PERMISSION_DENIED, whether or
//! not the target exists).
//!
//! Since it decodes requests anyway, it also turns a malformed request message (bad wire format,
//! invalid UTF-8 in a string) into INVALID_ARGUMENT; left to tonic, that would be INTERNAL.
//!
//! It works from the descriptor set, not from a list of methods: every method whose name does not
//! start with `Get` or `List` counts as mutating, and its request is decoded generically to find
//! the target (top-level `name` or `parent`, or the `name` of a top-level resource message, as
//! AIP-131..135 place them). A method added later is therefore covered without anyone
//! remembering to add it here. Fields that merely *reference* `_system` resources for reading
//! (such as `source_definition`) are not targets.

use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value,
};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::{
    api::status::to_status,
    domain::{DomainError, caller::Caller, names::SYSTEM_USER},
};

/// Fields that name the resource a request acts on.
const TARGET_FIELDS: &[&str] = &["name", "parent"];
/// gRPC frames start with a 1-byte compression flag and a 4-byte big-endian length.
const FRAME_HEADER_LEN: usize = 5;

/// Method names that only read; everything else is treated as a write (deny by default).
pub fn is_read_only_method(method: &str) -> bool {
    method.starts_with("Get") || method.starts_with("List")
}

/// What the guard knows of one method.
#[derive(Clone)]
struct MethodInfo {
    input: MessageDescriptor,
    mutating: bool,
}

/// The methods of a descriptor set and their request types, keyed by gRPC path.
pub struct SystemGuard {
    methods: HashMap<String, MethodInfo>,
    max_message_bytes: usize,
}

impl SystemGuard {
    pub fn from_descriptor_set(
        descriptor_set: &[u8],
        max_message_bytes: usize,
    ) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let methods = pool
            .services()
            .flat_map(|service| service.methods().collect::<Vec<_>>())
            .map(|method| {
                let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
                let info = MethodInfo {
                    input: method.input(),
                    mutating: !is_read_only_method(method.name()),
                };
                (path, info)
            })
            .collect();
        Ok(Self {
            methods,
            max_message_bytes,
        })
    }

    /// Judges one buffered unary request body; `enforce` says whether the `_system` rule applies.
    fn check(&self, method: &MethodInfo, enforce: bool, body: &[u8]) -> Result<(), DomainError> {
        let malformed =
            || DomainError::invalid("", "the request is not a well-formed gRPC message");
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
        let payload = body
            .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + length)
            .ok_or_else(malformed)?;
        if body.len() != FRAME_HEADER_LEN + length {
            return Err(malformed());
        }
        let message =
            DynamicMessage::decode(method.input.clone(), payload).map_err(|_| malformed())?;
        if enforce && method.mutating && targets_system(&message) {
            Err(DomainError::system_namespace())
        } else {
            Ok(())
        }
    }
}

/// Whether a request's target is `users/_system` or anything under it.
pub fn targets_system(message: &DynamicMessage) -> bool {
    let is_system = |value: &str| {
        value
            .strip_prefix("users/")
            .and_then(|rest| rest.strip_prefix(SYSTEM_USER))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    message.descriptor().fields().any(|field| {
        if field.is_list() || field.is_map() {
            return false;
        }
        match field.kind() {
            Kind::String if TARGET_FIELDS.contains(&field.name()) => {
                matches!(message.get_field(&field).as_ref(), Value::String(s) if is_system(s))
            }
            Kind::Message(resource) if message.has_field(&field) => {
                let Some(name_field) = resource.get_field_by_name("name") else {
                    return false;
                };
                matches!(
                    message.get_field(&field).as_message().map(|m| m.get_field(&name_field).into_owned()),
                    Some(Value::String(s)) if is_system(&s)
                )
            }
            _ => false,
        }
    })
}

#[derive(Clone)]
pub struct SystemGuardLayer {
    guard: Arc<SystemGuard>,
}

impl SystemGuardLayer {
    pub fn new(guard: Arc<SystemGuard>) -> Self {
        Self { guard }
    }
}

impl<S> Layer<S> for SystemGuardLayer {
    type Service = SystemGuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SystemGuardService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SystemGuardService<S> {
    inner: S,
    guard: Arc<SystemGuard>,
}

impl<S> Service<Request<Body>> for SystemGuardService<S>
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
        let Some(method) = self.guard.methods.get(request.uri().path()).cloned() else {
            // Not ours (health, reflection) or unknown (tonic answers UNIMPLEMENTED).
            return Box::pin(inner.call(request));
        };
        let enforce = !request
            .extensions()
            .get::<Caller>()
            .is_some_and(Caller::is_admin);
        let guard = self.guard.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let limit = guard.max_message_bytes + FRAME_HEADER_LEN;
            let bytes: Bytes = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    let error = if error
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        DomainError::TooLarge(guard.max_message_bytes)
                    } else {
                        DomainError::invalid("", "the request body could not be read")
                    };
                    return Ok(to_status(error).into_http());
                }
            };
            if let Err(error) = guard.check(&method, enforce, &bytes) {
                return Ok(to_status(error).into_http());
            }
            inner
                .call(Request::from_parts(parts, Body::new(Full::new(bytes))))
                .await
        })
    }
}
