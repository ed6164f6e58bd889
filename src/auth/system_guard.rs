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

use std::{collections::HashMap, sync::Arc};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value,
};
use tonic::body::Body;

use crate::{
    api::status::to_status,
    domain::{DomainError, caller::Caller, names::SYSTEM_USER},
    middleware::{DecodedRequest, Middleware, Next, decode_frame, read_body, with_body},
};

/// Fields that name the resource a request acts on.
const TARGET_FIELDS: &[&str] = &["name", "parent"];

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
    fn check(
        &self,
        method: &MethodInfo,
        enforce: bool,
        message: &DynamicMessage,
    ) -> Result<(), DomainError> {
        if enforce && method.mutating && targets_system(message) {
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

impl Middleware for SystemGuard {
    fn call(
        self: Arc<Self>,
        request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>> {
        let Some(method) = self.methods.get(request.uri().path()).cloned() else {
            // Not ours (health, reflection) or unknown (tonic answers UNIMPLEMENTED).
            return Box::pin(next.run(request));
        };
        let enforce = !request
            .extensions()
            .get::<Caller>()
            .is_some_and(Caller::is_admin);
        // The refusal-audit layer above has usually decoded the message already.
        if let Some(DecodedRequest(message)) = request.extensions().get::<DecodedRequest>() {
            let verdict = self.check(&method, enforce, message);
            return Box::pin(async move {
                match verdict {
                    Ok(()) => next.run(request).await,
                    Err(error) => to_status(error).into_http(),
                }
            });
        }
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let checked = match read_body(body, self.max_message_bytes).await {
                Ok(bytes) => decode_frame(&method.input, &bytes)
                    .and_then(|message| self.check(&method, enforce, &message))
                    .map(|()| bytes),
                Err(error) => Err(error),
            };
            match checked {
                Ok(bytes) => next.run(with_body(parts, bytes)).await,
                Err(error) => to_status(error).into_http(),
            }
        })
    }
}
