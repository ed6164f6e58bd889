//! The gRPC surface: one thin file per service that parses proto messages into domain values,
//! checks access, calls the store and maps the result back. No SQL and no policy lives here.

pub mod api_standards;
pub mod audit;
pub mod convert;
pub mod credentials;
pub mod deadline;
pub mod definitions;
pub mod embeddings;
mod instance_use;
pub mod instances;
pub mod paging;
pub mod projects;
pub mod service_accounts;
pub mod sharing;
pub mod usage;
pub mod users;

use std::{sync::Arc, time::Duration};

use tonic::Request;

use crate::{
    domain::{
        DomainError,
        caller::{Caller, Credential},
    },
    keys::Keys,
    providers::Providers,
    store::Store,
};

/// What every service handler needs.
#[derive(Clone, Debug)]
pub struct ApiContext {
    pub store: Store,
    /// Seals API keys on write; opens them only for a provider call. Also signs page tokens.
    pub keys: Arc<Keys>,
    /// The outbound client and its limits.
    pub providers: Providers,
    /// The server's limit on any call; provider calls end before it.
    pub request_timeout: Duration,
    /// How ResolveCredential may release keys.
    pub release: CredentialRelease,
}

/// How ResolveCredential may release keys, as this server runs.
#[derive(Clone, Copy, Debug)]
pub struct CredentialRelease {
    /// Releases per service account and minute, across replicas; 0: none.
    pub per_minute: u32,
    /// Whether a key may travel over this listener: it serves TLS, TLS ends upstream, or the
    /// operator allowed plaintext release explicitly.
    pub transport_allowed: bool,
}

/// The caller that the authentication layer attached to the request.
pub fn caller_of<T>(request: &Request<T>) -> Result<Caller, DomainError> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or(DomainError::Unauthenticated)
}

/// The credential of a request on a path that the method table marks resolved in its query:
/// the caller, or a token for the store to resolve.
pub fn credential_of<T>(request: &Request<T>) -> Result<Credential, DomainError> {
    request
        .extensions()
        .get::<Credential>()
        .cloned()
        .ok_or(DomainError::Unauthenticated)
}

/// `parsed` (a request field parsed on a path resolved in its query), or its
/// error; but an unknown token is UNAUTHENTICATED whatever else is wrong, as on every other
/// path, so on the error path the token is looked up first.
pub async fn parsed_for<T>(
    store: &Store,
    credential: &Credential,
    parsed: Result<T, DomainError>,
) -> Result<T, DomainError> {
    match parsed {
        Ok(value) => Ok(value),
        Err(invalid) => {
            store.caller_for(credential).await?;
            Err(invalid)
        }
    }
}

/// A required sub-message of a request, or INVALID_ARGUMENT naming it.
pub fn required<T>(value: Option<T>, field: &str) -> Result<T, DomainError> {
    value.ok_or_else(|| DomainError::invalid(field, "is required"))
}
