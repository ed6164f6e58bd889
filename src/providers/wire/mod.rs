//! The three wire formats of an embedding call, one adapter each, as the providers' API
//! references document them. An adapter builds the JSON body of one batch and reads the JSON
//! reply; everything else (headers, retries, limits) is the same for all and lives in
//! `providers::exchange`.

mod cohere;
mod gemini;
mod openai;

use url::Url;

use crate::domain::embedding::{EmbeddingProtocol, InputType};

/// What one batch's reply held, in input order.
#[derive(Debug, Default)]
pub struct BatchReply {
    pub vectors: Vec<Vec<f32>>,
    pub input_tokens: Option<i64>,
    /// The model the provider says it used, where it says so.
    pub model: Option<String>,
}

/// The settings of a call that shape the body.
pub struct CallShape<'a> {
    pub model: &'a str,
    pub input_type: InputType,
    /// A smaller size than the model's own, where the instance asks for one.
    pub reduced_dimensions: Option<i32>,
}

/// Why a destination cannot take this protocol's call.
#[derive(Debug)]
pub struct UnusableEndpoint(pub String);

/// The most inputs the provider takes in one request.
pub fn batch_limit(protocol: EmbeddingProtocol) -> usize {
    match protocol {
        EmbeddingProtocol::OpenAiEmbeddings => openai::MAX_BATCH,
        EmbeddingProtocol::CohereV2Embed => cohere::MAX_BATCH,
        EmbeddingProtocol::GeminiEmbedContent => gemini::MAX_BATCH,
        EmbeddingProtocol::Unspecified => 1,
    }
}

/// The URL a batch goes to: the stored endpoint, except that Gemini's `:embedContent` becomes
/// `:batchEmbedContents` (same host, same model path).
pub fn batch_url(protocol: EmbeddingProtocol, endpoint: &Url) -> Result<Url, UnusableEndpoint> {
    match protocol {
        EmbeddingProtocol::GeminiEmbedContent => gemini::batch_url(endpoint),
        _ => Ok(endpoint.clone()),
    }
}

pub fn body(
    protocol: EmbeddingProtocol,
    shape: &CallShape<'_>,
    texts: &[String],
) -> Result<Vec<u8>, serde_json::Error> {
    let value = match protocol {
        EmbeddingProtocol::OpenAiEmbeddings | EmbeddingProtocol::Unspecified => {
            openai::body(shape, texts)
        }
        EmbeddingProtocol::CohereV2Embed => cohere::body(shape, texts),
        EmbeddingProtocol::GeminiEmbedContent => gemini::body(shape, texts),
    };
    serde_json::to_vec(&value)
}

/// Reads a successful reply; the error says what was wrong with it (no provider text).
pub fn reply(protocol: EmbeddingProtocol, body: &[u8]) -> Result<BatchReply, String> {
    match protocol {
        EmbeddingProtocol::OpenAiEmbeddings | EmbeddingProtocol::Unspecified => openai::reply(body),
        EmbeddingProtocol::CohereV2Embed => cohere::reply(body),
        EmbeddingProtocol::GeminiEmbedContent => gemini::reply(body),
    }
    .map_err(|e| format!("the provider's reply is not the documented JSON: {e}"))
}

/// A JSON array of numbers read straight into a vector sized for embeddings, instead of one
/// grown from empty (a dozen reallocations and copies per 1,536-dimension vector).
pub fn floats<'de, D>(deserializer: D) -> Result<Vec<f32>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Floats;
    impl<'de> serde::de::Visitor<'de> for Floats {
        type Value = Vec<f32>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of numbers")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
            let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(TYPICAL_DIMENSIONS));
            while let Some(value) = seq.next_element::<f32>()? {
                values.push(value);
            }
            Ok(values)
        }
    }
    deserializer.deserialize_seq(Floats)
}

/// Room reserved for a vector whose length the reply does not announce.
const TYPICAL_DIMENSIONS: usize = 1536;

/// The provider's own message in an error reply (`error.message` for OpenAI and Gemini,
/// `message` for Cohere), else the body as text.
pub fn error_text(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Nested {
        message: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Option<Nested>,
        message: Option<String>,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope {
            error: Some(Nested {
                message: Some(message),
            }),
            ..
        })
        | Ok(Envelope {
            message: Some(message),
            ..
        }) => message,
        _ => String::from_utf8_lossy(body).into_owned(),
    }
}
