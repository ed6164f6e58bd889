//! Code generated from `proto/` by build.rs, and the encoded descriptor set used by server
//! reflection and the `_system` guard.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("llmregistry.v1");
}

/// The encoded `FileDescriptorSet` of every llm-registry proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("llmregistry_descriptor");
