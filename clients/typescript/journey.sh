#!/usr/bin/env bash
# The TypeScript client's journey against the real binary: installs the pinned npm packages
# (package-lock.json), generates the client (generate.sh), type-checks and compiles it with tsc,
# starts a server and a fake provider (clients/stack.sh) and runs the journey with Node.js. Run by
# .ci/run; usable by hand:
#
#   clients/typescript/journey.sh [path/to/llm-registry]
#
# Needs Node.js 20 and npm, Debian's protoc, python3, psql and PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/../.."
source clients/stack.sh

(cd clients/typescript && npm ci --no-audit --no-fund --silent)
clients/typescript/generate.sh
(cd clients/typescript && rm -rf dist && node_modules/.bin/tsc -p .)
echo "type-checked and compiled clients/typescript/dist"

start_stack "${1:-target/debug/llm-registry}"
node clients/typescript/dist/journey.js ||
    { tail -n 30 "$STACK_WORK/server.log" >&2; stack_fail "the TypeScript journey failed"; }
stack_checks
