#!/usr/bin/env bash
# The metrics, checked by a real Prometheus (Debian's `prometheus` package), run by .ci/run;
# usable by hand:
#
#   clients/prometheus/check.sh [path/to/llm-registry]
#
# Starts the server in production mode with METRICS_ADDR on a fresh database, starts Prometheus
# scraping it every second, drives traffic through buf curl (health checks, user reads, a
# refused call), then asks Prometheus's HTTP API for: the target `up`, the rate of a method's
# requests, a latency quantile from the histogram, the database gauge, and a code label.
# Needs prometheus, buf, jq, curl, psql and PostgreSQL on 127.0.0.1:5432 with trust auth.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${1:-target/debug/llm-registry}
WORK=$(mktemp -d)
DB="llmr_test_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PG="psql -h 127.0.0.1 -U postgres -d postgres -Atqc"
cleanup() {
    kill "${SERVER_PID:-}" "${PROM_PID:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    $PG "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
    echo "prometheus check FAILED: $*" >&2
    tail -n 20 "$WORK/prometheus.log" >&2 2>/dev/null || true
    exit 1
}
step() { echo "-- $*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

ADMIN_TOKEN="llmr_admin_$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
METRICS_PORT=$(free_port)
PROM_PORT=$(free_port)
$PG "CREATE DATABASE $DB"
LLM_REGISTRY_MODE=production TLS_TERMINATED_UPSTREAM=true ADMIN_TOKEN="$ADMIN_TOKEN" \
    ENCRYPTION_KEY="$(head -c 32 /dev/urandom | base64)" \
    DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" LISTEN_ADDR=127.0.0.1:0 \
    METRICS_ADDR="127.0.0.1:$METRICS_PORT" RUST_LOG=warn,llm_registry::server=info \
    "$BIN" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 600); do
    ADDR=$(grep -so ' address=[0-9.:]*' "$WORK/server.log" | head -n 1 | cut -d= -f2 || true)
    [ -n "$ADDR" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; fail "the server exited"; }
    sleep 0.05
done
[ -n "$ADDR" ] || fail "the server did not report its address"

cat > "$WORK/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: llm-registry
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
YAML
step "starting Prometheus $(prometheus --version 2>&1 | head -n 1 | awk '{print $3}') on 127.0.0.1:$PROM_PORT"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" > "$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
API="http://127.0.0.1:$PROM_PORT/api/v1"
# query PROMQL: prints the first result's value, or nothing.
query() {
    curl -fsS --get "$API/query" --data-urlencode "query=$1" 2>/dev/null |
        jq -r '.data.result[0].value[1] // empty' 2>/dev/null || true
}

step "driving traffic for about 8 seconds"
CURL=(buf curl --protocol grpc --http2-prior-knowledge)
"${CURL[@]}" -H "authorization: Bearer $ADMIN_TOKEN" -d '{"user_id":"alice","user":{}}' \
    "http://$ADDR/llmregistry.v1.UserService/CreateUser" > /dev/null
end=$((SECONDS + 8))
while [ "$SECONDS" -lt "$end" ]; do
    "${CURL[@]}" "http://$ADDR/grpc.health.v1.Health/Check" > /dev/null
    "${CURL[@]}" -H "authorization: Bearer $ADMIN_TOKEN" -d '{"name":"users/alice"}' \
        "http://$ADDR/llmregistry.v1.UserService/GetUser" > /dev/null
    "${CURL[@]}" -H "authorization: Bearer $ADMIN_TOKEN" -d '{"name":"users/nobody"}' \
        "http://$ADDR/llmregistry.v1.UserService/GetUser" > /dev/null 2>&1 || true
done

step "Prometheus reports the target up"
up=""
for _ in $(seq 1 30); do
    up=$(query 'up{job="llm-registry"}')
    [ "$up" = 1 ] && break
    sleep 1
done
[ "$up" = 1 ] || fail "target not up: '$up'"

check() {
    local what=$1 promql=$2 value=""
    for _ in $(seq 1 20); do
        value=$(query "$promql")
        [ -n "$value" ] && [ "$value" != NaN ] && [ "$value" != 0 ] && break
        sleep 1
    done
    [ -n "$value" ] && [ "$value" != NaN ] && [ "$value" != 0 ] || fail "$what: no value for $promql"
    echo "   $what = $value"
}
check "Health.Check requests per second" \
    'sum(rate(llmr_rpc_requests_total{method="/grpc.health.v1.Health/Check"}[10s]))'
check "GetUser p50 latency (s)" \
    'histogram_quantile(0.5, sum by (le) (rate(llmr_rpc_duration_seconds_bucket{method="/llmregistry.v1.UserService/GetUser"}[10s])))'
check "GetUser NOT_FOUND answers" \
    'sum(llmr_rpc_requests_total{method="/llmregistry.v1.UserService/GetUser",code="NOT_FOUND"})'
check "pool acquisitions per second" 'sum(rate(llmr_db_pool_acquire_seconds_count[10s]))'
check "database up" 'llmr_database_up'
check "pool size limit" 'llmr_db_pool_max_connections'
echo "prometheus check OK"
