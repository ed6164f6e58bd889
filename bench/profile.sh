#!/usr/bin/env bash
# Where the hot calls spend, per call: bench/profile.sh
#
# For each scenario and concurrency, the database round trips (statements, from
# pg_stat_statements, split into the read cache's probe rounds and the rest), the transactions
# committed, and the CPU time of each process (the registry, PostgreSQL's processes together, the
# load generator, the fake provider), all divided by the calls the scenario completed. PostgreSQL
# is a private cluster started here with pg_stat_statements loaded (the machine's own server is
# left as it is), populated as bench/run.sh populates. PERF=1 also samples the registry with
# `perf record` under each scenario at the highest concurrency and prints its top functions.
#
# Needs PostgreSQL's server programs (Debian's postgresql package); run as root or as a user
# that may run them.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
CONCURRENCIES=${CONCURRENCIES:-"1 32"}
# ALL_STATEMENTS=1 lists the statements per call at every concurrency, not only the last.
SCENARIOS=${SCENARIOS:-"health get-instance project-instance list-first embed embed-project embed-floor"}
PERF=${PERF:-}
# With PERF=1, a directory to keep the perf data in (for `perf report -i` afterwards).
PERF_KEEP=${PERF_KEEP:-}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
WORK=$(mktemp -d /var/tmp/llmr-profile.XXXXXX)
chmod 755 "$WORK"
as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    kill "${SERVER_PID:-}" "${FAKE_PID:-}" "${FLOOR_PID:-}" 2>/dev/null || true
    as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh
build_hop_binaries

echo "== a private PostgreSQL with pg_stat_statements"
PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/pg"
as_postgres "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust >/dev/null
as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/log" -w start -o \
    "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements -c max_connections=200 -c autovacuum=off" >/dev/null
PG="psql -h 127.0.0.1 -p $PG_PORT -U postgres -Atqc"
$PG "CREATE DATABASE llmr_profile"
PGDB="psql -h 127.0.0.1 -p $PG_PORT -U postgres -d llmr_profile -Atqc"
$PGDB "CREATE EXTENSION pg_stat_statements"
POSTMASTER_PID=$(head -n 1 "$WORK/pg/postmaster.pid")

ADMIN_TOKEN="llmr_profile_$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
export LLM_REGISTRY_MODE=production ADMIN_TOKEN ENCRYPTION_KEY TLS_TERMINATED_UPSTREAM=true
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/llmr_profile"
export MAX_CONCURRENT_REQUESTS=64 DB_MAX_CONNECTIONS=16 RUST_LOG=warn,llm_registry::server=info
export PROVIDER_CALLS_PER_CALLER=64

"$FAKE" --ca-out "$WORK/provider-ca.pem" > "$WORK/fake.log" 2>&1 &
FAKE_PID=$!
FAKE_ADDR=$(wait_for_address "$WORK/fake.log")
PROVIDER_KEY="sk-profile-$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
export PROVIDER_EGRESS_ALLOW=loopback PROVIDER_CA_FILE="$WORK/provider-ca.pem"

LISTEN_ADDR=127.0.0.1:0 "$BIN" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
ADDR=$(wait_for_address "$WORK/server.log")
"$LOADGEN" --addr "$ADDR" wait

echo "== populating as bench/run.sh does"
eval "$("$LOADGEN" --addr "$ADDR" populate --admin-token "$ADMIN_TOKEN" --users 1000 --owners 10 --instances-per-owner 1000 --projects 100)"
"$LOADGEN" --addr "$ADDR" create-embed-instance --token "$BENCH_TOKEN" \
    --endpoint "https://localhost:${FAKE_ADDR##*:}/v1/embeddings" --key "$PROVIDER_KEY"
"$LOADGEN" --addr "$ADDR" create-shared-embed-instances --token "$WRITER_TOKEN" \
    --endpoint "https://localhost:${FAKE_ADDR##*:}/v1/embeddings" --key "$PROVIDER_KEY"
$PGDB "VACUUM ANALYZE" >/dev/null
"$FLOOR" --provider-url "https://localhost:${FAKE_ADDR##*:}/v1/embeddings" \
    --provider-ca "$WORK/provider-ca.pem" --provider-key "$PROVIDER_KEY" > "$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
FLOOR_ADDR=$(wait_for_address "$WORK/floor.log")

# CPU time (user + system, in clock ticks) of one process, or of PostgreSQL's processes together.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() {
    local total=0 pid
    for pid in $POSTMASTER_PID $(pgrep -P "$POSTMASTER_PID"); do
        total=$((total + $(ticks "$pid")))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)
per_call_us() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e6 / n; else print "n/a" }'; }

ROWS=()
for scenario in $SCENARIOS; do
    for c in $CONCURRENCIES; do
        target=$ADDR
        label=$scenario
        loadgen_scenario=$scenario
        extra=()
        token=$BENCH_TOKEN
        # The writes, as bench/run.sh runs them, by the instances' owner.
        case $scenario in create-instance | update-instance) token=$OWNER_TOKEN ;; esac
        if [ "$scenario" = embed-floor ]; then
            target=$FLOOR_ADDR
            loadgen_scenario=embed
        elif [ "$scenario" = get-instance-with-writer ]; then
            # GetInstance while one more stream updates another tenant's instance without pause.
            loadgen_scenario=get-instance
            extra=(--writer-token "$WRITER_TOKEN")
        fi
        $PGDB "SELECT pg_stat_statements_reset()" >/dev/null
        commits_before=$($PGDB "SELECT xact_commit FROM pg_stat_database WHERE datname = 'llmr_profile'")
        server_before=$(ticks "$SERVER_PID")
        floor_before=$(ticks "$FLOOR_PID")
        fake_before=$(ticks "$FAKE_PID")
        pg_before=$(pg_ticks)
        if [ -n "$PERF" ] && [ "$c" = "${CONCURRENCIES##* }" ]; then
            perf_pid=$SERVER_PID
            [ "$scenario" = embed-floor ] && perf_pid=$FLOOR_PID
            perf record -q -F 499 --call-graph dwarf,16384 -p "$perf_pid" -o "$WORK/perf-$scenario.data" -- sleep "$SECONDS_PER_RUN" 2>/dev/null &
            PERF_PID=$!
        fi
        line=$( { /usr/bin/time -f "%U %S" -o "$WORK/loadgen-time" "$LOADGEN" --addr "$target" measure \
            --token "$token" --scenario "$loadgen_scenario" --concurrency "$c" --seconds "$SECONDS_PER_RUN" "${extra[@]}" 2> "$WORK/loadgen.err"; } )
        [ -s "$WORK/loadgen.err" ] && sed 's/^ */   /' "$WORK/loadgen.err"
        echo "   loadgen: $line"
        [ -n "${PERF_PID:-}" ] && { wait "$PERF_PID" || true; PERF_PID=""; }
        server_used=$(( $(ticks "$SERVER_PID") - server_before ))
        [ "$scenario" = embed-floor ] && server_used=$(( $(ticks "$FLOOR_PID") - floor_before ))
        fake_used=$(( $(ticks "$FAKE_PID") - fake_before ))
        pg_used=$(( $(pg_ticks) - pg_before ))
        loadgen_used=$(awk -v hz="$HZ" '{printf "%.0f", ($1 + $2) * hz}' "$WORK/loadgen-time")
        rps=$(echo "$line" | awk '{print $3}')
        calls=$(awk -v r="$rps" -v s="$SECONDS_PER_RUN" 'BEGIN { printf "%.0f", r * s }')
        # Statements: the read cache's probe rounds apart from the calls' own.
        read -r rounds others < <($PGDB "SELECT coalesce(sum(calls) FILTER (WHERE query LIKE 'SELECT pg_snapshot_xmin%'), 0), coalesce(sum(calls) FILTER (WHERE query NOT LIKE 'SELECT pg_snapshot_xmin%' AND query NOT LIKE '%pg_stat%'), 0) FROM pg_stat_statements" | tr '|' ' ')
        sleep 1.1 # backends report their commits to the statistics at most once a second
        commits=$(( $($PGDB "SELECT xact_commit FROM pg_stat_database WHERE datname = 'llmr_profile'") - commits_before ))
        per() { awk -v a="$1" -v n="$calls" 'BEGIN { if (n > 0) printf "%.2f", a / n; else print "n/a" }'; }
        row="| $label | $c | $rps | $(per "$rounds") | $(per "$others") | $(per "$commits") | $(per_call_us "$server_used" "$calls") | $(per_call_us "$pg_used" "$calls") | $(per_call_us "$loadgen_used" "$calls") | $(per_call_us "$fake_used" "$calls") |"
        ROWS+=("$row")
        echo "$row"
        if [ -n "${ALL_STATEMENTS:-}" ] || [ "$c" = "${CONCURRENCIES##* }" ]; then
            echo "   statements per call at $c streams (calls/request, mean ms):"
            $PGDB "SELECT round(calls::numeric / greatest($calls, 1), 2), round(mean_exec_time::numeric, 3), left(regexp_replace(query, '\s+', ' ', 'g'), 110) FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat%' ORDER BY calls DESC LIMIT 6" | sed 's/^/     /'
        fi
    done
done

echo
echo "| scenario | streams | req/s | probe rounds/call | other statements/call | commits/call | registry CPU µs/call | PostgreSQL CPU µs/call | load generator CPU µs/call | fake provider CPU µs/call |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"

if [ -n "$PERF" ]; then
    [ -n "$PERF_KEEP" ] && mkdir -p "$PERF_KEEP" && cp "$WORK"/perf-*.data "$PERF_KEEP"/
    for data in "$WORK"/perf-*.data; do
        echo
        echo "== perf: $(basename "$data" .data), top functions (self)"
        perf report -i "$data" --no-children --percent-limit 1.5 --stdio 2>/dev/null \
            | grep -E '^ +[0-9.]+%' | head -n 25 || true
        echo "== perf: $(basename "$data" .data), the registry's own functions (with what they call)"
        perf report -i "$data" --children --percent-limit 2 --stdio -g none 2>/dev/null \
            | grep -E '^ +[0-9.]+%' | grep -E 'llm_registry|sqlx|tonic::|tracing|hyper::|reqwest|rustls|ring::|aes_gcm' | head -n 40 || true
    done
fi
