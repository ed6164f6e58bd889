//! How a provider call is counted in the metrics: by wire protocol and outcome (a closed set of
//! labels, so that a provider cannot grow the series), with its latency.

use crate::{
    domain::{DomainError, embedding::EmbeddingProtocol},
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
            // The error's own stable reason: a closed set, the same word as in ErrorInfo.
            outcome: match answer {
                Ok(_) => "OK",
                Err(error) => error.reason(),
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
