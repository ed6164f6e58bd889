#!/usr/bin/env bash
# Runs the README's sessions (the ```sh blocks after `<!-- session: plaintext -->` and
# `<!-- session: tls -->`) exactly as written, one after the other in one shell, from the
# repository's root, and checks what they printed: the instance holds a key, Bob's Embed returned
# 1536-dimension vectors, TestInstance succeeded, the refusal named its reason, mutual TLS
# refused a client without a certificate, and the fake provider received the key. Run by .ci/run
# after the tests (the binary is built); needs buf, python3, openssl, psql and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=$(mktemp -d)
PG="psql -h 127.0.0.1 -U postgres -d postgres -Atqc"
cleanup() {
    # The sessions start the server and the fake provider in the background: stop whatever of
    # them is left (a failed session stops half-way), then drop the sessions' databases.
    [ -z "${SESSION_PID:-}" ] || kill -- -"$SESSION_PID" 2>/dev/null || true
    pkill -f 'clients/fake_openai.py /tmp/llmr-tls' 2>/dev/null || true
    $PG "SELECT datname FROM pg_database WHERE datname LIKE 'llmr\_session\_%'" |
        while read -r db; do $PG "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null; done
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "README session FAILED: $*" >&2; exit 1; }

python3 - README.md "$WORK/session.sh" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = []
for marker in ("plaintext", "tls"):
    found = re.search(r"<!-- session: %s -->\s*```sh\n(.*?)```" % marker, text, re.S)
    if not found:
        sys.exit(f"README.md has no session block marked {marker}")
    blocks.append(found.group(1))
with open(sys.argv[2], "w") as out:
    out.write("set -euo pipefail\n" + "\n".join(blocks))
PY
echo "running $(wc -l < "$WORK/session.sh") lines of README session"
rm -f /tmp/llmr-provider.log /tmp/llmr-provider.out
setsid bash "$WORK/session.sh" > "$WORK/out" 2>&1 &
SESSION_PID=$!
if ! timeout 600 tail --pid="$SESSION_PID" -f /dev/null || ! wait "$SESSION_PID"; then
    cat "$WORK/out" >&2
    fail "the session stopped with an error"
fi
SESSION_PID=
out=$(cat "$WORK/out")
expect() { grep -qF -- "$1" <<<"$out" || { printf '%s\n' "$out" >&2; fail "$2"; }; }
expect '"hasApiKey": true' "the instance does not hold a key"
expect '"dimensions": 1536' "Bob's Embed did not return 1536-dimension vectors"
expect '"succeeded": true' "TestInstance did not succeed"
expect '[SYSTEM_NAMESPACE_READ_ONLY]' "the refusal did not name its reason"
expect 'cause="the client sent no certificate, and mutual TLS requires one"' \
    "mutual TLS did not refuse (and log) a client without a certificate"
expect 'caller="carol"' "carol, created over mutual TLS, did not list definitions"
grep -q 'sk-offline-' /tmp/llmr-provider.log || fail "the fake provider never received the key"
echo "README sessions ran as written: $(grep -c '^' <<<"$out") lines of output"
