#!/usr/bin/env bash
# Whether act-as refusals tell which users exist by their timing (issue 25): starts the release
# binary on a fresh database and runs examples/act_as_timing.rs against it. Prints one line.
# Needs PostgreSQL on 127.0.0.1:5432 with trust authentication.
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES=${SAMPLES:-2000}
DB=llmr_bench_act_as
PG="psql -h 127.0.0.1 -U postgres -d postgres -Atqc"
WORK=$(mktemp -d)
trap 'kill "${SERVER_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; $PG "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null' EXIT
cargo build --release --locked --bin llm-registry --example act_as_timing 2>&1 | tail -n 1
$PG "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
$PG "CREATE DATABASE $DB"
ADMIN_TOKEN="llmr_bench_$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
LLM_REGISTRY_MODE=production ADMIN_TOKEN="$ADMIN_TOKEN" ENCRYPTION_KEY="$ENCRYPTION_KEY" \
    TLS_TERMINATED_UPSTREAM=true DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" \
    LISTEN_ADDR=127.0.0.1:0 RUST_LOG=warn,llm_registry::server=info \
    target/release/llm-registry > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 1000); do
    ADDR=$(grep -o 'address=[0-9.:]*' "$WORK/server.log" | head -n 1 | cut -d= -f2 || true)
    [ -n "$ADDR" ] && break
    sleep 0.01
done
target/release/examples/act_as_timing --addr "$ADDR" --admin-token "$ADMIN_TOKEN" --samples "$SAMPLES"
