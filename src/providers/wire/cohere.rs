//! Cohere `POST /v2/embed`: `{"model", "texts": [...], "input_type": "search_document" |
//! "search_query", "embedding_types": ["float"], "output_dimension"?}`; the reply is
//! `{"embeddings": {"float": [[...]]}, "meta": {"billed_units": {"input_tokens"}}}`, vectors in
//! input order.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{BatchReply, CallShape, ReplyError};
use crate::domain::embedding::InputType;

/// Cohere takes at most 96 texts per request.
pub const MAX_BATCH: usize = 96;

pub fn body(shape: &CallShape<'_>, texts: &[String]) -> Value {
    let mut body = json!({
        "model": shape.model,
        "texts": texts,
        "input_type": match shape.input_type {
            InputType::Document => "search_document",
            InputType::Query => "search_query",
        },
        "embedding_types": ["float"],
    });
    if let Some(dimensions) = shape.reduced_dimensions {
        body["output_dimension"] = json!(dimensions);
    }
    body
}

#[derive(Deserialize)]
struct Reply {
    embeddings: Embeddings,
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Embeddings {
    #[serde(deserialize_with = "super::vectors")]
    float: Vec<Vector>,
}

#[derive(Deserialize)]
#[serde(transparent)]
struct Vector(#[serde(deserialize_with = "super::floats")] Vec<f32>);

#[derive(Deserialize)]
struct Meta {
    billed_units: Option<BilledUnits>,
}

#[derive(Deserialize)]
struct BilledUnits {
    input_tokens: Option<f64>,
}

pub fn reply(body: &[u8]) -> Result<BatchReply, ReplyError> {
    let reply: Reply = serde_json::from_slice(body)?;
    Ok(BatchReply {
        vectors: reply.embeddings.float.into_iter().map(|v| v.0).collect(),
        // Cohere documents billed units as numbers; whole tokens in practice.
        input_tokens: reply
            .meta
            .and_then(|meta| meta.billed_units)
            .and_then(|units| units.input_tokens)
            .map(|tokens| tokens.round() as i64),
        model: None,
    })
}
