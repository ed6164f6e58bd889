//! The authentication layer: `authorization: Bearer <token>` -> [`Caller`], stored in the
//! request's extensions for the handlers and the `_system` guard. Anything else but health and
//! reflection without a valid token is refused with UNAUTHENTICATED before it reaches a service.
//!
//! It runs first, before the body is read and before an admission slot is taken, so that nothing
//! is held for a caller who is not known: an unknown token costs one lookup (the read cache
//! answers known ones). The paths whose method facts say so
//! ([`MethodFacts::gets_credential`](super::methods::MethodFacts)) also get the checked
//! [`Credential`]: the hot reads resolved in their query read their answer with it by token, and
//! Embed answers from the cache when the token was checked with the cache fresh for the call.
//!
//! Service accounts (tokens prefixed `llmrsa_`) are resolved here too, with the user named by
//! the [`ACT_AS_HEADER`] metadata in the same statement: the caller is then that user, never an
//! administrator (see `domain::caller`). A refused act-as is recorded in the audit trail with
//! both identities. A token bound to a client certificate is accepted only on a mutual-TLS
//! connection that presented that certificate.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use subtle::ConstantTimeEq;
use tonic::{Code, body::Body};

use super::{
    layer::{Middleware, Next},
    methods::{Method, MethodTable},
    refusal_audit::RefusalRecorder,
    status::to_status,
};
use crate::{
    connection::{ClientCertificate, ConnectionInfo},
    domain::{
        DomainError,
        caller::{Caller, Credential, UnresolvedToken, UserPrincipal},
        certificate_binding::CertificateBinding,
        error::PermissionReason,
        names::{UserKey, UserName},
        service_account::ServiceAccountPrincipal,
        token,
    },
    store::Store,
};

/// The request metadata in which a service account names the user it acts for.
pub const ACT_AS_HEADER: &str = "x-llmr-act-as";

/// What a presented token claims to be, before any lookup.
enum Presented {
    Admin,
    User(UnresolvedToken),
    ServiceAccount([u8; 32]),
}

/// Resolves tokens to callers.
pub struct Authenticator {
    methods: Arc<MethodTable>,
    store: Store,
    /// SHA-256 of the configured admin token; compared in constant time.
    admin_token_hash: [u8; 32],
    /// Where refused act-as calls are recorded.
    refusals: Arc<RefusalRecorder>,
    /// Development mode: where the admin token is, said in the log (at most every 10 s) when a
    /// call is refused as UNAUTHENTICATED, since a newcomer's first call usually is.
    unauthenticated_hint: Option<(String, parking_lot::Mutex<Option<std::time::Instant>>)>,
}

impl Authenticator {
    pub fn new(
        methods: Arc<MethodTable>,
        store: Store,
        admin_token: &str,
        refusals: Arc<RefusalRecorder>,
        dev_secrets_file: Option<&std::path::Path>,
    ) -> Self {
        Self {
            methods,
            store,
            admin_token_hash: token::hash(admin_token),
            refusals,
            unauthenticated_hint: dev_secrets_file
                .map(|file| (file.display().to_string(), parking_lot::Mutex::new(None))),
        }
    }

    /// Says in the log where development mode's admin token is, at most every 10 seconds.
    fn hint_unauthenticated(&self) {
        let Some((file, last)) = &self.unauthenticated_hint else {
            return;
        };
        let now = std::time::Instant::now();
        {
            let mut last = last.lock();
            if last.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(10)) {
                return;
            }
            *last = Some(now);
        }
        tracing::info!(
            secrets_file = %file,
            "a call was refused as UNAUTHENTICATED; development mode's admin token is ADMIN_TOKEN \
             in the secrets file, and users' tokens come from CreateUser"
        );
    }

    /// What the token claims to be; no database work.
    fn presented(&self, headers: &HeaderMap) -> Result<Presented, DomainError> {
        let presented = bearer_token(headers).ok_or(DomainError::Unauthenticated)?;
        let presented_hash = token::hash(presented);
        if bool::from(presented_hash.ct_eq(&self.admin_token_hash)) {
            return Ok(Presented::Admin);
        }
        if token::is_service_account_token(presented) {
            return Ok(Presented::ServiceAccount(presented_hash));
        }
        Ok(Presented::User(UnresolvedToken::new(presented_hash)))
    }

    /// The caller of a request, and the credential its handler reads with (when it gets one).
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: Option<&ClientCertificate>,
        method: &str,
    ) -> Result<(Caller, Credential), DomainError> {
        let presented = self.presented(headers)?;
        let act_as = act_as(headers);
        Ok(match presented {
            Presented::Admin => {
                refuse_act_as(act_as)?;
                (Caller::Admin, Credential::Caller(Caller::Admin))
            }
            Presented::User(token) => {
                // An unknown token is UNAUTHENTICATED whatever else is wrong.
                let checked = self.store.authenticate(Credential::Token(token)).await?;
                refuse_act_as(act_as)?;
                checked
            }
            Presented::ServiceAccount(hash) => {
                let named = act_as.as_ref().and_then(|named| named.as_ref().ok());
                // One lookup (usually the read cache's): a name the account may not act for
                // comes back without its user, cached alike whether or not the user exists, so
                // the refusal's timing tells nothing (see `Store::service_account_by_token`).
                let (account, user) = self.store.service_account_by_token(&hash, named).await?;
                check_certificate(&account, certificate)?;
                let named = act_as.transpose()?;
                let caller = self.acting(account, named, user, method).await?;
                // The handler reads as the caller found here (the token names no user row).
                (caller.clone(), Credential::Caller(caller))
            }
        })
    }

    /// The caller a service account stands for: itself, or the user it names if it may act for
    /// them. A refusal is recorded with both identities.
    async fn acting(
        &self,
        account: Arc<ServiceAccountPrincipal>,
        named: Option<UserKey>,
        user: Option<UserPrincipal>,
        method: &str,
    ) -> Result<Caller, DomainError> {
        let Some(named) = named else {
            return Ok(Caller::ServiceAccount(account));
        };
        match account.may_act_for(&named, user.is_some()) {
            Ok(()) => match user {
                Some(user) => Ok(Caller::User(user.acted_for_by(account))),
                None => Err(DomainError::Internal(
                    "an absent user passed the act-as check".to_owned(),
                )),
            },
            Err(refusal) => {
                self.refusals
                    .record_as(
                        format!("serviceAccounts/{}", account.handle),
                        Some(&format!("users/{named}")),
                        method,
                        "",
                        Code::PermissionDenied,
                    )
                    .await;
                Err(refusal)
            }
        }
    }
}

/// The act-as metadata from a caller that is not a service account: refused (INVALID_ARGUMENT
/// first if it is malformed, as for anyone).
fn refuse_act_as(act_as: Option<Result<UserKey, DomainError>>) -> Result<(), DomainError> {
    match act_as {
        None => Ok(()),
        Some(named) => {
            named?;
            Err(DomainError::PermissionDenied {
                reason: PermissionReason::ActAsDenied,
                message: format!(
                    "only a service account with ACT_AS_USER may send {ACT_AS_HEADER}"
                ),
            })
        }
    }
}

/// The user named by the act-as metadata: `None` when it is absent, INVALID_ARGUMENT when it is
/// not exactly one `users/{user}`.
fn act_as(headers: &HeaderMap) -> Option<Result<UserKey, DomainError>> {
    let mut values = headers.get_all(ACT_AS_HEADER).iter();
    let first = values.next()?;
    let invalid = |why: &str| DomainError::invalid(ACT_AS_HEADER, why.to_owned());
    if values.next().is_some() {
        return Some(Err(invalid("must be sent once")));
    }
    Some(
        first
            .to_str()
            .map_err(|_| invalid("must look like users/{user}"))
            .and_then(|value| UserName::parse(ACT_AS_HEADER, value.trim()))
            .map(|name| name.0),
    )
}

/// A token bound to a client certificate is accepted only on a mutual-TLS connection whose
/// certificate is the bound one (by parsed subject, fingerprint or SAN URI, see
/// [`CertificateBinding`]); elsewhere it is as good as unknown. A stored binding that no longer
/// parses accepts nothing.
fn check_certificate(
    account: &ServiceAccountPrincipal,
    presented: Option<&ClientCertificate>,
) -> Result<(), DomainError> {
    let Some(bound) = &account.client_certificate_subject else {
        return Ok(());
    };
    let binding = CertificateBinding::parse(bound).map_err(|_| DomainError::Unauthenticated)?;
    match presented {
        Some(certificate) if binding.matches(certificate) => Ok(()),
        _ => Err(DomainError::Unauthenticated),
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
        let facts = match self.methods.of(&request) {
            Method::Public => return Box::pin(next.run(request)),
            Method::Ours(facts) => Some(facts),
            Method::Unknown => None,
        };
        let gets_credential = facts.as_ref().is_some_and(|facts| facts.gets_credential);
        Box::pin(async move {
            // Every caller is known before anything is held for it (body, admission slot): an
            // unknown token costs this one lookup, usually answered by the read cache.
            let certificate = request
                .extensions()
                .get::<ConnectionInfo>()
                .and_then(|info| info.client_certificate.clone());
            // How a refused act-as names the method in the trail (no allocation per call).
            let method = facts
                .as_ref()
                .map_or(request.uri().path(), |facts| facts.short_name.as_str());
            let checked = self
                .authenticate(request.headers(), certificate.as_ref(), method)
                .await;
            let (caller, credential) = match checked {
                Ok(checked) => checked,
                Err(error) => {
                    if matches!(error, DomainError::Unauthenticated) {
                        self.hint_unauthenticated();
                    }
                    return to_status(error).into_http();
                }
            };
            tracing::Span::current().record("caller", caller.label());
            request.extensions_mut().insert(caller);
            if gets_credential {
                // The handler reads with the token, or from the cache it was checked fresh with.
                request.extensions_mut().insert(credential);
            }
            next.run(request).await
        })
    }
}
