#!/usr/bin/env bash
# The Go client's journey against the real binary: generates the client (clients/go/generate.sh),
# builds clients/go/journey with Debian's Go toolchain in GOPATH mode against Debian's gRPC and
# protobuf packages (/usr/share/gocode; no Go module proxy needed), starts a server and a fake
# provider (clients/stack.sh) and runs the journey. Run by .ci/run; usable by hand:
#
#   clients/go/journey.sh [path/to/llm-registry]
#
# Needs golang-go, protobuf-compiler, protoc-gen-go, protoc-gen-go-grpc, golang-google-grpc-dev,
# golang-google-protobuf-dev and golang-github-golang-protobuf-1-5-dev (without the last, gRPC's
# codec panics on the generated messages), python3, psql and PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/../.."
source clients/stack.sh

clients/go/generate.sh
rm -rf target/go/src/journey
mkdir -p target/go/src/journey target/go/bin
cp clients/go/journey/main.go target/go/src/journey/
(cd target/go/src/journey &&
    GOPATH="$PWD/../..:/usr/share/gocode" GO111MODULE=off GOFLAGS= GOCACHE="$PWD/../../cache" \
        go build -o ../../bin/journey .)
echo "built target/go/bin/journey"

start_stack "${1:-target/debug/llm-registry}"
target/go/bin/journey || { tail -n 30 "$STACK_WORK/server.log" >&2; stack_fail "the Go journey failed"; }
stack_checks
