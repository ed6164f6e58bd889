//! The three wire formats of an embedding call, one adapter each, as the providers' API
//! references document them. An adapter builds the JSON body of one batch and reads the JSON
//! reply; everything else (headers, retries, limits) is the same for all and lives in
//! `providers::exchange`.

mod cohere;
mod gemini;
mod openai;

use std::{
    cell::{Cell, RefCell},
    marker::PhantomData,
};

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

/// What one batch's reply may hold: parsing stops at the first vector beyond the batch's
/// inputs, the first value beyond a vector's dimensions, or the first value beyond the call's
/// answer size, so that the memory a reply takes is bounded by what the call may answer, not by
/// what the provider sends (`[],[],...` costs a vector's header per three bytes of reply).
#[derive(Debug, Clone, Copy)]
pub struct ReplyLimits {
    /// The batch's inputs.
    pub max_vectors: usize,
    /// The instance's dimensions, or the largest an instance may declare.
    pub max_dimensions: usize,
    /// The numbers the call's answer may still hold.
    pub max_floats: usize,
}

const NO_LIMITS: ReplyLimits = ReplyLimits {
    max_vectors: 0,
    max_dimensions: 0,
    max_floats: 0,
};

thread_local! {
    /// The limits of the reply being parsed on this thread (parsing is synchronous, so one at a
    /// time), and the numbers read so far; the serde visitors below read them.
    static PARSING: Cell<(ReplyLimits, usize)> = const { Cell::new((NO_LIMITS, 0)) };
    /// Why parsing stopped at a limit (our text, not the provider's).
    static OVER_LIMIT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Reads a successful reply within `limits`, answering it with the count of numbers it held.
/// The error says what was wrong with it in our words, never quoting the reply (serde's
/// messages can: a key echoed into a field of the wrong type).
pub fn reply(
    protocol: EmbeddingProtocol,
    body: &[u8],
    limits: ReplyLimits,
) -> Result<(BatchReply, usize), String> {
    PARSING.with(|parsing| parsing.set((limits, 0)));
    OVER_LIMIT.with(|over| over.borrow_mut().take());
    let parsed = match protocol {
        EmbeddingProtocol::OpenAiEmbeddings | EmbeddingProtocol::Unspecified => openai::reply(body),
        EmbeddingProtocol::CohereV2Embed => cohere::reply(body),
        EmbeddingProtocol::GeminiEmbedContent => gemini::reply(body),
    };
    let (_, floats) = PARSING.with(|parsing| parsing.replace((NO_LIMITS, 0)));
    let over_limit = OVER_LIMIT.with(|over| over.borrow_mut().take());
    match parsed {
        Ok(reply) => Ok((reply, floats)),
        Err(error) => Err(over_limit.unwrap_or_else(|| {
            format!(
                "the provider's reply is not the documented JSON ({})",
                describe(&error)
            )
        })),
    }
}

/// Why an adapter could not read a reply.
#[derive(Debug)]
pub enum ReplyError {
    Json(serde_json::Error),
    /// Our own description of a reply that parsed but does not fit together.
    Shape(String),
}

impl From<serde_json::Error> for ReplyError {
    fn from(error: serde_json::Error) -> Self {
        Self::Json(error)
    }
}

/// What was wrong with a reply: of what kind, and where.
fn describe(error: &ReplyError) -> String {
    match error {
        ReplyError::Json(error) => {
            let kind = match error.classify() {
                serde_json::error::Category::Io => "unreadable",
                serde_json::error::Category::Syntax => "malformed JSON",
                serde_json::error::Category::Data => "a field is missing or of the wrong type",
                serde_json::error::Category::Eof => "it ends early",
            };
            format!("{kind} at line {} column {}", error.line(), error.column())
        }
        ReplyError::Shape(what) => what.clone(),
    }
}

fn over_limit<E: serde::de::Error>(what: String) -> E {
    OVER_LIMIT.with(|over| *over.borrow_mut() = Some(what.clone()));
    E::custom(what)
}

/// A JSON array of numbers, no longer than the reply's limits allow. Room grows with what
/// arrives, never reserved from an assumed size.
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
            let mut values = Vec::new();
            while let Some(value) = seq.next_element::<f32>()? {
                let (limits, read) = PARSING.with(Cell::get);
                if values.len() == limits.max_dimensions {
                    return Err(over_limit(format!(
                        "the provider's reply holds a vector longer than {} dimensions",
                        limits.max_dimensions
                    )));
                }
                if read == limits.max_floats {
                    return Err(over_limit(format!(
                        "the provider's reply holds more numbers than the largest answer \
                         allows ({} in all, PROVIDER_MAX_ANSWER_BYTES)",
                        limits.max_floats
                    )));
                }
                PARSING.with(|parsing| parsing.set((limits, read + 1)));
                values.push(value);
            }
            Ok(values)
        }
    }
    deserializer.deserialize_seq(Floats)
}

/// The reply's list of vectors, no longer than the batch's inputs.
pub fn vectors<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Items<T>(PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Items<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of embeddings")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let (limits, _) = PARSING.with(Cell::get);
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<T>()? {
                if items.len() == limits.max_vectors {
                    return Err(over_limit(format!(
                        "the provider's reply holds more vectors than the batch's {} inputs",
                        limits.max_vectors
                    )));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    deserializer.deserialize_seq(Items(PhantomData))
}

/// The provider's own message in an error reply, from its documented structured fields only
/// (`error.message` for OpenAI and Gemini, `message` for Cohere): a body that is not such JSON
/// reaches nobody.
pub fn error_text(body: &[u8]) -> Option<String> {
    let envelope: ErrorEnvelope = serde_json::from_slice(body).ok()?;
    envelope
        .error
        .and_then(|error| error.message)
        .or(envelope.message)
}

/// The provider's machine-readable error code, where its documented error shape has one
/// (OpenAI `error.code` or `error.type`, Gemini `error.status`), if it reads as an identifier.
pub fn error_code(body: &[u8]) -> Option<String> {
    let envelope: ErrorEnvelope = serde_json::from_slice(body).ok()?;
    let error = envelope.error?;
    [error.code, error.status, error.kind]
        .into_iter()
        .flatten()
        .find_map(|value| match value {
            serde_json::Value::String(code)
                if !code.is_empty()
                    && code.len() <= 64
                    && code
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') =>
            {
                Some(code)
            }
            _ => None,
        })
}

#[derive(serde::Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorFields>,
    message: Option<String>,
}

#[derive(serde::Deserialize)]
struct ErrorFields {
    message: Option<String>,
    code: Option<serde_json::Value>,
    status: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
}
