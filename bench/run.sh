#!/usr/bin/env bash
# The benchmark, in one command: bench/run.sh
#
# Builds the release binary and the load generator (examples/loadgen.rs), prepares a registry
# with a realistic population through its own API, measures each scenario at 1, 8 and 32
# concurrent streams (on one HTTP/2 connection, as one gRPC channel sends them; each call a bare
# HTTP/2 POST, as h2load sends them), measures PostgreSQL's own limits with pgbench on the same machine, the
# server's RSS and start-up time, runs the vault micro-benchmark, and prints one table with the
# hot path's goals as ratios within the run (also written to bench/RESULTS.md, where it replaces
# the previous run's section and leaves the rest). Needs PostgreSQL on 127.0.0.1:5432 with trust
# authentication.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
CONCURRENCIES=${CONCURRENCIES:-"1 8 32"}
PG="psql -h 127.0.0.1 -U postgres -d postgres -Atqc"
DB=llmr_bench
PGB_DB=llmr_pgbench
WORK=$(mktemp -d)
trap 'kill "${SERVER_PID:-}" "${FAKE_PID:-}" "${FLOOR_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh
build_hop_binaries

ADMIN_TOKEN="llmr_bench_$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
# Plaintext, as behind a mesh sidecar that ends TLS: the figures are the service's own.
export LLM_REGISTRY_MODE=production ADMIN_TOKEN ENCRYPTION_KEY TLS_TERMINATED_UPSTREAM=true
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
export MAX_CONCURRENT_REQUESTS=64 DB_MAX_CONNECTIONS=16 RUST_LOG=warn,llm_registry::server=info
# One benchmark user drives every stream of the Embed scenario: its share of the provider call
# pool (PROVIDER_CALLS_PER_CALLER, 16 by default) is raised to the pool, so that the figures are
# the pool's, not the fairness cap's.
export PROVIDER_CALLS_PER_CALLER=64
# The read cache's hit ratio in the mixed load is read from the server's own metrics.
export METRICS_ADDR=127.0.0.1:0

# The fake provider Embed calls (OpenAI format, 1536 dimensions, answering at once over HTTPS
# with a CA made at run time), and the registry's permission to reach it on loopback.
"$FAKE" --ca-out "$WORK/provider-ca.pem" > "$WORK/fake.log" 2>&1 &
FAKE_PID=$!
FAKE_ADDR=$(wait_for_address "$WORK/fake.log")
PROVIDER_KEY="sk-bench-$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
export PROVIDER_EGRESS_ALLOW=loopback PROVIDER_CA_FILE="$WORK/provider-ca.pem"

$PG "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
$PG "CREATE DATABASE $DB"

start_server() {
    LISTEN_ADDR=127.0.0.1:0 "$BIN" > "$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    local started
    started=$(date +%s%N)
    ADDR=$(wait_for_address "$WORK/server.log")
    "$LOADGEN" --addr "$ADDR" wait
    STARTUP_MS=$(( ($(date +%s%N) - started) / 1000000 ))
}
rss_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

echo "== migrating, then timing a start on the migrated database"
start_server; kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
start_server
echo "start-up to SERVING: ${STARTUP_MS} ms"

echo "== populating: 1000 users, 10,000 instances with keys shared with one user, 100 projects"
POP_START=$(date +%s)
eval "$("$LOADGEN" --addr "$ADDR" populate --admin-token "$ADMIN_TOKEN" --users 1000 --owners 10 --instances-per-owner 1000 --projects 100)"
echo "populated in $(( $(date +%s) - POP_START )) s"
# Planner statistics for the new rows, as autovacuum would gather them after such a load (and as
# pgbench -i does for its own tables). PostgreSQL on the benchmark machines runs with autovacuum
# off; without this the planner believes the bench user has a handful of shares and pages them
# with a bitmap scan and a sort of all 10,000 instead of an index range of 51.
psql -h 127.0.0.1 -U postgres -d "$DB" -qc "VACUUM ANALYZE"
IDLE_RSS=$(rss_kib "$SERVER_PID" VmRSS)
"$LOADGEN" --addr "$ADDR" create-embed-instance --token "$BENCH_TOKEN" \
    --endpoint "https://localhost:${FAKE_ADDR##*:}/v1/embeddings" --key "$PROVIDER_KEY"
# Two of owner-1's instances shared with bench: one plain, one with a budget and a quota on
# bench's share (issue 30: what quotas cost a grantee's Embed).
"$LOADGEN" --addr "$ADDR" create-shared-embed-instances --token "$WRITER_TOKEN" \
    --endpoint "https://localhost:${FAKE_ADDR##*:}/v1/embeddings" --key "$PROVIDER_KEY"

# The floor under Embed (examples/embed_floor.rs): the same hop on the registry's stack (tonic
# in, reqwest out, JSON read, protobuf answered) with none of the registry's own work.
"$FLOOR" --provider-url "https://localhost:${FAKE_ADDR##*:}/v1/embeddings" \
    --provider-ca "$WORK/provider-ca.pem" --provider-key "$PROVIDER_KEY" > "$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
FLOOR_ADDR=$(wait_for_address "$WORK/floor.log")

declare -A RESULT
for scenario in health get-instance list-first list-deep project-instance create-instance update-instance; do
    token=$BENCH_TOKEN
    [ "$scenario" = create-instance ] || [ "$scenario" = update-instance ] && token=$OWNER_TOKEN
    for c in $CONCURRENCIES; do
        line=$("$LOADGEN" --addr "$ADDR" measure --token "$token" --scenario "$scenario" --concurrency "$c" --seconds "$SECONDS_PER_RUN")
        RESULT["$scenario,$c"]=$line
        echo "$line"
    done
done
echo "== GetInstance at 32 streams while one more stream updates another tenant's instance"
line=$("$LOADGEN" --addr "$ADDR" measure --token "$BENCH_TOKEN" --scenario get-instance --concurrency 32 \
    --seconds "$SECONDS_PER_RUN" --writer-token "$WRITER_TOKEN" 2> "$WORK/writer.log" | sed 's/^get-instance /get-instance-with-writer /')
RESULT["get-instance-with-writer,32"]=$line
WRITER_RATE=$(awk '/writer:/ {print $2}' "$WORK/writer.log")
echo "$line (writer: $WRITER_RATE UpdateInstance/s)"
for scenario in embed embed-project embed-shared embed-quota embed-floor provider-direct; do
    for c in $CONCURRENCIES; do
        if [ "$scenario" = embed-floor ]; then
            line=$("$LOADGEN" --addr "$FLOOR_ADDR" measure --token unused --scenario embed --concurrency "$c" --seconds "$SECONDS_PER_RUN" | sed 's/^embed /embed-floor /')
        elif [ "$scenario" = provider-direct ]; then
            line=$("$LOADGEN" --addr "$FAKE_ADDR" measure --token unused --scenario provider-direct \
                --provider-ca "$WORK/provider-ca.pem" --provider-key "$PROVIDER_KEY" --concurrency "$c" --seconds "$SECONDS_PER_RUN")
        else
            line=$("$LOADGEN" --addr "$ADDR" measure --token "$BENCH_TOKEN" --scenario "$scenario" --concurrency "$c" --seconds "$SECONDS_PER_RUN")
        fi
        RESULT["$scenario,$c"]=$line
        echo "$line"
    done
done

echo "== mixed load: 10,000 users with 10 instances each (100,000); 90% GetInstance over a Zipf"
echo "   choice of instance, 5% ListInstances, 5% UpdateInstance, each by the instance's owner"
MIX_START=$(date +%s)
"$LOADGEN" --addr "$ADDR" populate-mixed --admin-token "$ADMIN_TOKEN" --users 10000 \
    --instances-per-user 10 --tokens-out "$WORK/mixed-tokens"
echo "populated in $(( $(date +%s) - MIX_START )) s"
psql -h 127.0.0.1 -U postgres -d "$DB" -qc "VACUUM ANALYZE"
# The population above writes about half a GiB of WAL: without a checkpoint here, PostgreSQL
# starts one for it (checkpoint_timeout/max_wal_size) while the mixed load is measured, and
# its writes land on the figures (seen: the mix's p99 20.0 ms during it, 12-16 ms in the runs
# around it). The population's cost is not the service's.
psql -h 127.0.0.1 -U postgres -d "$DB" -qc "CHECKPOINT"
METRICS=$(grep -o 'metrics_listener=[0-9.:]*' "$WORK/server.log" | head -n 1 | cut -d= -f2)
# Hits and misses of the GetInstance answers in the read cache, so far.
cache_counts() {
    curl -s "http://$METRICS/metrics" | awk '
        /^llmr_read_cache_hits_total\{kind="instance"\}/ {h = $2}
        /^llmr_read_cache_misses_total\{kind="instance"\}/ {m = $2}
        END {print h + 0, m + 0}'
}
declare -A HITS
for scenario in mixed-reads mixed; do
    read -r hits_before misses_before < <(cache_counts)
    line=$("$LOADGEN" --addr "$ADDR" measure --token unused --scenario "$scenario" --concurrency 32 \
        --seconds "$SECONDS_PER_RUN" --tokens-file "$WORK/mixed-tokens" --instances-per-user 10 \
        2> "$WORK/$scenario-methods")
    read -r hits_after misses_after < <(cache_counts)
    HITS[$scenario]=$(awk -v h=$((hits_after - hits_before)) -v m=$((misses_after - misses_before)) \
        'BEGIN { if (h + m > 0) printf "%.2f", h / (h + m); else print "n/a" }')
    RESULT["$scenario,32"]=$line
    echo "$line (GetInstance cache hit ratio ${HITS[$scenario]})"
    cat "$WORK/$scenario-methods"
done
PEAK_RSS=$(rss_kib "$SERVER_PID" VmHWM)

echo "== pgbench on the same machine"
$PG "DROP DATABASE IF EXISTS $PGB_DB WITH (FORCE)"
$PG "CREATE DATABASE $PGB_DB"
pgbench -h 127.0.0.1 -U postgres -i -s 10 -q "$PGB_DB" >/dev/null 2>&1
cat > "$WORK/insert.sql" <<'SQL'
\set n random(1, 9000000000000000000)
INSERT INTO bench_instances (owner_id, handle, endpoint, model, dimensions, api_key_ciphertext, api_key_key_id)
VALUES (1, 'i' || :n || '-' || :client_id, 'https://api.openai.com/v1/embeddings', 'text-embedding-3-small', 1536,
        decode('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff0011223344556677', 'hex'), 'abcdef0123456789');
SQL
psql -h 127.0.0.1 -U postgres -d "$PGB_DB" -qc "CREATE TABLE bench_instances (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, uid uuid NOT NULL DEFAULT gen_random_uuid(), owner_id bigint NOT NULL, handle text NOT NULL, endpoint text NOT NULL, model text NOT NULL, dimensions int, api_key_ciphertext bytea, api_key_key_id text, revision bigint NOT NULL DEFAULT 1, create_time timestamptz NOT NULL DEFAULT now(), update_time timestamptz NOT NULL DEFAULT now(), UNIQUE (owner_id, handle))"
# The rows CreateInstance writes (the instance and its audit event, in one statement), written
# by pgbench into the registry's own schema: the database's ceiling for CreateInstance, with
# its indexes, foreign keys and audit row, next to the one-row INSERT the goal compares with.
OWNER_ID=$(psql -h 127.0.0.1 -U postgres -d "$DB" -Atqc "SELECT id FROM users WHERE handle = 'owner-0'")
STANDARD_ID=$(psql -h 127.0.0.1 -U postgres -d "$DB" -Atqc "SELECT id FROM api_standards WHERE handle = 'openai'")
cat > "$WORK/registry_create.sql" <<SQL
\\set n random(1, 9000000000000000000)
WITH inserted AS (
    INSERT INTO instances (uid, owner_id, handle, endpoint, api_standard_id, model, dimensions, api_key_ciphertext, api_key_key_id)
    VALUES (gen_random_uuid(), $OWNER_ID, 'pgb' || :n || '-' || :client_id, 'https://api.openai.com/v1/embeddings', $STANDARD_ID,
            'text-embedding-3-small', 1536, decode('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff0011223344556677', 'hex'), 'abcdef0123456789')
    RETURNING handle)
INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail)
SELECT 'owner-0', '/llmregistry.v1.LlmInstanceService/CreateInstance', 'users/owner-0/instances/' || handle, 'users/owner-0', 'OK', 'created; api_key set' FROM inserted;
SQL
BENCH_ID=$(psql -h 127.0.0.1 -U postgres -d "$DB" -Atqc "SELECT id FROM users WHERE handle = 'bench'")
declare -A PGB
for c in $CONCURRENCIES; do
    threads=$(( c < 2 ? c : 2 ))
    PGB["select,$c"]=$( (pgbench -h 127.0.0.1 -U postgres -S -M prepared -c "$c" -j "$threads" -T "$SECONDS_PER_RUN" "$PGB_DB" 2>/dev/null || true) | awk '/^tps/ {print int($3)}')
    PGB["insert,$c"]=$( (pgbench -h 127.0.0.1 -U postgres -n -f "$WORK/insert.sql" -M prepared -c "$c" -j "$threads" -T "$SECONDS_PER_RUN" "$PGB_DB" 2>/dev/null || true) | awk '/^tps/ {print int($3)}')
    PGB["registry,$c"]=$( (pgbench -h 127.0.0.1 -U postgres -n -f "$WORK/registry_create.sql" -M prepared -c "$c" -j "$threads" -T "$SECONDS_PER_RUN" "$DB" 2>/dev/null || true) | awk '/^tps/ {print int($3)}')
    PGB["update,$c"]=$( (pgbench -h 127.0.0.1 -U postgres -n -f bench/plain_update.sql -M prepared -c "$c" -j "$threads" -T "$SECONDS_PER_RUN" "$PGB_DB" 2>/dev/null || true) | awk '/^tps/ {print int($3)}')
    PGB["registry-update,$c"]=$( (pgbench -h 127.0.0.1 -U postgres -n -f bench/update_instance.sql -D owner="$OWNER_ID" -D hint_iid=0 -M prepared -c "$c" -j "$threads" -T "$SECONDS_PER_RUN" "$DB" 2>/dev/null || true) | awk '/^tps/ {print int($3)}')
    PGB["list,$c"]=$( (pgbench -h 127.0.0.1 -U postgres -n -f bench/list_instances.sql -D user="$BENCH_ID" -M prepared -c "$c" -j "$threads" -T "$SECONDS_PER_RUN" "$DB" 2>/dev/null || true) | awk '/^tps/ {print int($3)}')
    echo "pgbench $c clients: ListInstances' statement ${PGB["list,$c"]} tps"
    echo "pgbench $c clients: -S ${PGB["select,$c"]} tps, insert ${PGB["insert,$c"]} tps, CreateInstance's rows ${PGB["registry,$c"]} tps, one-row UPDATE ${PGB["update,$c"]} tps, UpdateInstance's statements ${PGB["registry-update,$c"]} tps"
done

echo "== vault micro-benchmark (criterion)"
VAULT=$(cargo bench --locked --bench vault -- --warm-up-time 1 --measurement-time 3 2>/dev/null | awk '/seal\+open/ {getline; print $4, $5}')

field() { echo "${RESULT[$1,$2]}" | awk -v f="$3" '{print $f}'; }
# One row of the goals table: the value and whether it meets the bound (ge, le or lt).
goal() {
    local met
    met=$(awk -v v="$2" -v op="$3" -v b="$4" 'BEGIN {
        if (v == "" || v == "n/a") { print "n/a"; exit }
        ok = (op == "ge" && v + 0 >= b) || (op == "le" && v + 0 <= b) || (op == "lt" && v + 0 < b)
        print (ok ? "yes" : "no") }')
    echo "| $1 | $2 | $met |"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
    echo "<!-- bench/run.sh: begin (this section is rewritten by each run; the rest is kept) -->"
    echo "## The latest bench/run.sh"
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); PostgreSQL $(psql -V | awk '{print $3}'); run $(date -u +%Y-%m-%dT%H:%MZ); ${SECONDS_PER_RUN} s per figure; client and server on the same machine; the streams of a run share one HTTP/2 connection, each call a bare HTTP/2 POST; pgbench uses one connection per client."
    echo
    echo "| scenario | streams | req/s | p50 ms | p99 ms | errors |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for scenario in health get-instance list-first list-deep project-instance create-instance update-instance embed embed-project embed-shared embed-quota embed-floor provider-direct; do
        for c in $CONCURRENCIES; do
            echo "| $scenario | $c | $(field "$scenario" "$c" 3) | $(field "$scenario" "$c" 4) | $(field "$scenario" "$c" 5) | $(field "$scenario" "$c" 6) |"
        done
    done
    echo "| get-instance-with-writer (one more stream updating another tenant's instance: $WRITER_RATE/s) | 32 | $(field get-instance-with-writer 32 3) | $(field get-instance-with-writer 32 4) | $(field get-instance-with-writer 32 5) | $(field get-instance-with-writer 32 6) |"
    for scenario in mixed-reads mixed; do
        echo "| $scenario (100,000 instances, Zipf; cache hit ratio ${HITS[$scenario]}) | 32 | $(field "$scenario" 32 3) | $(field "$scenario" 32 4) | $(field "$scenario" 32 5) | $(field "$scenario" 32 6) |"
    done
    for c in $CONCURRENCIES; do
        echo "| pgbench -S (point read) | $c | ${PGB["select,$c"]} | | | |"
        echo "| pgbench: ListInstances' statement, first page of 50 (bench/list_instances.sql) | $c | ${PGB["list,$c"]} | | | |"
        echo "| pgbench one-row INSERT | $c | ${PGB["insert,$c"]} | | | |"
        echo "| pgbench: CreateInstance's rows (instance + audit event) in the registry schema | $c | ${PGB["registry,$c"]} | | | |"
        echo "| pgbench one-row UPDATE (bench/plain_update.sql) | $c | ${PGB["update,$c"]} | | | |"
        echo "| pgbench: UpdateInstance's statements in the registry schema (bench/update_instance.sql) | $c | ${PGB["registry-update,$c"]} | | | |"
    done
    echo
    echo "| ratio | streams | value |"
    echo "| --- | --- | --- |"
    for c in $CONCURRENCIES; do
        echo "| GetInstance / pgbench -S | $c | $(ratio "$(field get-instance "$c" 3)" "${PGB["select,$c"]}") |"
        echo "| CreateInstance / pgbench INSERT | $c | $(ratio "$(field create-instance "$c" 3)" "${PGB["insert,$c"]}") |"
        echo "| pgbench CreateInstance's rows / pgbench INSERT (the database's own ceiling for the ratio above) | $c | $(ratio "${PGB["registry,$c"]}" "${PGB["insert,$c"]}") |"
        echo "| GetInstance / Health.Check | $c | $(ratio "$(field get-instance "$c" 3)" "$(field health "$c" 3)") |"
        echo "| UpdateInstance (distinct instances) / pgbench of its statements (goal ≥ 0.4 at 32) | $c | $(ratio "$(field update-instance "$c" 3)" "${PGB["registry-update,$c"]}") |"
        echo "| UpdateInstance (distinct instances) / pgbench one-row UPDATE (goal ≥ 0.25 at 32) | $c | $(ratio "$(field update-instance "$c" 3)" "${PGB["update,$c"]}") |"
        echo "| ListInstances page 100 p50 / first page p50 | $c | $(ratio "$(field list-deep "$c" 4)" "$(field list-first "$c" 4)") |"
        echo "| Embed / the same request straight to the provider (throughput; goal ≥ 0.5 at 32) | $c | $(ratio "$(field embed "$c" 3)" "$(field provider-direct "$c" 3)") |"
        echo "| Embed floor (the hop alone, examples/embed_floor.rs) / straight to the provider (the ceiling of the ratio above) | $c | $(ratio "$(field embed-floor "$c" 3)" "$(field provider-direct "$c" 3)") |"
        echo "| Embed / Embed floor (what the registry's own work leaves of the hop's rate) | $c | $(ratio "$(field embed "$c" 3)" "$(field embed-floor "$c" 3)") |"
        echo "| Embed p50 − direct p50, ms (latency the registry adds; goal < 1 at 1) | $c | $(awk -v a="$(field embed "$c" 4)" -v b="$(field provider-direct "$c" 4)" 'BEGIN { printf "%.3f", a - b }') |"
    done
    echo
    echo "| mixed (90% Get, 5% List, 5% Update) / mixed-reads (the same reads alone) (goal ≥ 0.5; p99 < 20 ms) | 32 | $(ratio "$(field mixed 32 3)" "$(field mixed-reads 32 3)") |"
    echo
    echo "The hot path's goals (issue 29), each a ratio within this run:"
    echo
    echo "| goal | value | met |"
    echo "| --- | --- | --- |"
    goal "GetProjectInstance / GetInstance, 1 stream (≥ 0.9)" "$(ratio "$(field project-instance 1 3)" "$(field get-instance 1 3)")" ge 0.9
    goal "GetProjectInstance / GetInstance, 32 streams (≥ 0.9)" "$(ratio "$(field project-instance 32 3)" "$(field get-instance 32 3)")" ge 0.9
    goal "Embed of a project / Embed of an instance, 1 stream (≥ 0.9)" "$(ratio "$(field embed-project 1 3)" "$(field embed 1 3)")" ge 0.9
    goal "Embed of a project / Embed of an instance, 32 streams (≥ 0.9)" "$(ratio "$(field embed-project 32 3)" "$(field embed 32 3)")" ge 0.9
    goal "Embed / embed_floor, 32 streams (≥ 0.75)" "$(ratio "$(field embed 32 3)" "$(field embed-floor 32 3)")" ge 0.75
    goal "Embed p50 − embed_floor p50 at 1 stream, ms (≤ 0.3)" "$(awk -v a="$(field embed 1 4)" -v b="$(field embed-floor 1 4)" 'BEGIN { printf "%.3f", a - b }')" le 0.3
    goal "GetInstance p50 − (Health p50 + 1.25 × pgbench -S mean latency), 1 stream, ms (≤ 0)" "$(awk -v g="$(field get-instance 1 4)" -v h="$(field health 1 4)" -v t="${PGB["select,1"]}" 'BEGIN { printf "%.3f", g - (h + 1.25 * 1000 / t) }')" le 0
    goal "GetInstance with a writer to another tenant / GetInstance alone, 32 streams (≥ 0.85)" "$(ratio "$(field get-instance-with-writer 32 3)" "$(field get-instance 32 3)")" ge 0.85
    goal "ListInstances first page / pgbench of its statement, 32 (≥ 0.5)" "$(ratio "$(field list-first 32 3)" "${PGB["list,32"]}")" ge 0.5
    goal "mixed / mixed-reads (≥ 0.5)" "$(ratio "$(field mixed 32 3)" "$(field mixed-reads 32 3)")" ge 0.5
    goal "mixed p99, ms (< 20)" "$(field mixed 32 5)" lt 20
    echo
    echo "Quotas (issue 30): a grantee's Embed with a budget on the instance and a quota on the share (two limits each, never reached) against the same Embed without either:"
    echo
    echo "| goal | value | met |"
    echo "| --- | --- | --- |"
    goal "Embed with quota and budget / without, 32 streams (≥ 0.9)" "$(ratio "$(field embed-quota 32 3)" "$(field embed-shared 32 3)")" ge 0.9
    goal "Embed with quota and budget p50 − without p50, 1 stream, ms (≤ 0.2)" "$(awk -v a="$(field embed-quota 1 4)" -v b="$(field embed-shared 1 4)" 'BEGIN { printf "%.3f", a - b }')" le 0.2
    echo
    echo "Each method of the mixed scenarios alone (loadgen, the same runs):"
    echo
    for scenario in mixed-reads mixed; do
        sed "s/^  /- $scenario, /" "$WORK/$scenario-methods"
    done
    echo
    echo "| other | value |"
    echo "| --- | --- |"
    echo "| server RSS idle (after population) | $(( IDLE_RSS / 1024 )) MiB |"
    echo "| server peak RSS (VmHWM, through the 32-stream runs) | $(( PEAK_RSS / 1024 )) MiB |"
    echo "| start-up to SERVING on a migrated database | ${STARTUP_MS} ms |"
    echo "| vault seal + open of a 64-byte key (criterion) | ${VAULT} |"
    echo "<!-- bench/run.sh: end -->"
} > "$WORK/RESULTS.md"
# The run's section replaces the previous run's in bench/RESULTS.md (or goes first, after the
# title); whatever else the file holds (history, other scripts' sections) stays.
python3 - "$WORK/RESULTS.md" bench/RESULTS.md <<'PY'
import re, sys
run = open(sys.argv[1]).read()
try:
    kept = open(sys.argv[2]).read()
except FileNotFoundError:
    kept = "# Benchmark results\n"
pattern = re.compile(r"<!-- bench/run.sh: begin.*?<!-- bench/run.sh: end -->\n", re.S)
if pattern.search(kept):
    kept = pattern.sub(lambda _: run, kept, count=1)
else:
    title, _, rest = kept.partition("\n")
    kept = title + "\n\n" + run + "\n" + rest.lstrip("\n")
open(sys.argv[2], "w").write(kept)
PY
echo
cat "$WORK/RESULTS.md"
$PG "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
$PG "DROP DATABASE IF EXISTS $PGB_DB WITH (FORCE)"
