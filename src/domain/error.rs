//! The closed set of errors the service can answer with. Each error knows its gRPC code (named
//! here, so that the domain knows no tonic) and its stable `ErrorInfo` reason
//! ([`DomainError::code`], [`DomainError::reason`]): the status mapping, the metrics and the
//! audit trail all ask it. Messages never carry secrets.

use std::fmt;

/// One invalid request field, reported as a `google.rpc.BadRequest` field violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The request field path, e.g. `definition.endpoint`.
    pub field: String,
    /// What is wrong with it, for a person to read.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The caller sent something malformed; every offending field is named.
    #[error("invalid argument: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The resource does not exist, or the caller may not know that it does (same answer).
    #[error("{0} not found")]
    NotFound(String),
    /// Create never overwrites.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The caller is known but not allowed to do this.
    #[error("{message}")]
    PermissionDenied {
        reason: PermissionReason,
        message: String,
    },
    /// The request carried an etag that no longer matches.
    #[error("{0} has changed since the etag was read; read it again and retry")]
    EtagMismatch(String),
    /// The resource is in use; the message and `blockers` (resource names, reported as
    /// `google.rpc.PreconditionFailure` violations) say what blocks the change.
    #[error("{message}")]
    InUse {
        message: String,
        blockers: Vec<String>,
    },
    /// The resource is not in the state the operation needs; the reason says which.
    #[error("{message}")]
    FailedPrecondition {
        reason: PreconditionReason,
        message: String,
    },
    /// Too many calls are running and waiting; the caller should back off and retry.
    #[error("the service is at capacity; retry with backoff")]
    Overloaded,
    /// A per-instance limit of provider calls (concurrency here, or the rate shared by every
    /// replica) is reached; retry after `retry_after`.
    #[error("{message}")]
    InstanceLimited {
        reason: LimitReason,
        message: String,
        retry_after: std::time::Duration,
    },
    /// A quota of the caller's share or the instance's budget would be passed by this call;
    /// nothing was sent. Details name the limit; retry when its window resets.
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        limit: ExceededLimit,
        retry_after: std::time::Duration,
    },
    /// The provider returned vectors that do not match the instance (count, dimensions, or not
    /// finite): its definition is wrong, and nothing is returned.
    #[error("{0}")]
    DimensionsMismatch(String),
    /// The outbound call to the provider failed; `message` is ours plus, where the provider gave
    /// one, its own text shortened and scrubbed of the key.
    #[error("{message}")]
    Provider {
        failure: ProviderFailure,
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// The request's body did not arrive within the body deadline after its headers.
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u128),
    /// The request is larger than the service accepts.
    #[error("the request is larger than {0} bytes")]
    TooLarge(usize),
    /// No or unknown bearer token.
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// The method exists in the contract but is not built yet.
    #[error("{0} is not implemented yet")]
    Unimplemented(&'static str),
    /// The database cannot be reached; the caller may retry.
    #[error("the database is unavailable")]
    Unavailable,
    /// The key that sealed an API key cannot be unwrapped now (KEY_SOURCE=vault-transit, and
    /// transit unreachable or refusing); the caller may retry. The message names no secret.
    #[error("{0}")]
    KeysUnavailable(String),
    /// A fault of ours. The detail is logged, never sent to the caller.
    #[error("internal error")]
    Internal(String),
}

/// Why an operation cannot run in the resource's present state; each a stable `ErrorInfo` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreconditionReason {
    /// An update would move a stored key to a new endpoint or API standard without the key.
    KeyRebindRequired,
    /// The project's instance was revoked; it must be bound again.
    InstanceRevoked,
    /// The instance's API standard has no embedding protocol, so it cannot be called.
    NoEmbeddingProtocol,
    /// The instance holds no API key to call its provider with.
    NoApiKey,
    /// The instance's owner has not allowed ResolveCredential to release its key.
    ReleaseNotAllowed,
    /// A key would be released over a listener without TLS, which the operator did not allow.
    PlaintextTransport,
}

/// The quota limit a call would have passed, as the caller is told it (`ErrorInfo` metadata):
/// the words of `quota::QuotaScope`, `QuotaMetric` and `QuotaPeriod`, and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExceededLimit {
    pub scope: &'static str,
    pub metric: &'static str,
    pub period: &'static str,
    pub limit: i64,
}

/// Which per-instance limit refused a provider call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// Too many calls of this instance are running on this replica.
    Concurrency,
    /// The instance's requests per minute, counted across replicas, are used up.
    Rate,
    /// The service account's credential releases per minute, counted across replicas, are used
    /// up.
    ReleaseRate,
    /// The caller (the acting user or the account) has its share of provider calls running.
    CallerProviderCalls,
    /// Every place of the provider call pool is taken on this replica.
    ProviderPool,
    /// The process-wide budget for provider reply bytes in flight is spent.
    ProviderReplyMemory,
}

/// How an outbound provider call failed; each maps to one gRPC code and `ErrorInfo` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderFailure {
    /// The provider refused the request as malformed (400, 422).
    RejectedRequest,
    /// The provider refused the instance's key (401, 403).
    RejectedKey,
    /// The endpoint or model does not exist at the provider (404).
    NotFound,
    /// The provider answered with a redirect, which is never followed (it would carry the key
    /// to another place).
    Redirected,
    /// The provider is rate limiting (429 after the retries allowed).
    RateLimited,
    /// 5xx, reset, refused connection or a per-attempt timeout, after the retries allowed.
    Unavailable,
    /// The reply was not the documented JSON, or larger than allowed.
    BadReply,
    /// The caller's deadline passed before the provider answered.
    DeadlineExceeded,
    /// The endpoint resolves to an address the egress policy forbids (loopback, link-local,
    /// private), checked on the resolved address before connecting.
    EgressRefused,
    /// The endpoint is plain http and its host is not one the operator allows.
    InsecureEndpoint,
}

/// Why a known caller was refused; each becomes a distinct, stable `ErrorInfo` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionReason {
    /// Only administrators may do this.
    AdminOnly,
    /// Writes under `users/_system` are the admin's alone.
    SystemNamespace,
    /// Writing into another user's namespace.
    ForeignNamespace,
    /// The caller's role on the resource is too low.
    InsufficientRole,
    /// The reserved user cannot be changed this way by anyone.
    ReservedUser,
    /// The act-as metadata was refused: sent by a caller that is not a service account, by one
    /// without ACT_AS_USER, or naming a user it may not act for (or who does not exist: the
    /// same answer).
    ActAsDenied,
    /// Only a service account with RELEASE_CREDENTIALS, acting for a user, may receive a key.
    ReleaseDenied,
}

/// The gRPC status codes the service answers with, as gRPC names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Aborted,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    Unauthenticated,
    Unimplemented,
    Internal,
}

impl ErrorCode {
    /// The canonical upper-case name, as the audit trail records outcomes.
    pub fn name(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::Aborted => "ABORTED",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::Unavailable => "UNAVAILABLE",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::Internal => "INTERNAL",
        }
    }
}

impl DomainError {
    /// The gRPC code this error answers with.
    pub fn code(&self) -> ErrorCode {
        self.code_and_reason().0
    }

    /// The stable `ErrorInfo` reason clients may switch on (also the metrics' and the audit
    /// trail's word for it).
    pub fn reason(&self) -> &'static str {
        self.code_and_reason().1
    }

    /// The one table of codes and reasons.
    fn code_and_reason(&self) -> (ErrorCode, &'static str) {
        match self {
            Self::InvalidArgument(_) => (ErrorCode::InvalidArgument, "INVALID_ARGUMENT"),
            Self::NotFound(_) => (ErrorCode::NotFound, "NOT_FOUND"),
            Self::AlreadyExists(_) => (ErrorCode::AlreadyExists, "ALREADY_EXISTS"),
            Self::PermissionDenied { reason, .. } => (
                ErrorCode::PermissionDenied,
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
            Self::EtagMismatch(_) => (ErrorCode::Aborted, "ETAG_MISMATCH"),
            Self::InUse { .. } => (ErrorCode::FailedPrecondition, "RESOURCE_IN_USE"),
            Self::FailedPrecondition { reason, .. } => (
                ErrorCode::FailedPrecondition,
                match reason {
                    PreconditionReason::KeyRebindRequired => "KEY_REBIND_REQUIRED",
                    PreconditionReason::InstanceRevoked => "INSTANCE_REVOKED",
                    PreconditionReason::NoEmbeddingProtocol => "NO_EMBEDDING_PROTOCOL",
                    PreconditionReason::NoApiKey => "NO_API_KEY",
                    PreconditionReason::ReleaseNotAllowed => "RELEASE_NOT_ALLOWED",
                    PreconditionReason::PlaintextTransport => "PLAINTEXT_TRANSPORT",
                },
            ),
            Self::Overloaded => (ErrorCode::ResourceExhausted, "OVERLOADED"),
            Self::InstanceLimited { reason, .. } => (
                ErrorCode::ResourceExhausted,
                match reason {
                    LimitReason::Concurrency => "INSTANCE_CONCURRENCY_LIMITED",
                    LimitReason::Rate => "INSTANCE_RATE_LIMITED",
                    LimitReason::ReleaseRate => "CREDENTIAL_RELEASE_RATE_LIMITED",
                    LimitReason::CallerProviderCalls => "CALLER_PROVIDER_CALLS_LIMITED",
                    LimitReason::ProviderPool => "PROVIDER_POOL_FULL",
                    LimitReason::ProviderReplyMemory => "PROVIDER_REPLY_MEMORY_LIMITED",
                },
            ),
            Self::QuotaExceeded { .. } => (ErrorCode::ResourceExhausted, "QUOTA_EXCEEDED"),
            Self::DimensionsMismatch(_) => (ErrorCode::FailedPrecondition, "DIMENSIONS_MISMATCH"),
            Self::Provider { failure, .. } => match failure {
                ProviderFailure::RejectedRequest => {
                    (ErrorCode::InvalidArgument, "PROVIDER_REJECTED_REQUEST")
                }
                ProviderFailure::RejectedKey => {
                    (ErrorCode::FailedPrecondition, "PROVIDER_REJECTED_KEY")
                }
                ProviderFailure::NotFound => (ErrorCode::FailedPrecondition, "PROVIDER_NOT_FOUND"),
                ProviderFailure::Redirected => {
                    (ErrorCode::FailedPrecondition, "PROVIDER_REDIRECTED")
                }
                ProviderFailure::RateLimited => {
                    (ErrorCode::ResourceExhausted, "PROVIDER_RATE_LIMITED")
                }
                ProviderFailure::Unavailable => (ErrorCode::Unavailable, "PROVIDER_UNAVAILABLE"),
                ProviderFailure::BadReply => (ErrorCode::Unavailable, "PROVIDER_BAD_REPLY"),
                ProviderFailure::DeadlineExceeded => {
                    (ErrorCode::DeadlineExceeded, "PROVIDER_TIMEOUT")
                }
                ProviderFailure::EgressRefused => (ErrorCode::FailedPrecondition, "EGRESS_REFUSED"),
                ProviderFailure::InsecureEndpoint => {
                    (ErrorCode::FailedPrecondition, "PLAIN_HTTP_REFUSED")
                }
            },
            Self::BodyTimeout(_) => (ErrorCode::DeadlineExceeded, "REQUEST_BODY_TIMEOUT"),
            Self::TooLarge(_) => (ErrorCode::ResourceExhausted, "MESSAGE_TOO_LARGE"),
            Self::Unauthenticated => (ErrorCode::Unauthenticated, "UNAUTHENTICATED"),
            Self::Unimplemented(_) => (ErrorCode::Unimplemented, "NOT_IMPLEMENTED"),
            Self::Unavailable => (ErrorCode::Unavailable, "DATABASE_UNAVAILABLE"),
            Self::KeysUnavailable(_) => (ErrorCode::Unavailable, "KEY_SOURCE_UNAVAILABLE"),
            Self::Internal(_) => (ErrorCode::Internal, "INTERNAL"),
        }
    }

    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn admin_only(what: &str) -> Self {
        Self::PermissionDenied {
            reason: PermissionReason::AdminOnly,
            message: format!("only an administrator may {what}"),
        }
    }

    pub fn in_use(message: impl Into<String>, blockers: Vec<String>) -> Self {
        Self::InUse {
            message: message.into(),
            blockers,
        }
    }

    pub fn system_namespace() -> Self {
        Self::PermissionDenied {
            reason: PermissionReason::SystemNamespace,
            message: "users/_system is written by administrators only".to_owned(),
        }
    }
}

fn summarize(violations: &[FieldViolation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
    parts.join("; ")
}

/// Collects field violations so that one answer names every bad field, not just the first.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Keeps the value of a check, or records its violations and gives `None`.
    pub fn take<T>(&mut self, result: Result<T, DomainError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(DomainError::InvalidArgument(found)) => {
                self.0.extend(found);
                None
            }
            Err(other) => {
                // Validation helpers only produce InvalidArgument; keep anything else visible.
                self.add("", other.to_string());
                None
            }
        }
    }

    pub fn finish(self) -> Result<(), DomainError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DomainError::InvalidArgument(self.0))
        }
    }
}

impl fmt::Display for PermissionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Runs two independent checks and reports the violations of both, not only the first's.
pub fn both<A, B>(
    a: Result<A, DomainError>,
    b: Result<B, DomainError>,
) -> Result<(A, B), DomainError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (
            Err(DomainError::InvalidArgument(mut first)),
            Err(DomainError::InvalidArgument(second)),
        ) => {
            first.extend(second);
            Err(DomainError::InvalidArgument(first))
        }
        (Err(error), _) | (_, Err(error)) => Err(error),
    }
}
