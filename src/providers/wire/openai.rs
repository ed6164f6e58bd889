//! OpenAI `POST /v1/embeddings` (also vLLM, Ollama, TEI and other OpenAI-compatible servers):
//! `{"model", "input": [...], "encoding_format": "float", "dimensions"?}`; the reply is
//! `{"data": [{"embedding": [...], "index": n}], "model", "usage": {"prompt_tokens"}}`, where
//! `index` says which input a vector belongs to.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{BatchReply, CallShape, ReplyError};

/// OpenAI takes at most 2,048 inputs per request.
pub const MAX_BATCH: usize = 2048;

pub fn body(shape: &CallShape<'_>, texts: &[String]) -> Value {
    let mut body = json!({
        "model": shape.model,
        "input": texts,
        "encoding_format": "float",
    });
    if let Some(dimensions) = shape.reduced_dimensions {
        body["dimensions"] = json!(dimensions);
    }
    body
}

#[derive(Deserialize)]
struct Reply {
    #[serde(deserialize_with = "super::vectors")]
    data: Vec<Item>,
    model: Option<String>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(deserialize_with = "super::floats")]
    embedding: Vec<f32>,
    index: usize,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<i64>,
}

pub fn reply(body: &[u8]) -> Result<BatchReply, ReplyError> {
    let reply: Reply = serde_json::from_slice(body)?;
    let count = reply.data.len();
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; count];
    for item in reply.data {
        let slot = vectors.get_mut(item.index).ok_or_else(|| {
            ReplyError::Shape(format!(
                "index {} is outside the {count} vectors",
                item.index
            ))
        })?;
        if slot.replace(item.embedding).is_some() {
            return Err(ReplyError::Shape(format!(
                "index {} appears twice",
                item.index
            )));
        }
    }
    Ok(BatchReply {
        vectors: vectors.into_iter().flatten().collect(),
        input_tokens: reply.usage.and_then(|usage| usage.prompt_tokens),
        model: reply.model,
    })
}
