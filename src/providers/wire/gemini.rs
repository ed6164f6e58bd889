//! Gemini `models/{model}:batchEmbedContents` (derived from the stored `:embedContent`
//! endpoint): `{"requests": [{"model": "models/{model}", "content": {"parts": [{"text"}]},
//! "taskType": "RETRIEVAL_DOCUMENT" | "RETRIEVAL_QUERY", "outputDimensionality"?}]}`; the reply
//! is `{"embeddings": [{"values": [...]}]}` in request order. Gemini reports no token usage
//! here. The key goes in the `x-goog-api-key` header (the standard's), never in `?key=`.

use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::{BatchReply, CallShape, ReplyError, UnusableEndpoint};
use crate::domain::embedding::InputType;

/// Gemini takes at most 100 requests per batch.
pub const MAX_BATCH: usize = 100;

const SINGLE: &str = ":embedContent";
const BATCH: &str = ":batchEmbedContents";

pub fn batch_url(endpoint: &Url) -> Result<Url, UnusableEndpoint> {
    let path = endpoint.path();
    let batch_path = if let Some(model_path) = path.strip_suffix(SINGLE) {
        format!("{model_path}{BATCH}")
    } else if path.ends_with(BATCH) {
        path.to_owned()
    } else {
        return Err(UnusableEndpoint(format!(
            "a Gemini endpoint ends with {SINGLE} (or {BATCH}), as in \
             .../v1beta/models/gemini-embedding-001{SINGLE}"
        )));
    };
    let mut url = endpoint.clone();
    url.set_path(&batch_path);
    Ok(url)
}

pub fn body(shape: &CallShape<'_>, texts: &[String]) -> Value {
    let model = if shape.model.starts_with("models/") {
        shape.model.to_owned()
    } else {
        format!("models/{}", shape.model)
    };
    let task_type = match shape.input_type {
        InputType::Document => "RETRIEVAL_DOCUMENT",
        InputType::Query => "RETRIEVAL_QUERY",
    };
    let requests: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut request = json!({
                "model": model,
                "content": {"parts": [{"text": text}]},
                "taskType": task_type,
            });
            if let Some(dimensions) = shape.reduced_dimensions {
                request["outputDimensionality"] = json!(dimensions);
            }
            request
        })
        .collect();
    json!({ "requests": requests })
}

#[derive(Deserialize)]
struct Reply {
    #[serde(deserialize_with = "super::vectors")]
    embeddings: Vec<ContentEmbedding>,
}

#[derive(Deserialize)]
struct ContentEmbedding {
    #[serde(deserialize_with = "super::floats")]
    values: Vec<f32>,
}

pub fn reply(body: &[u8]) -> Result<BatchReply, ReplyError> {
    let reply: Reply = serde_json::from_slice(body)?;
    Ok(BatchReply {
        vectors: reply.embeddings.into_iter().map(|e| e.values).collect(),
        input_tokens: None,
        model: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_endpoint_is_derived_from_the_stored_one() {
        let derive = |url: &str| {
            Url::parse(url)
                .ok()
                .and_then(|url| batch_url(&url).ok())
                .map(|url| url.to_string())
        };
        assert_eq!(
            derive("https://g.example/v1beta/models/gemini-embedding-001:embedContent").as_deref(),
            Some("https://g.example/v1beta/models/gemini-embedding-001:batchEmbedContents")
        );
        assert_eq!(
            derive("https://g.example/v1beta/models/m:batchEmbedContents").as_deref(),
            Some("https://g.example/v1beta/models/m:batchEmbedContents")
        );
        assert_eq!(derive("https://g.example/v1beta/models/m"), None);
    }
}
