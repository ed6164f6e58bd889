#!/usr/bin/env bash
# Generates the Go client of llm-registry from proto/ into target/go/src/llmregistry/v1 (a GOPATH
# tree; generated code is not committed): protoc with protoc-gen-go and protoc-gen-go-grpc, all
# from Debian (protobuf-compiler, protoc-gen-go, protoc-gen-go-grpc). The protos carry no
# go_package option (the contract stays language-neutral); the import path is given here with
# M options instead: `llmregistry/v1`, package `llmregistryv1`. A Go module that vendors the
# client would pass its own path the same way.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=target/go/src/llmregistry/v1
rm -rf "$OUT"
mkdir -p "$OUT"
protos=(proto/llmregistry/v1/*.proto)
mappings=()
for proto in "${protos[@]}"; do
    mappings+=("M${proto#proto/}=llmregistry/v1;llmregistryv1")
done
join() { local IFS=,; echo "$*"; }
protoc -I proto \
    --go_out=target/go/src --go_opt="paths=import,$(join "${mappings[@]}")" \
    --go-grpc_out=target/go/src --go-grpc_opt="paths=import,$(join "${mappings[@]}")" \
    "${protos[@]#proto/}"
echo "generated $(ls "$OUT" | wc -l) files in $OUT"
