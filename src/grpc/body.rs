//! Request bodies at the edge. [`BodyGate`] reads the one unary frame of every call of ours, under
//! its own short deadline and before an admission slot is taken, so that a stream whose body
//! never comes holds nothing but its own task and is refused (DEADLINE_EXCEEDED) when the deadline
//! passes. A write's message is decoded here, once, for the layers that must look into it (the
//! refusal audit and the `_system` guard); the same bytes go on to tonic.
//!
//! A gzip-compressed frame (`grpc-encoding: gzip`) is inflated for the look, under the same size
//! limit as an uncompressed one, so a small compressed bomb cannot inflate past it; the handler
//! still receives the frame as sent and tonic inflates it again.

use std::{io::Read, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::body::Body;

use super::{
    layer::{Middleware, Next},
    methods::{DecodedRequest, Method, MethodTable},
    refusal_audit::RefusalRecorder,
    status::to_status,
};
use crate::domain::{DomainError, caller::Caller};

/// Reads every request body of ours before admission, under the body deadline.
pub struct BodyGate {
    methods: Arc<MethodTable>,
    recorder: Arc<RefusalRecorder>,
    max_message_bytes: usize,
    deadline: Duration,
}

impl BodyGate {
    pub fn new(
        methods: Arc<MethodTable>,
        recorder: Arc<RefusalRecorder>,
        max_message_bytes: usize,
        deadline: Duration,
    ) -> Self {
        Self {
            methods,
            recorder,
            max_message_bytes,
            deadline,
        }
    }
}

impl Middleware for BodyGate {
    fn call(
        self: Arc<Self>,
        request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>> {
        let Method::Ours(method) = self.methods.of(&request) else {
            return Box::pin(next.run(request));
        };
        Box::pin(async move {
            let encoding = Encoding::of(request.headers());
            let (parts, body) = request.into_parts();
            let read = tokio::time::timeout(self.deadline, read_body(body, self.max_message_bytes))
                .await
                .unwrap_or(Err(DomainError::BodyTimeout(self.deadline.as_millis())));
            let bytes = match read {
                Ok(bytes) => bytes,
                Err(error) => {
                    let status = to_status(error);
                    if !method.read_only
                        && let Some(caller) = parts.extensions.get::<Caller>()
                    {
                        self.recorder
                            .record(caller, &method.short_name, "", status.code())
                            .await;
                    }
                    return status.into_http();
                }
            };
            // Writes are decoded once, here; a body that does not decode is left for the
            // `_system` guard to refuse with the precise error.
            let decoded = (!method.read_only)
                .then(|| decode_frame(&method.input, encoding, &bytes, self.max_message_bytes).ok())
                .flatten();
            let mut request = with_body(parts, bytes);
            if let Some(message) = decoded {
                request.extensions_mut().insert(DecodedRequest(message));
            }
            next.run(request).await
        })
    }
}

/// gRPC frames start with a 1-byte compression flag and a 4-byte big-endian length.
pub const FRAME_HEADER_LEN: usize = 5;

/// Buffers a unary request body of at most `max_message_bytes` (plus its frame header):
/// RESOURCE_EXHAUSTED when it is larger, INVALID_ARGUMENT when it cannot be read.
pub async fn read_body(body: Body, max_message_bytes: usize) -> Result<Bytes, DomainError> {
    match Limited::new(body, max_message_bytes + FRAME_HEADER_LEN)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(DomainError::TooLarge(max_message_bytes))
        }
        Err(_) => Err(DomainError::invalid(
            "",
            "the request body could not be read",
        )),
    }
}

/// Rebuilds a request around a buffered body.
pub fn with_body(parts: http::request::Parts, bytes: Bytes) -> Request<Body> {
    Request::from_parts(parts, Body::new(Full::new(bytes)))
}

/// The compression a request declares in `grpc-encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// Anything else: tonic refuses it with UNIMPLEMENTED, and so do we.
    Unsupported,
}

impl Encoding {
    pub fn of(headers: &HeaderMap) -> Self {
        match headers.get("grpc-encoding").map(|v| v.as_bytes()) {
            None | Some(b"identity") => Encoding::Identity,
            Some(b"gzip") => Encoding::Gzip,
            Some(_) => Encoding::Unsupported,
        }
    }
}

/// Decodes one unary gRPC frame as a message of type `input`, inflating it first when its flag
/// says it is compressed with the request's `encoding`.
pub fn decode_frame(
    input: &MessageDescriptor,
    encoding: Encoding,
    body: &[u8],
    max_message_bytes: usize,
) -> Result<DynamicMessage, DomainError> {
    let malformed = || DomainError::invalid("", "the request is not a well-formed gRPC message");
    if body.len() < FRAME_HEADER_LEN {
        return Err(malformed());
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != FRAME_HEADER_LEN + length {
        return Err(malformed());
    }
    let payload = &body[FRAME_HEADER_LEN..];
    let decode =
        |bytes: &[u8]| DynamicMessage::decode(input.clone(), bytes).map_err(|_| malformed());
    match (body[0], encoding) {
        (0, _) => decode(payload),
        (1, Encoding::Gzip) => decode(&gunzip(payload, max_message_bytes)?),
        (1, Encoding::Identity) => Err(DomainError::invalid(
            "",
            "the frame is flagged compressed but the request declares no grpc-encoding",
        )),
        (1, Encoding::Unsupported) => Err(DomainError::Unimplemented(
            "a grpc-encoding other than gzip or identity",
        )),
        _ => Err(malformed()),
    }
}

/// Inflates a gzip payload, refusing one that would exceed `max_message_bytes`.
fn gunzip(payload: &[u8], max_message_bytes: usize) -> Result<Vec<u8>, DomainError> {
    let mut inflated = Vec::new();
    let limit = u64::try_from(max_message_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    flate2::read::GzDecoder::new(payload)
        .take(limit)
        .read_to_end(&mut inflated)
        .map_err(|_| DomainError::invalid("", "the request is not well-formed gzip"))?;
    if inflated.len() > max_message_bytes {
        return Err(DomainError::TooLarge(max_message_bytes));
    }
    Ok(inflated)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use prost_reflect::DescriptorPool;

    use super::*;

    fn input() -> MessageDescriptor {
        DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .unwrap()
            .get_message_by_name("llmregistry.v1.GetInstanceRequest")
            .unwrap()
    }

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut framed = vec![flag];
        framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        framed.extend_from_slice(payload);
        framed
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_frames_are_inflated_within_the_limit() {
        let plain = b"\x0a\x0busers/a/x/y".to_vec();
        let compressed = frame(1, &gzip(&plain));
        let message = decode_frame(&input(), Encoding::Gzip, &compressed, 1024).unwrap();
        assert_eq!(
            message.get_field_by_name("name").unwrap().as_str(),
            Some("users/a/x/y")
        );
        // A bomb: 1 MiB of zeros in a few hundred bytes, against a 4 KiB limit.
        let bomb = frame(1, &gzip(&vec![0u8; 1 << 20]));
        assert!(bomb.len() < 4096);
        assert!(matches!(
            decode_frame(&input(), Encoding::Gzip, &bomb, 4096),
            Err(DomainError::TooLarge(4096))
        ));
        assert!(decode_frame(&input(), Encoding::Identity, &compressed, 1024).is_err());
        assert!(decode_frame(&input(), Encoding::Gzip, &frame(1, b"not gzip"), 1024).is_err());
    }
}
