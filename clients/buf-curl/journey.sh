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
# binds a project to it and calls GetProjectInstance. Then an internal service gets an identity:
# the admin creates a service account that acts for users; acting for alice it lists her
# instances, embeds through her project (at a fake OpenAI provider over HTTPS,
# clients/fake_openai.py) and resolves the credential of the instance she allowed it for; the
# audit trail names both. It checks that the keys appear in no output (but that one answer) and
# no log, that the provider received the key, and that refusals get the documented codes.
# Needs buf (PyPI `buf-bin`), jq, python3, psql and PostgreSQL on 127.0.0.1:5432 with trust auth.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${1:-target/debug/llm-registry}
WORK=$(mktemp -d)
DB="llmr_test_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PG="psql -h 127.0.0.1 -U postgres -d postgres -Atqc"
cleanup() {
    kill "${SERVER_PID:-}" 2>/dev/null && wait "${SERVER_PID}" 2>/dev/null || true
    kill "${FAKE_PID:-}" 2>/dev/null && wait "${FAKE_PID}" 2>/dev/null || true
    $PG "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "journey FAILED: $*" >&2; exit 1; }
step() { echo "-- $*"; }

# Secrets are drawn now, never committed.
ADMIN_TOKEN="llmr_admin_$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
API_KEY="sk-journey-$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
PROVIDER_KEY="sk-provider-$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
$PG "CREATE DATABASE $DB"
clients/make-test-certs.sh "$WORK/tls"
# The fake provider serves the run's certificate for localhost; the server trusts the run's CA
# for provider calls and may reach loopback (production allows neither by default).
python3 clients/fake_openai.py "$WORK/tls/server.crt" "$WORK/tls/server.key" \
    "$WORK/provider.log" 8 > "$WORK/fake.out" 2>&1 &
FAKE_PID=$!
FAKE=""
for _ in $(seq 1 200); do
    FAKE=$(head -n 1 "$WORK/fake.out" 2>/dev/null || true)
    [ -n "$FAKE" ] && break
    sleep 0.05
done
[ -n "$FAKE" ] || fail "the fake provider did not start: $(cat "$WORK/fake.out")"
PROVIDER_EGRESS_ALLOW=loopback PROVIDER_CA_FILE="$WORK/tls/ca.pem" \
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
# returns 1. Every output is also appended to $WORK/outputs for the key check. With ACT_AS set
# (ACT_AS=alice call ...), a service account's call acts for that user.
call() {
    local token=$1 method=$2 data=$3 out rc=0
    local auth=()
    [ -n "$token" ] && auth=(-H "authorization: Bearer $token")
    [ -n "${ACT_AS:-}" ] && auth+=(-H "x-llmr-act-as: users/$ACT_AS")
    out=$(buf curl --protocol grpc "${TLS[@]}" "${auth[@]}" \
        -d "$data" "$URL/$method" 2>&1) || rc=$?
    [ -n "${SECRET_ANSWER:-}" ] || printf '%s\n' "$out" >> "$WORK/outputs"
    printf '%s\n' "$out"
    return "$rc"
}
# expect_code CODE TOKEN METHOD JSON: the call must fail with that gRPC code (buf's spelling),
# and what buf prints must name the error's reason (the message ends with it in brackets: buf
# shows ErrorInfo only as bytes). With REASON set, it must be that reason.
expect_code() {
    local want=$1 out
    shift
    if out=$(call "$@"); then fail "$2 succeeded; expected $want: $out"; fi
    local got reason
    got=$(jq -r '.code // empty' <<<"$out" 2>/dev/null || true)
    [ "$got" = "$want" ] || fail "$2: expected $want, got '${got:-?}': $out"
    reason=$(jq -r '.message // empty' <<<"$out" | sed -n 's/.*\[\([A-Z_]*\)\]$/\1/p')
    [ -n "$reason" ] || fail "$2: the printed error names no reason: $out"
    [ -z "${REASON:-}" ] || [ "$reason" = "$REASON" ] || fail "$2: expected reason $REASON: $out"
    echo "   $2 -> $want ($reason), as expected"
}

step "health turns SERVING (reflection-only client)"
for _ in $(seq 1 100); do
    status=$(call "" grpc.health.v1.Health/Check '{}' | jq -r '.status // empty' 2>/dev/null || true)
    [ "$status" = SERVING ] && break
    sleep 0.1
done
[ "${status:-}" = SERVING ] || { cat "$WORK/server.log" "$WORK/outputs" >&2; fail "health never turned SERVING"; }

step "reflection lists every service"
services=$(buf curl --protocol grpc "${TLS[@]}" --list-services "$URL")
for service in llmregistry.v1.UserService llmregistry.v1.LlmDefinitionService \
    llmregistry.v1.LlmInstanceService llmregistry.v1.SharingService \
    llmregistry.v1.ProjectService llmregistry.v1.ServiceAccountService \
    llmregistry.v1.CredentialService grpc.health.v1.Health; do
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
REASON=NOT_FOUND expect_code not_found "$CAROL" llmregistry.v1.LlmInstanceService/GetInstance \
    '{"name":"users/alice/instances/main"}'
expect_code permission_denied "$BOB" llmregistry.v1.LlmInstanceService/DeleteInstance \
    '{"name":"users/alice/instances/main"}'
REASON=UNAUTHENTICATED expect_code unauthenticated "" llmregistry.v1.LlmInstanceService/GetInstance \
    '{"name":"users/alice/instances/main"}'
expect_code invalid_argument "$ALICE" llmregistry.v1.LlmInstanceService/GetInstance \
    '{"name":"not a name"}'

step "the admin gives the gateway an identity: a service account that acts for users"
out=$(call "$ADMIN_TOKEN" llmregistry.v1.ServiceAccountService/CreateServiceAccount \
    '{"serviceAccountId":"gateway","serviceAccount":{"displayName":"LLM gateway","permissions":["SERVICE_ACCOUNT_PERMISSION_ACT_AS_USER","SERVICE_ACCOUNT_PERMISSION_RELEASE_CREDENTIALS"]}}') ||
    fail "CreateServiceAccount: $out"
GATEWAY=$(jq -er .token <<<"$out")
[[ $GATEWAY == llmrsa_* ]] || fail "a service account token starts with llmrsa_"

step "alice creates an instance at her provider (a fake, over HTTPS), allows its release, binds a project"
request=$(jq -nc --arg endpoint "$FAKE" --arg key "$PROVIDER_KEY" \
    '{parent: "users/alice", instanceId: "fast", instance: {endpoint: $endpoint, apiStandard: "openai",
      model: "text-embedding-3-small", dimensions: 8, apiKey: $key, allowCredentialRelease: true}}')
out=$(call "$ALICE" llmregistry.v1.LlmInstanceService/CreateInstance "$request") ||
    fail "CreateInstance: $out"
[ "$(jq -r .allowCredentialRelease <<<"$out")" = true ] || fail "release not allowed: $out"
out=$(call "$ALICE" llmregistry.v1.ProjectService/CreateProject \
    '{"parent":"users/alice","projectId":"rag","project":{"instance":"users/alice/instances/fast"}}') ||
    fail "CreateProject: $out"

step "the gateway, acting for alice, lists her instances and embeds through her project"
listed=$(ACT_AS=alice call "$GATEWAY" llmregistry.v1.LlmInstanceService/ListInstances \
    '{"parent":"users/alice"}') || fail "ListInstances as alice: $listed"
[ "$(jq -r '[.instances[].name] | sort | join(",")' <<<"$listed")" = \
    "users/alice/instances/fast,users/alice/instances/main" ] || fail "alice's instances: $listed"
embedded=$(ACT_AS=alice call "$GATEWAY" llmregistry.v1.EmbeddingService/Embed \
    '{"name":"users/alice/projects/rag","inputs":["hello world","bonjour"]}') || fail "Embed: $embedded"
[ "$(jq -r '.embeddings | length' <<<"$embedded")" = 2 ] || fail "two vectors: $embedded"
[ "$(jq -r .dimensions <<<"$embedded")" = 8 ] || fail "eight dimensions: $embedded"
grep -qF "\"Bearer $PROVIDER_KEY\"" "$WORK/provider.log" || fail "the provider did not receive the key"
echo "   2 vectors of 8 dimensions; the provider received alice's key"

step "the gateway resolves alice's credential: the one answer that carries a key"
released=$(SECRET_ANSWER=1 ACT_AS=alice call "$GATEWAY" llmregistry.v1.CredentialService/ResolveCredential \
    '{"name":"users/alice/projects/rag"}') || fail "ResolveCredential failed"
[ "$(jq -r .apiKey <<<"$released")" = "$PROVIDER_KEY" ] || fail "ResolveCredential did not return the key"
[ "$(jq -r .authHeader <<<"$released")" = Authorization ] || fail "auth header"
[ "$(jq -r .endpoint <<<"$released")" = "$FAKE" ] || fail "endpoint"
echo "   released for users/alice/projects/rag"

step "the trail names the service account and the user it acted for"
events=$(call "$ALICE" llmregistry.v1.AuditService/ListAuditEvents \
    '{"resource":"users/alice/instances/fast"}') || fail "ListAuditEvents: $events"
for method in EmbeddingService/Embed CredentialService/ResolveCredential; do
    jq -e --arg m "$method" '.events[] | select(.method == $m and .caller == "serviceAccounts/gateway"
        and .subject == "users/alice")' <<<"$events" >/dev/null || fail "$method not audited with both: $events"
done

step "acting for others is refused where the documentation says"
ACT_AS=alice expect_code permission_denied "$BOB" llmregistry.v1.LlmInstanceService/ListInstances \
    '{"parent":"users/alice"}'
ACT_AS=nobody expect_code permission_denied "$GATEWAY" llmregistry.v1.LlmInstanceService/ListInstances \
    '{"parent":"users/nobody"}'
ACT_AS=bob expect_code failed_precondition "$GATEWAY" llmregistry.v1.CredentialService/ResolveCredential \
    '{"name":"users/alice/instances/main"}'

step "the API keys appear in no output (but that one answer) and no log"
lines=$(wc -l < "$WORK/outputs")
for secret in "$API_KEY" "$PROVIDER_KEY" "$GATEWAY"; do
    if grep -qF "$secret" "$WORK/server.log"; then
        fail "a secret appeared in the server log"
    fi
done
for secret in "$API_KEY" "$PROVIDER_KEY"; do
    if grep -qF "$secret" "$WORK/outputs"; then
        fail "an API key appeared in an output"
    fi
done
echo "   checked $lines output lines and the server log"

echo "journey OK"
