#!/usr/bin/env bash
# The dhamps-vdb import benchmark, in one command: bench/import_dhamps.sh
#
# Builds dhamps-vdb databases (schema 4) of two sizes with examples/dhamps_source.rs (by default
# 10,000 and 100,000 instances with sealed keys, a user per ten instances, a share and a project
# per two instances), imports each into a fresh registry with the release binary, and prints per
# size: the import's wall time, its peak RSS (from /usr/bin/time), the objects written, and the
# time of a second run (which finds everything unchanged). The goal (issue 27): 100,000 instances
# in under 60 s, and memory that does not grow with the source (peak RSS of the large run close
# to the small one's). Needs PostgreSQL on 127.0.0.1:5432 with trust authentication.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"10000 100000"}
export PGOPTIONS="-c client_min_messages=warning"
PG="psql -h 127.0.0.1 -U postgres -d postgres -Atqc"
WORK=$(mktemp -d)
DATABASES=()
cleanup() {
    for db in "${DATABASES[@]}"; do $PG "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== building (release)"
cargo build --release --locked --bin llm-registry --example dhamps_source 2>&1 | tail -n 1
BIN=target/release/llm-registry
SOURCE=target/release/examples/dhamps_source

export DHAMPS_ENCRYPTION_KEY="dhamps bench key $(head -c 24 /dev/urandom | base64)"
export LLM_REGISTRY_MODE=production ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
export RUST_LOG=warn

run_import() { # database source-url label
    /usr/bin/time -f "%e %M" -o "$WORK/time" \
        env DATABASE_URL="postgres://postgres@127.0.0.1:5432/$1" \
        "$BIN" import-dhamps-vdb --source-url "$2" --report "$WORK/report.json" > "$WORK/$3.out"
    read -r SECONDS_TAKEN PEAK_KB < "$WORK/time"
}

printf '\n%-10s %10s %10s %12s %10s %12s\n' instances "import s" "peak MiB" "objects" "rerun s" "rerun MiB"
for size in $SIZES; do
    src="llmr_bench_dhamps_src_$size"
    dst="llmr_bench_dhamps_dst_$size"
    DATABASES+=("$src" "$dst")
    $PG "DROP DATABASE IF EXISTS \"$src\" WITH (FORCE)" >/dev/null
    $PG "DROP DATABASE IF EXISTS \"$dst\" WITH (FORCE)" >/dev/null
    $PG "CREATE DATABASE \"$src\"" >/dev/null
    $PG "CREATE DATABASE \"$dst\"" >/dev/null
    "$SOURCE" --database-url "postgres://postgres@127.0.0.1:5432/$src" --instances "$size" >&2
    url="postgres://postgres@127.0.0.1:5432/$src"
    run_import "$dst" "$url" first
    first_s=$SECONDS_TAKEN first_kb=$PEAK_KB
    objects=$(jq '[.counts[] | .imported] | add' "$WORK/report.json")
    run_import "$dst" "$url" second
    unchanged=$(jq '[.counts[] | .imported + .updated] | add' "$WORK/report.json")
    if [ "$unchanged" != 0 ]; then
        echo "the second run wrote $unchanged objects; it should write none" >&2
        exit 1
    fi
    printf '%-10s %10s %10d %12s %10s %12d\n' "$size" "$first_s" $((first_kb / 1024)) "$objects" \
        "$SECONDS_TAKEN" $((PEAK_KB / 1024))
done
