# Sourced by the client journeys (clients/go/journey.sh, clients/typescript/journey.sh): starts
# what a journey runs against and exports where it is.
#
#   start_stack path/to/llm-registry
#
# makes a fresh database, a CA and certificate (clients/make-test-certs.sh), a fake OpenAI
# provider over HTTPS with it (clients/fake_openai.py) and the server in production mode,
# plaintext as behind a mesh, allowed to call the fake (loopback, the run's CA) and with a low
# per-instance rate limit (5 calls a minute) so that a journey meets it. Exports LLMR_ADDR,
# LLMR_ADMIN_TOKEN, LLMR_PROVIDER_ENDPOINT and LLMR_PROVIDER_KEY (secrets drawn now), and
# STACK_WORK (the server's log is $STACK_WORK/server.log, the provider's $STACK_WORK/provider.log).
# Everything is stopped and removed on exit. `stack_checks` then checks that the provider received
# the key and that the server's log does not hold it.

STACK_PG="psql -h 127.0.0.1 -U postgres -d postgres -Atqc"

stack_fail() { echo "journey FAILED: $*" >&2; exit 1; }

stack_cleanup() {
    kill "${STACK_SERVER_PID:-}" 2>/dev/null && wait "${STACK_SERVER_PID}" 2>/dev/null || true
    kill "${STACK_FAKE_PID:-}" 2>/dev/null && wait "${STACK_FAKE_PID}" 2>/dev/null || true
    [ -z "${STACK_DB:-}" ] || $STACK_PG "DROP DATABASE IF EXISTS $STACK_DB WITH (FORCE)" >/dev/null 2>&1 || true
    [ -z "${STACK_WORK:-}" ] || rm -rf "$STACK_WORK"
}

start_stack() {
    local bin=$1
    STACK_WORK=$(mktemp -d)
    STACK_DB="llmr_test_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    trap stack_cleanup EXIT
    export LLMR_ADMIN_TOKEN="llmr_admin_$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    export LLMR_PROVIDER_KEY="sk-journey-$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    $STACK_PG "CREATE DATABASE $STACK_DB" >/dev/null
    clients/make-test-certs.sh "$STACK_WORK/tls" >/dev/null
    python3 clients/fake_openai.py "$STACK_WORK/tls/server.crt" "$STACK_WORK/tls/server.key" \
        "$STACK_WORK/provider.log" 8 > "$STACK_WORK/fake.out" 2>&1 &
    STACK_FAKE_PID=$!
    LLMR_PROVIDER_ENDPOINT=""
    for _ in $(seq 1 200); do
        LLMR_PROVIDER_ENDPOINT=$(head -n 1 "$STACK_WORK/fake.out" 2>/dev/null || true)
        [ -n "$LLMR_PROVIDER_ENDPOINT" ] && break
        sleep 0.05
    done
    [ -n "$LLMR_PROVIDER_ENDPOINT" ] || stack_fail "the fake provider did not start: $(cat "$STACK_WORK/fake.out")"
    export LLMR_PROVIDER_ENDPOINT
    PROVIDER_EGRESS_ALLOW=loopback PROVIDER_CA_FILE="$STACK_WORK/tls/ca.pem" \
    PROVIDER_REQUESTS_PER_MINUTE=5 LLM_REGISTRY_MODE=production TLS_TERMINATED_UPSTREAM=true \
        ADMIN_TOKEN="$LLMR_ADMIN_TOKEN" ENCRYPTION_KEY="$(head -c 32 /dev/urandom | base64)" \
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/$STACK_DB" LISTEN_ADDR=127.0.0.1:0 \
        RUST_LOG=info "$bin" > "$STACK_WORK/server.log" 2>&1 &
    STACK_SERVER_PID=$!
    LLMR_ADDR=""
    for _ in $(seq 1 600); do
        LLMR_ADDR=$(grep -so 'address=[0-9.:]*' "$STACK_WORK/server.log" | head -n 1 | cut -d= -f2 || true)
        [ -n "$LLMR_ADDR" ] && break
        kill -0 "$STACK_SERVER_PID" 2>/dev/null || { cat "$STACK_WORK/server.log" >&2; stack_fail "the server exited"; }
        sleep 0.05
    done
    [ -n "$LLMR_ADDR" ] || stack_fail "the server did not report its address"
    export LLMR_ADDR STACK_WORK
}

stack_checks() {
    grep -qF "$LLMR_PROVIDER_KEY" "$STACK_WORK/provider.log" || stack_fail "the provider never received the key"
    if grep -qF "$LLMR_PROVIDER_KEY" "$STACK_WORK/server.log"; then stack_fail "the key is in the server log"; fi
}
