//! How a provider call is counted in the metrics: by wire protocol and outcome (a closed set of
//! labels, so that a provider cannot grow the series), with its latency.

use crate::{
    domain::{DomainError, embedding::EmbeddingProtocol, error::ProviderFailure},
    metrics::{ProtocolLabel, ProviderLabels, metrics},
};

use super::ProviderAnswer;

/// Counts a finished provider call in the metrics, by protocol and outcome, with its latency.
pub(super) fn record_call(
    protocol: EmbeddingProtocol,
    answer: &Result<ProviderAnswer, DomainError>,
    started: std::time::Instant,
) {
    let protocol = protocol_label(protocol);
    let metrics = metrics();
    metrics
        .provider_requests
        .get_or_create(&ProviderLabels {
            protocol,
            outcome: match answer {
                Ok(_) => "ok",
                Err(error) => outcome_label(error),
            },
        })
        .inc();
    metrics
        .provider_duration
        .get_or_create(&ProtocolLabel { protocol })
        .observe(started.elapsed().as_secs_f64());
}

/// The protocol as a metrics label.
pub(super) fn protocol_label(protocol: EmbeddingProtocol) -> &'static str {
    match protocol {
        EmbeddingProtocol::Unspecified => "unspecified",
        EmbeddingProtocol::OpenAiEmbeddings => "openai",
        EmbeddingProtocol::CohereV2Embed => "cohere",
        EmbeddingProtocol::GeminiEmbedContent => "gemini",
    }
}

/// A failed provider call's outcome as a metrics label (a closed set).
fn outcome_label(error: &DomainError) -> &'static str {
    match error {
        DomainError::Provider { failure, .. } => match failure {
            ProviderFailure::RejectedRequest => "rejected_request",
            ProviderFailure::RejectedKey => "rejected_key",
            ProviderFailure::NotFound => "not_found",
            ProviderFailure::Redirected => "redirected",
            ProviderFailure::RateLimited => "rate_limited",
            ProviderFailure::Unavailable => "unavailable",
            ProviderFailure::BadReply => "bad_reply",
            ProviderFailure::DeadlineExceeded => "deadline_exceeded",
            ProviderFailure::EgressRefused => "egress_refused",
            ProviderFailure::InsecureEndpoint => "insecure_endpoint",
        },
        DomainError::DimensionsMismatch(_) => "dimensions_mismatch",
        DomainError::FailedPrecondition { .. } => "precondition",
        _ => "error",
    }
}
