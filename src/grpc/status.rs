//! Domain errors as gRPC status: each error knows its code and stable reason
//! ([`DomainError::code`], [`DomainError::reason`]); this file turns them into tonic's and adds
//! the details. Every status carries `google.rpc.ErrorInfo` with the reason (clients may switch
//! on it); INVALID_ARGUMENT also carries `google.rpc.BadRequest` with one violation per bad
//! field. Internal details are logged here and never sent.
//!
//! The message also ends with the reason in brackets (`users/x not found [NOT_FOUND]`). Terminal
//! clients print the message but not the details: buf curl decodes a detail only if its own
//! binary knows the type, and grpcurl does not resolve details through reflection (its issue
//! #238), so without this the README's table of reasons could not be used from a terminal.
//! google.rpc's descriptors are served by reflection too (`services.rs`) for clients that do
//! look them up there.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{DomainError, error::ErrorCode};

/// The `ErrorInfo.domain` of every error.
pub const ERROR_DOMAIN: &str = "llm-registry";

pub fn to_status(error: DomainError) -> Status {
    if let DomainError::Internal(detail) = &error {
        tracing::error!(detail = %detail, "internal error");
    }
    let code = grpc_code(error.code());
    let reason = error.reason();
    let mut details = ErrorDetails::new();
    let mut metadata = std::collections::HashMap::new();
    if let DomainError::QuotaExceeded { limit, .. } = &error {
        // Which limit refused the call; never anyone's usage.
        metadata.insert("scope".to_owned(), limit.scope.to_owned());
        metadata.insert("metric".to_owned(), limit.metric.to_owned());
        metadata.insert("period".to_owned(), limit.period.to_owned());
        metadata.insert("limit".to_owned(), limit.limit.to_string());
    }
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
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
        DomainError::QuotaExceeded { retry_after, .. } => {
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
    Status::with_error_details(code, format!("{error} [{reason}]"), details)
}

/// tonic's code for the domain's.
fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Aborted => Code::Aborted,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::Unimplemented => Code::Unimplemented,
        ErrorCode::Internal => Code::Internal,
    }
}

impl From<DomainError> for Status {
    fn from(error: DomainError) -> Self {
        to_status(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_ends_with_the_reason_that_error_info_carries() {
        let status = to_status(DomainError::NotFound("users/nobody".to_owned()));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "users/nobody not found [NOT_FOUND]");
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "NOT_FOUND");
        assert_eq!(info.domain, ERROR_DOMAIN);
    }
}
