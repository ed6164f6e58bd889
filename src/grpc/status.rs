//! The one mapping from domain errors to gRPC status. Every status carries `google.rpc.ErrorInfo`
//! with a stable reason (clients may switch on it); INVALID_ARGUMENT also carries
//! `google.rpc.BadRequest` with one violation per bad field. Internal details are logged here and
//! never sent.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{
    DomainError,
    error::{LimitReason, PermissionReason, PreconditionReason, ProviderFailure},
};

/// The `ErrorInfo.domain` of every error.
pub const ERROR_DOMAIN: &str = "llm-registry";

pub fn to_status(error: DomainError) -> Status {
    let (code, reason) = match &error {
        DomainError::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
        DomainError::NotFound(_) => (Code::NotFound, "NOT_FOUND"),
        DomainError::AlreadyExists(_) => (Code::AlreadyExists, "ALREADY_EXISTS"),
        DomainError::PermissionDenied { reason, .. } => (
            Code::PermissionDenied,
            match reason {
                PermissionReason::AdminOnly => "ADMIN_ONLY",
                PermissionReason::SystemNamespace => "SYSTEM_NAMESPACE_READ_ONLY",
                PermissionReason::ForeignNamespace => "FOREIGN_NAMESPACE",
                PermissionReason::InsufficientRole => "INSUFFICIENT_ROLE",
                PermissionReason::ReservedUser => "RESERVED_USER",
                PermissionReason::ActAsDenied => "ACT_AS_DENIED",
                PermissionReason::ReleaseDenied => "RELEASE_DENIED",
            },
        ),
        DomainError::EtagMismatch(_) => (Code::Aborted, "ETAG_MISMATCH"),
        DomainError::InUse { .. } => (Code::FailedPrecondition, "RESOURCE_IN_USE"),
        DomainError::FailedPrecondition { reason, .. } => (
            Code::FailedPrecondition,
            match reason {
                PreconditionReason::KeyRebindRequired => "KEY_REBIND_REQUIRED",
                PreconditionReason::InstanceRevoked => "INSTANCE_REVOKED",
                PreconditionReason::NoEmbeddingProtocol => "NO_EMBEDDING_PROTOCOL",
                PreconditionReason::NoApiKey => "NO_API_KEY",
                PreconditionReason::ReleaseNotAllowed => "RELEASE_NOT_ALLOWED",
                PreconditionReason::PlaintextTransport => "PLAINTEXT_TRANSPORT",
            },
        ),
        DomainError::Overloaded => (Code::ResourceExhausted, "OVERLOADED"),
        DomainError::InstanceLimited { reason, .. } => (
            Code::ResourceExhausted,
            match reason {
                LimitReason::Concurrency => "INSTANCE_CONCURRENCY_LIMITED",
                LimitReason::Rate => "INSTANCE_RATE_LIMITED",
                LimitReason::ReleaseRate => "CREDENTIAL_RELEASE_RATE_LIMITED",
                LimitReason::CallerProviderCalls => "CALLER_PROVIDER_CALLS_LIMITED",
                LimitReason::ProviderPool => "PROVIDER_POOL_FULL",
                LimitReason::ProviderReplyMemory => "PROVIDER_REPLY_MEMORY_LIMITED",
            },
        ),
        DomainError::DimensionsMismatch(_) => (Code::FailedPrecondition, "DIMENSIONS_MISMATCH"),
        DomainError::Provider { failure, .. } => match failure {
            ProviderFailure::RejectedRequest => {
                (Code::InvalidArgument, "PROVIDER_REJECTED_REQUEST")
            }
            ProviderFailure::RejectedKey => (Code::FailedPrecondition, "PROVIDER_REJECTED_KEY"),
            ProviderFailure::NotFound => (Code::FailedPrecondition, "PROVIDER_NOT_FOUND"),
            ProviderFailure::Redirected => (Code::FailedPrecondition, "PROVIDER_REDIRECTED"),
            ProviderFailure::RateLimited => (Code::ResourceExhausted, "PROVIDER_RATE_LIMITED"),
            ProviderFailure::Unavailable => (Code::Unavailable, "PROVIDER_UNAVAILABLE"),
            ProviderFailure::BadReply => (Code::Unavailable, "PROVIDER_BAD_REPLY"),
            ProviderFailure::DeadlineExceeded => (Code::DeadlineExceeded, "PROVIDER_TIMEOUT"),
            ProviderFailure::EgressRefused => (Code::FailedPrecondition, "EGRESS_REFUSED"),
            ProviderFailure::InsecureEndpoint => (Code::FailedPrecondition, "PLAIN_HTTP_REFUSED"),
        },
        DomainError::BodyTimeout(_) => (Code::DeadlineExceeded, "REQUEST_BODY_TIMEOUT"),
        DomainError::TooLarge(_) => (Code::ResourceExhausted, "MESSAGE_TOO_LARGE"),
        DomainError::Unauthenticated => (Code::Unauthenticated, "UNAUTHENTICATED"),
        DomainError::Unimplemented(_) => (Code::Unimplemented, "NOT_IMPLEMENTED"),
        DomainError::Unavailable => (Code::Unavailable, "DATABASE_UNAVAILABLE"),
        DomainError::Internal(detail) => {
            tracing::error!(detail = %detail, "internal error");
            (Code::Internal, "INTERNAL")
        }
    };
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    match &error {
        DomainError::InvalidArgument(violations) => {
            for violation in violations {
                details.add_bad_request_violation(
                    violation.field.clone(),
                    violation.description.clone(),
                );
            }
        }
        DomainError::InUse { blockers, .. } => {
            for blocker in blockers {
                details.add_precondition_failure_violation(
                    "IN_USE",
                    blocker.clone(),
                    "uses this resource",
                );
            }
        }
        DomainError::InstanceLimited { retry_after, .. } => {
            details.set_retry_info(Some(*retry_after));
        }
        DomainError::Provider {
            retry_after: Some(retry_after),
            ..
        } => {
            details.set_retry_info(Some(*retry_after));
        }
        _ => {}
    }
    Status::with_error_details(code, error.to_string(), details)
}

impl From<DomainError> for Status {
    fn from(error: DomainError) -> Self {
        to_status(error)
    }
}
