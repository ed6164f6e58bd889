//! The authentication layer: `authorization: Bearer <token>` -> [`Caller`], stored in the
//! request's extensions for the handlers and the `_system` guard. Anything else but health and
//! reflection without a valid token is refused with UNAUTHENTICATED before it reaches a service.
//!
//! The exception is the hot read paths that the method table marks resolved in their query
//! ([`MethodFacts::resolved_in_query`](super::methods::MethodFacts)): there the layer only
//! tells the admin token apart and leaves a user token as a [`Credential::Token`], which the
//! handler's own query resolves in the same statement (one database round trip instead of two).
//! A user token on those paths gets no `Caller` extension, so a handler that asked for one
//! would answer UNAUTHENTICATED: the shortcut fails closed.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use subtle::ConstantTimeEq;
use tonic::body::Body;

use super::{
    layer::{Middleware, Next},
    methods::{Method, MethodTable},
    status::to_status,
};
use crate::{
    domain::{
        DomainError,
        caller::{Caller, Credential, UnresolvedToken},
        token,
    },
    store::Store,
};

/// Resolves tokens to callers.
pub struct Authenticator {
    methods: Arc<MethodTable>,
    store: Store,
    /// SHA-256 of the configured admin token; compared in constant time.
    admin_token_hash: [u8; 32],
}

impl Authenticator {
    pub fn new(methods: Arc<MethodTable>, store: Store, admin_token: &str) -> Self {
        Self {
            methods,
            store,
            admin_token_hash: token::hash(admin_token),
        }
    }

    /// The caller behind the request's token. The lookup is by hash through a unique index:
    /// its timing reveals nothing about any stored token, since nobody can choose hash prefixes.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, DomainError> {
        let credential = self.credential(headers)?;
        self.store.caller_for(&credential).await
    }

    /// The admin, or a user token still to be looked up; no database work.
    fn credential(&self, headers: &HeaderMap) -> Result<Credential, DomainError> {
        let presented = bearer_token(headers).ok_or(DomainError::Unauthenticated)?;
        let presented_hash = token::hash(presented);
        if bool::from(presented_hash.ct_eq(&self.admin_token_hash)) {
            return Ok(Credential::Caller(Caller::Admin));
        }
        Ok(Credential::Token(UnresolvedToken::new(presented_hash)))
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Middleware for Authenticator {
    fn call(
        self: Arc<Self>,
        mut request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>> {
        let resolved_in_query = match self.methods.lookup(request.uri().path()) {
            Method::Public => return Box::pin(next.run(request)),
            Method::Ours(facts) => facts.resolved_in_query,
            Method::Unknown => false,
        };
        if resolved_in_query {
            // The handler's query resolves the token; the layer only tells the admin apart.
            return match self.credential(request.headers()) {
                Ok(credential) => {
                    if let Credential::Caller(caller) = &credential {
                        tracing::Span::current().record("caller", caller.label());
                        request.extensions_mut().insert(caller.clone());
                    }
                    request.extensions_mut().insert(credential);
                    Box::pin(next.run(request))
                }
                Err(error) => Box::pin(std::future::ready(to_status(error).into_http())),
            };
        }
        Box::pin(async move {
            match self.authenticate(request.headers()).await {
                Ok(caller) => {
                    tracing::Span::current().record("caller", caller.label());
                    request.extensions_mut().insert(caller);
                    next.run(request).await
                }
                Err(error) => to_status(error).into_http(),
            }
        })
    }
}
