//! Using an instance through the registry: the vocabulary of an embedding call (wire protocol,
//! input type, the validated request, the checked result) and of an instance's last test. The
//! outbound call itself is `crate::providers`; who may make it is `access`.

use super::{
    DomainError,
    error::Violations,
    instance::Instance,
    names::{InstanceName, ProjectName},
};
use crate::vault::Sealed;

/// The wire format of a standard's embedding call. The numbers are the proto enum's and the
/// database's (`api_standards.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbeddingProtocol {
    /// No embedding call is known: instances of the standard cannot be used through us.
    #[default]
    Unspecified,
    OpenAiEmbeddings,
    CohereV2Embed,
    GeminiEmbedContent,
}

impl EmbeddingProtocol {
    pub fn from_number(number: i32) -> Option<Self> {
        match number {
            0 => Some(Self::Unspecified),
            1 => Some(Self::OpenAiEmbeddings),
            2 => Some(Self::CohereV2Embed),
            3 => Some(Self::GeminiEmbedContent),
            _ => None,
        }
    }

    pub fn number(self) -> i32 {
        match self {
            Self::Unspecified => 0,
            Self::OpenAiEmbeddings => 1,
            Self::CohereV2Embed => 2,
            Self::GeminiEmbedContent => 3,
        }
    }

    /// A label from a closed set, for logs and audit details.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::OpenAiEmbeddings => "openai-embeddings",
            Self::CohereV2Embed => "cohere-v2-embed",
            Self::GeminiEmbedContent => "gemini-embed-content",
        }
    }
}

/// What an Embed call names: an instance, or a project standing for the instance bound to it.
#[derive(Debug, Clone)]
pub enum CallTarget {
    Instance(InstanceName),
    Project(ProjectName),
}

impl std::fmt::Display for CallTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Instance(name) => name.fmt(f),
            Self::Project(name) => name.fmt(f),
        }
    }
}

impl CallTarget {
    /// The project, if the call named one.
    pub fn project(&self) -> Option<&ProjectName> {
        match self {
            Self::Project(project) => Some(project),
            Self::Instance(_) => None,
        }
    }
}

/// An instance as a call needs it: what the caller may see, plus what only the outbound call
/// may use (the sealed key and the standard's header), read from the instance's own row.
#[derive(Debug, Clone)]
pub struct InstanceForCall {
    pub instance: Instance,
    pub sealed_key: Option<Sealed>,
    pub protocol: EmbeddingProtocol,
    pub auth_header: String,
    pub auth_scheme: String,
    /// The dimensions of the definition it was made from (the model's own size), if any.
    pub definition_dimensions: Option<i32>,
    /// The quota of the share the call is made under (the grantee's user id and its limits):
    /// `None` for the owner, the admin, or a share without one.
    pub share_quota: Option<(i64, super::quota::Quota)>,
}

impl InstanceForCall {
    /// The smaller size to ask the provider for: only when the instance wants fewer dimensions
    /// than its definition names. Sending a size to a model that has only one is refused by
    /// several providers, and the model's own size is known only from a definition.
    pub fn reduced_dimensions(&self) -> Option<i32> {
        match (self.instance.spec.dimensions, self.definition_dimensions) {
            (Some(wanted), Some(native)) if wanted < native => Some(wanted),
            _ => None,
        }
    }
}

/// What the inputs are for; providers that distinguish them embed documents and queries
/// differently (Cohere `input_type`, Gemini `taskType`). OpenAI ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputType {
    Document,
    Query,
}

/// Bounds on one Embed call, set by the operator (`PROVIDER_MAX_INPUTS`,
/// `PROVIDER_MAX_INPUT_BYTES`).
#[derive(Debug, Clone, Copy)]
pub struct InputLimits {
    pub max_inputs: usize,
    pub max_input_bytes: usize,
}

/// Validates the inputs of an Embed call: at least one, at most `max_inputs`, each non-empty and
/// at most `max_input_bytes` (UTF-8 bytes). Every offending input is named.
pub fn check_inputs(inputs: &[String], limits: InputLimits) -> Result<(), DomainError> {
    let mut violations = Violations::default();
    if inputs.is_empty() {
        violations.add("inputs", "needs at least one text");
    }
    if inputs.len() > limits.max_inputs {
        violations.add(
            "inputs",
            format!(
                "has {} texts; at most {} per call",
                inputs.len(),
                limits.max_inputs
            ),
        );
    }
    for (index, input) in inputs.iter().enumerate() {
        if input.trim().is_empty() {
            violations.add(format!("inputs[{index}]"), "is empty");
        } else if input.len() > limits.max_input_bytes {
            violations.add(
                format!("inputs[{index}]"),
                format!(
                    "is {} bytes; at most {} per text",
                    input.len(),
                    limits.max_input_bytes
                ),
            );
        }
    }
    violations.finish()
}

/// Vectors as a provider returned them, in input order, before they are checked.
#[derive(Debug, Clone, Default)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Input tokens, where the provider reports them.
    pub input_tokens: Option<i64>,
}

/// Checks what a provider returned against what was asked: one vector per input, every vector
/// of the instance's dimensions (when it sets them, else all of one size), only finite numbers.
/// Anything else means the definition is wrong (or the provider is), and nothing is returned.
/// Answers the dimensions observed.
pub fn check_vectors(
    embeddings: &Embeddings,
    inputs: usize,
    expected_dimensions: Option<i32>,
) -> Result<usize, DomainError> {
    let mismatch = |message: String| DomainError::DimensionsMismatch(message);
    if embeddings.vectors.len() != inputs {
        return Err(mismatch(format!(
            "the provider returned {} vectors for {inputs} inputs",
            embeddings.vectors.len()
        )));
    }
    let observed = embeddings.vectors.first().map_or(0, Vec::len);
    let expected = match expected_dimensions {
        Some(dimensions) => usize::try_from(dimensions).unwrap_or(0),
        None => observed,
    };
    for (index, vector) in embeddings.vectors.iter().enumerate() {
        if vector.len() != expected {
            return Err(mismatch(format!(
                "the instance expects {expected} dimensions but the provider returned {} for \
                 input {index}",
                vector.len()
            )));
        }
        if vector.is_empty() {
            return Err(mismatch(format!(
                "the provider returned an empty vector for input {index}"
            )));
        }
        if vector.iter().any(|value| !value.is_finite()) {
            return Err(mismatch(format!(
                "the provider returned a number that is not finite in the vector for input {index}"
            )));
        }
    }
    Ok(expected)
}

/// The text every TestInstance embeds: short, harmless, and the same everywhere, so a test costs
/// the fewest tokens and says nothing about anyone's data.
pub const PROBE_TEXT: &str = "llm-registry connectivity test";

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> InputLimits {
        InputLimits {
            max_inputs: 3,
            max_input_bytes: 10,
        }
    }

    #[test]
    fn inputs_are_bounded_and_named() {
        assert!(check_inputs(&["a".into(), "b".into()], limits()).is_ok());
        let Err(DomainError::InvalidArgument(violations)) = check_inputs(&[], limits()) else {
            panic!("no inputs must be refused");
        };
        assert_eq!(violations[0].field, "inputs");
        let Err(DomainError::InvalidArgument(violations)) =
            check_inputs(&["ok".into(), " ".into(), "x".repeat(11)], limits())
        else {
            panic!("bad inputs must be refused");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["inputs[1]", "inputs[2]"]);
        assert!(check_inputs(&vec!["a".to_owned(); 4], limits()).is_err());
    }

    #[test]
    fn vectors_are_checked_against_count_dimensions_and_finiteness() {
        let of = |vectors: Vec<Vec<f32>>| Embeddings {
            vectors,
            input_tokens: None,
        };
        assert_eq!(
            check_vectors(&of(vec![vec![0.1, 0.2], vec![0.3, 0.4]]), 2, Some(2)).ok(),
            Some(2)
        );
        assert_eq!(
            check_vectors(&of(vec![vec![0.1; 5]]), 1, None).ok(),
            Some(5)
        );
        assert!(check_vectors(&of(vec![vec![0.1, 0.2]]), 2, Some(2)).is_err());
        assert!(check_vectors(&of(vec![vec![0.1, 0.2, 0.3]]), 1, Some(2)).is_err());
        assert!(check_vectors(&of(vec![vec![0.1, 0.2], vec![0.1]]), 2, None).is_err());
        assert!(check_vectors(&of(vec![vec![0.1, f32::NAN]]), 1, Some(2)).is_err());
        assert!(check_vectors(&of(vec![vec![]]), 1, None).is_err());
    }

    #[test]
    fn protocol_numbers_round_trip() {
        for number in 0..4 {
            let protocol = EmbeddingProtocol::from_number(number);
            assert_eq!(protocol.map(EmbeddingProtocol::number), Some(number));
        }
        assert_eq!(EmbeddingProtocol::from_number(4), None);
    }
}
