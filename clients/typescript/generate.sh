#!/usr/bin/env bash
# Generates the TypeScript client of llm-registry into clients/typescript/src/gen (not committed):
# message types and service descriptors from proto/ with protoc-gen-es (@bufbuild/protobuf), run
# by Debian's protoc. google.rpc's error details (ErrorInfo, RetryInfo, ...) are generated from
# the copy of error_details.proto that the tonic-types crate ships (the server's own source of
# those types), found through `cargo metadata`. Installs the pinned npm packages first
# (package-lock.json) when they are missing.
set -euo pipefail
cd "$(dirname "$0")"

[ -x node_modules/.bin/protoc-gen-es ] || npm ci --no-audit --no-fund
types_proto=$(cargo metadata --offline --format-version 1 --manifest-path ../../Cargo.toml |
    python3 -c 'import json, os, sys
print(next(os.path.join(os.path.dirname(p["manifest_path"]), "proto")
           for p in json.load(sys.stdin)["packages"] if p["name"] == "tonic-types"))')
rm -rf src/gen
mkdir -p src/gen
protoc -I ../../proto -I "$types_proto" \
    --plugin=protoc-gen-es=node_modules/.bin/protoc-gen-es \
    --es_out=src/gen --es_opt=target=ts,import_extension=js \
    $(cd ../../proto && ls llmregistry/v1/*.proto) error_details.proto
echo "generated $(find src/gen -name '*.ts' | wc -l) files in clients/typescript/src/gen"
