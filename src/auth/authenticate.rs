//! The authentication layer: `authorization: Bearer <token>` -> [`Caller`], stored in the
//! request's extensions for the handlers and the `_system` guard. Anything else but health and
//! reflection without a valid token is refused with UNAUTHENTICATED before it reaches a service.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tower::{Layer, Service};

use super::token;
use crate::{
    api::status::to_status,
    domain::{DomainError, caller::Caller},
    store::Store,
};

/// Resolves tokens to callers.
pub struct Authenticator {
    store: Store,
    /// SHA-256 of the configured admin token; compared in constant time.
    admin_token_hash: [u8; 32],
}

impl Authenticator {
    pub fn new(store: Store, admin_token: &str) -> Self {
        Self {
            store,
            admin_token_hash: token::hash(admin_token),
        }
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, DomainError> {
        let presented = bearer_token(headers).ok_or(DomainError::Unauthenticated)?;
        let presented_hash = token::hash(presented);
        if bool::from(presented_hash.ct_eq(&self.admin_token_hash)) {
            return Ok(Caller::Admin);
        }
        // The lookup is by hash through a unique index: the timing reveals nothing about any
        // stored token, since an attacker cannot choose hash prefixes.
        self.store
            .principal_by_token_hash(&presented_hash)
            .await?
            .map(Caller::User)
            .ok_or(DomainError::Unauthenticated)
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[derive(Clone)]
pub struct AuthenticateLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthenticateLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = AuthenticateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthenticateService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthenticateService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S> Service<Request<Body>> for AuthenticateService<S>
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

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one that must serve this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if super::is_public_path(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            match authenticator.authenticate(request.headers()).await {
                Ok(caller) => {
                    tracing::Span::current().record("caller", caller.label());
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(error) => Ok(to_status(error).into_http()),
            }
        })
    }
}
