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
    "proto/llmregistry/v1/service_accounts.proto",
    "proto/llmregistry/v1/credentials.proto",
    "proto/llmregistry/v1/usage.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build does not announce its inputs; without this, proto edits would not rebuild.
    println!("cargo:rerun-if-changed=proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    // sqlx::migrate! embeds migrations/ when the library compiles, but cannot announce it on
    // stable Rust: a new migration alone would not rebuild the binary that runs it.
    println!("cargo:rerun-if-changed=migrations");

    announce_commit();

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

/// Makes the commit the binary is built from available as `LLMR_GIT_COMMIT` (`--version` prints
/// it): HEAD's abbreviated hash; `unknown` outside a git checkout (a source tarball) or without
/// git. Uncommitted changes are not tracked (that would rebuild on every `git add`).
#[allow(
    clippy::disallowed_methods,
    reason = "a build script: nothing async to block"
)]
fn announce_commit() {
    // HEAD moves on checkout; a commit rewrites its branch under refs (or packed-refs).
    for path in [".git/HEAD", ".git/refs", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|described| described.trim().to_owned())
        .filter(|described| !described.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LLMR_GIT_COMMIT={commit}");
}
