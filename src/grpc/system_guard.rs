//! The `_system` write guard: one layer in front of every service that refuses any mutating call
//! aimed at `users/_system` unless the caller is an administrator (PERMISSION_DENIED, whether or
//! not the target exists).
//!
//! Since it decodes requests anyway, it also turns a malformed request message (bad wire format,
//! invalid UTF-8 in a string) into INVALID_ARGUMENT; left to tonic, that would be INTERNAL.
//!
//! It works from the method table, which is built from the descriptor set: every method the
//! table does not mark read-only counts as mutating, and its request is decoded generically to
//! find the names it targets (top-level `name` or `parent`, or the `name` of a top-level resource
//! message, as AIP-131..135 place them). A method added later is therefore covered without anyone
//! remembering to add it here. Fields that merely *reference* `_system` resources for reading
//! (such as `source_definition`) are not targets.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;

use super::{
    body::{Encoding, decode_frame, read_body, with_body},
    layer::{Middleware, Next},
    methods::{DecodedRequest, Method, MethodFacts, MethodTable},
    status::to_status,
};
use crate::domain::{DomainError, access, caller::Caller};

/// Refuses non-admin writes aimed at `users/_system`.
pub struct SystemGuard {
    methods: Arc<MethodTable>,
    max_message_bytes: usize,
}

impl SystemGuard {
    pub fn new(methods: Arc<MethodTable>, max_message_bytes: usize) -> Self {
        Self {
            methods,
            max_message_bytes,
        }
    }
}

/// Judges one decoded request; `enforce` says whether the `_system` rule applies to the caller.
fn check(
    method: &MethodFacts,
    enforce: bool,
    message: &prost_reflect::DynamicMessage,
) -> Result<(), DomainError> {
    if enforce
        && !method.read_only
        && MethodFacts::names_targeting(message)
            .iter()
            .any(|name| access::names_system_namespace(name))
    {
        Err(DomainError::system_namespace())
    } else {
        Ok(())
    }
}

impl Middleware for SystemGuard {
    fn call(
        self: Arc<Self>,
        request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>> {
        let Method::Ours(method) = self.methods.of(&request) else {
            // Not ours (health, reflection) or unknown (tonic answers UNIMPLEMENTED).
            return Box::pin(next.run(request));
        };
        let enforce = !request
            .extensions()
            .get::<Caller>()
            .is_some_and(Caller::is_admin);
        // The body gate above decoded every write that decodes; reads, and writes that do not
        // decode, are decoded here from the already buffered body (a malformed message is then
        // INVALID_ARGUMENT with its reason, rather than INTERNAL from tonic).
        if let Some(DecodedRequest(message)) = request.extensions().get::<DecodedRequest>() {
            let verdict = check(&method, enforce, message);
            return Box::pin(async move {
                match verdict {
                    Ok(()) => next.run(request).await,
                    Err(error) => to_status(error).into_http(),
                }
            });
        }
        Box::pin(async move {
            let encoding = Encoding::of(request.headers());
            let (parts, body) = request.into_parts();
            let checked = match read_body(body, self.max_message_bytes).await {
                Ok(bytes) => decode_frame(&method.input, encoding, &bytes, self.max_message_bytes)
                    .and_then(|message| check(&method, enforce, &message))
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
