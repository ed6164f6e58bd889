//! The authentication layer: `authorization: Bearer <token>` -> [`Caller`], stored in the
//! request's extensions for the handlers and the `_system` guard. Anything else but health and
//! reflection without a valid token is refused with UNAUTHENTICATED before it reaches a service.
//!
//! It runs first, before the body is read and before an admission slot is taken, so that nothing
//! is held for a caller who is not known: an unknown token costs one lookup (the read cache
//! answers known ones). The paths whose method facts say so
//! ([`MethodFacts::gets_credential`](super::methods::MethodFacts)) also get the checked
//! [`Credential`]: the hot reads resolved in their query read their answer with it by token, and
//! Embed keeps its cached answers under the epoch it was checked at.

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
        let gets_credential = match self.methods.lookup(request.uri().path()) {
            Method::Public => return Box::pin(next.run(request)),
            Method::Ours(facts) => facts.gets_credential,
            Method::Unknown => false,
        };
        Box::pin(async move {
            // Every caller is known before anything is held for it (body, admission slot): an
            // unknown token costs this one lookup, usually answered by the read cache.
            let credential = match self.credential(request.headers()) {
                Ok(credential) => credential,
                Err(error) => return to_status(error).into_http(),
            };
            let (caller, credential) = match self.store.authenticate(credential).await {
                Ok(checked) => checked,
                Err(error) => return to_status(error).into_http(),
            };
            tracing::Span::current().record("caller", caller.label());
            request.extensions_mut().insert(caller);
            if gets_credential {
                // The handler reads with the token, or with the epoch it was checked at.
                request.extensions_mut().insert(credential);
            }
            next.run(request).await
        })
    }
}
