//! Using an instance through the registry: the steps Embed and TestInstance share, in the order
//! they must happen.
//!
//! 1. [`resolve`]: find the instance the call names (a project stands for the instance bound to
//!    it, resolved in the same statement; the read cache answers when nothing changed since the
//!    token was checked) and ask the policy whether the caller may do this with it; strangers
//!    get the NOT_FOUND of a missing instance.
//! 2. [`ready`]: everything that can refuse before a byte leaves: a stored key, a known wire
//!    protocol, the per-instance concurrency and rate limits, then the key is opened.
//! 3. [`reserve`]: the call's claims on the instance's budget and the caller's share quota,
//!    taken in one statement or refused (nothing is sent without them).
//! 4. [`send`]: the provider call, to the instance's own endpoint, within the deadline.
//!
//! The key exists in plaintext only inside [`ReadyCall`], which is dropped (and the key
//! zeroized) as soon as the call ends.

use tokio::time::Instant;

use super::ApiContext;
use crate::{
    domain::{
        DomainError, access,
        access::InstanceAction,
        caller::Caller,
        embedding::{CallTarget, EmbeddingProtocol, InputType, InstanceForCall},
        error::{LimitReason, PreconditionReason, ProviderFailure},
        names::{InstanceName, ProjectName},
        project::ProjectBinding,
        quota::{self, Reservation},
    },
    providers::{Destination, ProviderAnswer, gate::GatePass},
    store::QuotaWindow,
    trace_context::TraceContext,
    vault::ApiKey,
};

/// The instance or project a request names: a full project name, or an instance as a full
/// name, `{owner}/{instance}` or a bare handle of the caller's own.
pub fn call_target(caller: &Caller, field: &str, value: &str) -> Result<CallTarget, DomainError> {
    if value.starts_with("users/") && value.split('/').nth(2) == Some("projects") {
        return ProjectName::parse(field, value).map(CallTarget::Project);
    }
    if value.is_empty() {
        return Err(DomainError::invalid(field, "is required"));
    }
    InstanceName::parse_reference(field, value, caller.namespace().as_ref())
        .map(CallTarget::Instance)
}

/// The instance behind `target`, if `caller` may do `action` with it.
pub async fn resolve(
    context: &ApiContext,
    caller: &Caller,
    checked_fresh: bool,
    target: &CallTarget,
    action: InstanceAction,
) -> Result<InstanceForCall, DomainError> {
    if let CallTarget::Project(project) = target {
        // Projects are private to their owner (and admins): whoever may read the project may
        // use its instance.
        access::check_private_read(caller, &project.owner, project)?;
    }
    let found = context
        .store
        .find_for_call(caller, target, checked_fresh)
        .await?;
    let found = match (found, target) {
        (Some(ProjectBinding::Bound(Some(found))), _) => found,
        (Some(ProjectBinding::Detached(detachment)), CallTarget::Project(project)) => {
            return Err(DomainError::FailedPrecondition {
                reason: PreconditionReason::InstanceRevoked,
                message: format!(
                    "{project} has no instance: {}; its owner must bind it to an instance again",
                    detachment.reason
                ),
            });
        }
        (_, CallTarget::Project(project)) => return Err(access::hidden(project)),
        (_, CallTarget::Instance(name)) => return Err(access::hidden(name)),
    };
    access::authorize_instance(
        Some(found.instance.access_role),
        action,
        &found.instance.name,
    )?;
    Ok(found)
}

/// A call that passed every check before sending: the opened key, the destination, and a place
/// in the instance's concurrency limit (held until the call ends).
pub struct ReadyCall {
    pub destination: Destination,
    key: ApiKey,
    _pass: GatePass,
}

/// Checks what can refuse a call before it is sent, takes its places in the limits, and opens
/// the key.
pub async fn ready(
    context: &ApiContext,
    found: &InstanceForCall,
) -> Result<ReadyCall, DomainError> {
    let name = &found.instance.name;
    let Some(sealed) = &found.sealed_key else {
        return Err(DomainError::FailedPrecondition {
            reason: PreconditionReason::NoApiKey,
            message: format!("{name} holds no API key; set one with UpdateInstance"),
        });
    };
    if found.protocol == EmbeddingProtocol::Unspecified {
        return Err(DomainError::FailedPrecondition {
            reason: PreconditionReason::NoEmbeddingProtocol,
            message: format!(
                "the API standard {} names no embedding protocol, so {name} cannot be called \
                 through the registry; an administrator must set the standard's `protocol`",
                found.instance.spec.api_standard
            ),
        });
    }
    let providers = &context.providers;
    let pass = providers.gate.enter(found.instance.sequence, name)?;
    if let Some(limit) = providers.settings().requests_per_minute
        && let Some(retry_after) = context
            .store
            .take_rate_slot(found.instance.sequence, limit)
            .await?
    {
        return Err(DomainError::InstanceLimited {
            reason: LimitReason::Rate,
            message: format!(
                "{name} has used its {limit} provider calls of this minute \
                 (PROVIDER_REQUESTS_PER_MINUTE, counted across replicas)"
            ),
            retry_after,
        });
    }
    let key = context
        .keys
        .open(sealed, &found.instance.uid, &name.to_string())
        .await?;
    Ok(ReadyCall {
        destination: Destination {
            endpoint: found.instance.spec.endpoint.clone(),
            protocol: found.protocol,
            auth_header: found.auth_header.clone(),
            auth_scheme: found.auth_scheme.clone(),
            model: found.instance.spec.model.clone(),
            reduced_dimensions: found.reduced_dimensions(),
            dimensions: found.instance.spec.dimensions,
        },
        key,
        _pass: pass,
    })
}

/// Which limits a call counts against: Embed against the instance's budget and the share it is
/// made under; TestInstance (a check by a writer, not a use of the grantee's allowance) against
/// the budget only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    BudgetAndShare,
    BudgetOnly,
}

/// Reserves the call against every limit that applies, charging `estimated_tokens` to token
/// limits until it is settled: `None` when none applies (no round trip then), QUOTA_EXCEEDED
/// naming the limit when one would be passed, UNAVAILABLE when the reservation cannot be
/// written. Fail closed: without a reservation the caller does not send.
pub async fn reserve(
    context: &ApiContext,
    found: &InstanceForCall,
    limits: Limits,
    estimated_tokens: i64,
) -> Result<Option<Reservation<QuotaWindow>>, DomainError> {
    let share = match limits {
        Limits::BudgetAndShare => found
            .share_quota
            .as_ref()
            .map(|(grantee, quota)| (*grantee, quota)),
        Limits::BudgetOnly => None,
    };
    let claims = quota::claims(found.instance.quota.as_ref(), share, estimated_tokens);
    if claims.is_empty() {
        return Ok(None);
    }
    match context
        .store
        .reserve_quota(found.instance.sequence, claims)
        .await?
    {
        Ok(reservation) => Ok(Some(reservation)),
        Err(exceeded) => {
            crate::metrics::record_quota_refusal(exceeded.scope.as_str());
            Err(exceeded.into_error(&found.instance.name))
        }
    }
}

/// Whether a provider call that answered `sent` may have reached the provider (and so counts):
/// everything but the refusals [`Providers::embed`](crate::providers::Providers::embed) makes
/// before a request leaves (an endpoint the egress policy forbids, no protocol, a bad stored
/// endpoint, an answer too large to accept).
pub fn reached_provider<T>(sent: &Result<T, DomainError>) -> bool {
    !matches!(
        sent,
        Err(DomainError::Provider {
            failure: ProviderFailure::EgressRefused | ProviderFailure::InsecureEndpoint,
            ..
        } | DomainError::FailedPrecondition { .. }
            | DomainError::InvalidArgument(_)
            | DomainError::Internal(_))
    )
}

/// Sends the texts and answers what the provider returned (not yet checked against the
/// instance). Consumes the ready call: the key is zeroized when this returns.
pub async fn send(
    context: &ApiContext,
    call: ReadyCall,
    inputs: &[String],
    input_type: InputType,
    deadline: Instant,
    trace: Option<&TraceContext>,
) -> Result<ProviderAnswer, DomainError> {
    context
        .providers
        .embed(
            &call.destination,
            &call.key,
            inputs,
            input_type,
            deadline,
            trace,
        )
        .await
}
