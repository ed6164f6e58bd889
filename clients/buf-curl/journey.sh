#!/usr/bin/env bash
# A whole user journey through a third-party terminal client: `buf curl` over server reflection
# only (no .proto file is given to it). Run by .ci/run; usable by hand:
#
#   clients/buf-curl/journey.sh [path/to/llm-registry]
#
# Starts the server in production mode over TLS (a CA and certificate made now by
# clients/make-test-certs.sh; buf trusts the CA with --cacert) on a fresh database with a
# generated admin token and encryption key, then: the admin creates two users; alice lists the _system definitions,
# creates an instance from one with an API key and shares it with bob as reader; bob lists it,
# binds a project to it and calls GetProjectInstance. It checks that the key appears in no
# output, and that a write to _system and a stranger's read get the documented codes.
# Needs buf (PyPI `buf-bin`), jq, psql and PostgreSQL on 127.0.0.1:5432 with trust auth.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${1:-target/debug/llm-registry}
WORK=$(mktemp -d)
DB="llmr_test_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PG="psql -h 127.0.0.1 -U postgres -d postgres -Atqc"
cleanup() {
    kill "${SERVER_PID:-}" 2>/dev/null && wait "${SERVER_PID}" 2>/dev/null || true
    $PG "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "journey FAILED: $*" >&2; exit 1; }
step() { echo "-- $*"; }

# Secrets are drawn now, never committed.
ADMIN_TOKEN="llmr_admin_$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
API_KEY="sk-journey-$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
$PG "CREATE DATABASE $DB"
clients/make-test-certs.sh "$WORK/tls"
LLM_REGISTRY_MODE=production TLS_CERT_FILE="$WORK/tls/server.crt" TLS_KEY_FILE="$WORK/tls/server.key" \
    ADMIN_TOKEN="$ADMIN_TOKEN" \
    ENCRYPTION_KEY="$(head -c 32 /dev/urandom | base64)" \
    DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" LISTEN_ADDR=127.0.0.1:0 \
    RUST_LOG=info "$BIN" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 600); do
    ADDR=$(grep -so 'address=[0-9.:]*' "$WORK/server.log" | head -n 1 | cut -d= -f2 || true)
    [ -n "$ADDR" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; fail "the server exited"; }
    sleep 0.05
done
[ -n "$ADDR" ] || fail "the server did not report its address"
grep -q 'transport="TLS"' "$WORK/server.log" || fail "the server does not say it serves TLS"
# The certificate names localhost (and 127.0.0.1); buf verifies it against the run's CA.
URL="https://localhost:${ADDR##*:}"
TLS=(--cacert "$WORK/tls/ca.pem")

# call TOKEN METHOD JSON: prints the response; on a gRPC error prints buf's error JSON and
# returns 1. Every output is also appended to $WORK/outputs for the key check.
call() {
    local token=$1 method=$2 data=$3 out rc=0
    local auth=()
    [ -n "$token" ] && auth=(-H "authorization: Bearer $token")
    out=$(buf curl --protocol grpc "${TLS[@]}" "${auth[@]}" \
        -d "$data" "$URL/$method" 2>&1) || rc=$?
    printf '%s\n' "$out" >> "$WORK/outputs"
    printf '%s\n' "$out"
    return "$rc"
}
# expect_code CODE TOKEN METHOD JSON: the call must fail with that gRPC code (buf's spelling).
expect_code() {
    local want=$1 out
    shift
    if out=$(call "$@"); then fail "$2 succeeded; expected $want: $out"; fi
    local got
    got=$(jq -r '.code // empty' <<<"$out" 2>/dev/null || true)
    [ "$got" = "$want" ] || fail "$2: expected $want, got '${got:-?}': $out"
    echo "   $2 -> $want, as expected"
}

step "health turns SERVING (reflection-only client)"
for _ in $(seq 1 100); do
    status=$(call "" grpc.health.v1.Health/Check '{}' | jq -r '.status // empty' 2>/dev/null || true)
    [ "$status" = SERVING ] && break
    sleep 0.1
done
[ "${status:-}" = SERVING ] || fail "health never turned SERVING"

step "reflection lists every service"
services=$(buf curl --protocol grpc "${TLS[@]}" --list-services "$URL")
for service in llmregistry.v1.UserService llmregistry.v1.LlmDefinitionService \
    llmregistry.v1.LlmInstanceService llmregistry.v1.SharingService \
    llmregistry.v1.ProjectService grpc.health.v1.Health; do
    grep -qx "$service" <<<"$services" || fail "reflection does not list $service"
done

step "the admin creates alice and bob (and carol, a stranger to them)"
create_user() {
    local out
    out=$(call "$ADMIN_TOKEN" llmregistry.v1.UserService/CreateUser \
        "{\"userId\":\"$1\",\"user\":{\"displayName\":\"$1\"}}") || fail "CreateUser $1: $out"
    jq -er .token <<<"$out"
}
ALICE=$(create_user alice)
BOB=$(create_user bob)
CAROL=$(create_user carol)

step "alice lists the _system definitions"
out=$(call "$ALICE" llmregistry.v1.LlmDefinitionService/ListDefinitions \
    '{"parent":"users/_system"}') || fail "ListDefinitions: $out"
definition=$(jq -er '.definitions[0].name' <<<"$out")
echo "   first definition: $definition"

step "alice creates an instance from it, with an API key"
request=$(jq -nc --arg source "$definition" --arg key "$API_KEY" \
    '{parent: "users/alice", instanceId: "main", sourceDefinition: $source, instance: {apiKey: $key}}')
created=$(call "$ALICE" llmregistry.v1.LlmInstanceService/CreateInstanceFromDefinition "$request") ||
    fail "CreateInstanceFromDefinition: $created"
[ "$(jq -r .hasApiKey <<<"$created")" = true ] || fail "the instance does not report its key: $created"
[ "$(jq -r .definition <<<"$created")" = "$definition" ] || fail "wrong source: $created"

step "alice shares it with bob as reader"
out=$(call "$ALICE" llmregistry.v1.SharingService/ShareInstance \
    '{"name":"users/alice/instances/main","grantee":"users/bob","role":"ROLE_READER"}') ||
    fail "ShareInstance: $out"

step "bob lists it among his instances"
listed=$(call "$BOB" llmregistry.v1.LlmInstanceService/ListInstances '{"parent":"users/bob"}') ||
    fail "ListInstances: $listed"
jq -e '.instances[] | select(.name == "users/alice/instances/main" and .accessRole == "ROLE_READER")' \
    <<<"$listed" >/dev/null || fail "bob does not see the shared instance as reader: $listed"

step "bob binds a project to it and reads it through the project"
out=$(call "$BOB" llmregistry.v1.ProjectService/CreateProject \
    '{"parent":"users/bob","projectId":"search","project":{"instance":"users/alice/instances/main"}}') ||
    fail "CreateProject: $out"
through=$(call "$BOB" llmregistry.v1.ProjectService/GetProjectInstance \
    '{"name":"users/bob/projects/search"}') || fail "GetProjectInstance: $through"
[ "$(jq -r .name <<<"$through")" = users/alice/instances/main ] || fail "GetProjectInstance: $through"
[ "$(jq -r .hasApiKey <<<"$through")" = true ] || fail "GetProjectInstance hides has_api_key: $through"

step "refusals come back with the documented codes"
expect_code permission_denied "$ALICE" llmregistry.v1.LlmDefinitionService/CreateDefinition \
    '{"parent":"users/_system","definitionId":"mine","definition":{"endpoint":"https://example.com/v1","apiStandard":"openai","model":"m"}}'
expect_code not_found "$CAROL" llmregistry.v1.LlmInstanceService/GetInstance \
    '{"name":"users/alice/instances/main"}'
expect_code permission_denied "$BOB" llmregistry.v1.LlmInstanceService/DeleteInstance \
    '{"name":"users/alice/instances/main"}'
expect_code unauthenticated "" llmregistry.v1.LlmInstanceService/GetInstance \
    '{"name":"users/alice/instances/main"}'
expect_code invalid_argument "$ALICE" llmregistry.v1.LlmInstanceService/GetInstance \
    '{"name":"not a name"}'

step "the API key appears in no output"
lines=$(wc -l < "$WORK/outputs")
if grep -qF "$API_KEY" "$WORK/outputs" "$WORK/server.log"; then
    fail "the API key appeared in an output or the server log"
fi
echo "   checked $lines output lines and the server log"

echo "journey OK"
