#!/usr/bin/env bash
# The scale benchmark, in one command: bench/scale.sh
#
# Populates a registry in bulk (examples/populate_bulk.rs: SQL COPY, keys sealed by the vault)
# twice, small and large, with the same shape (the large one by default: 1,000,000 instances,
# 100,000 users, 200,000 shares, 1,000,000 audit events; the small one a hundredth of it), and
# measures on each: start-up to SERVING, GetInstance, the first and the 100th page of
# ListInstances, ListAuditEvents by resource and by caller (32 streams each), `rotate-keys` of
# every stored key while GetInstance runs (keys/s and GetInstance's p99 during it), the database
# size per instance and the server's RSS. Prints one table (also appended to bench/RESULTS.md)
# with the large/small ratios the issue's goals are stated in. Needs PostgreSQL on
# 127.0.0.1:5432 with trust authentication; takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
LARGE_INSTANCES=${LARGE_INSTANCES:-1000000}
PG="psql -h 127.0.0.1 -U postgres -d postgres -Atqc"
WORK=$(mktemp -d)
trap 'kill "${SERVER_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

echo "== building (release)"
cargo build --release --locked --bin llm-registry --example loadgen --example populate_bulk 2>&1 | tail -n 1
BIN=target/release/llm-registry
LOADGEN=target/release/examples/loadgen
POPULATE=target/release/examples/populate_bulk

ADMIN_TOKEN="llmr_bench_$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
NEXT_KEY=$(head -c 32 /dev/urandom | base64)
# The serving replica already knows the key the rotation moves to (as a rollout would have it).
export LLM_REGISTRY_MODE=production ADMIN_TOKEN TLS_TERMINATED_UPSTREAM=true
export MAX_CONCURRENT_REQUESTS=64 DB_MAX_CONNECTIONS=16 RUST_LOG=warn,llm_registry::server=info

start_server() {
    ENCRYPTION_KEY="$ENCRYPTION_KEY" ENCRYPTION_KEYS_PREVIOUS="$NEXT_KEY" LISTEN_ADDR=127.0.0.1:0 \
        "$BIN" > "$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    local started
    started=$(date +%s%N)
    ADDR=""
    for _ in $(seq 1 2000); do
        ADDR=$(grep -o 'address=[0-9.:]*' "$WORK/server.log" | head -n 1 | cut -d= -f2 || true)
        [ -n "$ADDR" ] && break
        sleep 0.005
    done
    "$LOADGEN" --addr "$ADDR" wait
    STARTUP_MS=$(( ($(date +%s%N) - started) / 1000000 ))
}
stop_server() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; }
measure() { "$LOADGEN" --addr "$ADDR" measure --token "$1" --scenario "$2" --concurrency 32 --seconds "$SECONDS_PER_RUN"; }

declare -A R
run_scale() {
    local name=$1 instances=$2
    local users=$(( instances / 10 )) shares=$(( instances / 5 )) events=$instances
    [ "$shares" -lt 12000 ] && shares=12000
    local db="llmr_scale_$name"
    echo "== $name: $instances instances, $users users, $shares shares, $events audit events"
    $PG "DROP DATABASE IF EXISTS $db WITH (FORCE)"
    $PG "CREATE DATABASE $db"
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
    start_server; stop_server   # migrates
    local began
    began=$(date +%s)
    ENCRYPTION_KEY="$ENCRYPTION_KEY" "$POPULATE" --users "$users" --instances "$instances" \
        --shares "$shares" --audit-events "$events" --tokens-out "$WORK/tokens"
    psql -h 127.0.0.1 -U postgres -d "$db" -qc "VACUUM ANALYZE"
    R[$name,populate_s]=$(( $(date +%s) - began ))
    # shellcheck disable=SC1091
    source "$WORK/tokens"
    start_server
    R[$name,startup_ms]=$STARTUP_MS
    for scenario in get-instance list-first list-deep; do
        R[$name,$scenario]=$(measure "$BENCH" "$scenario")
        echo "${R[$name,$scenario]}"
    done
    for scenario in audit-resource audit-caller; do
        R[$name,$scenario]=$(measure "$ADMIN_TOKEN" "$scenario")
        echo "${R[$name,$scenario]}"
    done
    # Rotation of every key to the next primary while GetInstance runs.
    measure "$BENCH" get-instance > "$WORK/during" &
    local reader=$!
    local rotate_began
    rotate_began=$(date +%s%N)
    # (The old key is read before the new one shadows ENCRYPTION_KEY on the command's line.)
    local old_key=$ENCRYPTION_KEY
    ENCRYPTION_KEY="$NEXT_KEY" ENCRYPTION_KEYS_PREVIOUS="$old_key" "$BIN" rotate-keys --batch-size 1000 \
        > "$WORK/rotate.log" 2>&1 || { cat "$WORK/rotate.log" >&2; exit 1; }
    local rotate_ms=$(( ($(date +%s%N) - rotate_began) / 1000000 ))
    wait "$reader"
    R[$name,rotate_keys_per_s]=$(awk -v n="$instances" -v ms="$rotate_ms" 'BEGIN { printf "%.0f", n / (ms / 1000) }')
    R[$name,get-during-rotation]=$(cat "$WORK/during")
    echo "rotate-keys: $instances keys in $rotate_ms ms; GetInstance meanwhile: ${R[$name,get-during-rotation]}"
    R[$name,rss_mib]=$(( $(awk '$1 == "VmRSS:" {print $2}' "/proc/$SERVER_PID/status") / 1024 ))
    R[$name,bytes_per_instance]=$(psql -h 127.0.0.1 -U postgres -d "$db" -Atqc \
        "SELECT pg_database_size(current_database()) / count(*) FROM instances")
    stop_server
    $PG "DROP DATABASE IF EXISTS $db WITH (FORCE)"
}

run_scale small $(( LARGE_INSTANCES / 100 ))
run_scale large "$LARGE_INSTANCES"

field() { echo "${R[$1,$2]}" | awk -v f="$3" '{print $f}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
    echo
    echo "## Scale ($(date -u +%Y-%m-%dT%H:%MZ), bench/scale.sh; 32 streams, ${SECONDS_PER_RUN} s per figure)"
    echo
    echo "| measure | small ($(( LARGE_INSTANCES / 100 )) instances) | large ($LARGE_INSTANCES instances) | large / small |"
    echo "| --- | --- | --- | --- |"
    for scenario in get-instance list-first list-deep audit-resource audit-caller; do
        echo "| $scenario p50 ms (req/s) | $(field small $scenario 4) ($(field small $scenario 3)) | $(field large $scenario 4) ($(field large $scenario 3)) | $(ratio "$(field large $scenario 4)" "$(field small $scenario 4)") |"
    done
    echo "| start-up to SERVING, ms | ${R[small,startup_ms]} | ${R[large,startup_ms]} | |"
    echo "| rotate-keys, keys/s (while GetInstance runs) | ${R[small,rotate_keys_per_s]} | ${R[large,rotate_keys_per_s]} | |"
    echo "| GetInstance p99 ms before / during rotation | $(field small get-instance 5) / $(field small get-during-rotation 5) | $(field large get-instance 5) / $(field large get-during-rotation 5) | |"
    echo "| database bytes per instance | ${R[small,bytes_per_instance]} | ${R[large,bytes_per_instance]} | |"
    echo "| server RSS after the run, MiB | ${R[small,rss_mib]} | ${R[large,rss_mib]} | |"
    echo "| bulk population, s | ${R[small,populate_s]} | ${R[large,populate_s]} | |"
} | tee -a bench/RESULTS.md
