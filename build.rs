//! Compiles the gRPC contract in `proto/` into Rust (servers and clients) and writes the
//! descriptor set that server reflection and the `_system` write guard read at run time.
//!
//! protoc comes from `protoc-bin-vendored`, so a build needs no system protoc.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/llmregistry/v1/users.proto",
    "proto/llmregistry/v1/api_standards.proto",
    "proto/llmregistry/v1/definitions.proto",
    "proto/llmregistry/v1/instances.proto",
    "proto/llmregistry/v1/sharing.proto",
    "proto/llmregistry/v1/projects.proto",
    "proto/llmregistry/v1/audit.proto",
    "proto/llmregistry/v1/embeddings.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build does not announce its inputs; without this, proto edits would not rebuild.
    println!("cargo:rerun-if-changed=proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let vendored_includes = protoc_bin_vendored::include_path()?;
    let vendored_includes = vendored_includes
        .to_str()
        .ok_or("the vendored protoc include path is not UTF-8")?
        .to_owned();
    let includes = ["proto", vendored_includes.as_str()];

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("llmregistry_descriptor.bin"))
        .compile_with_config(config, PROTOS, &includes)?;
    Ok(())
}
