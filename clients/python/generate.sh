#!/usr/bin/env bash
# Generates the Python client from proto/ with grpcio-tools into clients/python/generated/
# (not committed: always regenerated from the contract). Needs `pip install -r requirements.txt`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$here/../../proto"
out="$here/generated"
if ! python3 -c 'import grpc_tools' 2>/dev/null; then
    echo "clients/python/generate.sh needs grpcio-tools: pip install -r $here/requirements.txt" >&2
    exit 1
fi
rm -rf "$out"
mkdir -p "$out"
python3 -m grpc_tools.protoc -I "$proto" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    $(cd "$proto" && find llmregistry -name '*.proto' | sort)
# Namespace packages are enough for Python 3, but explicit ones keep tools (mypy, IDEs) happy.
touch "$out/llmregistry/__init__.py" "$out/llmregistry/v1/__init__.py"
echo "generated $(find "$out" -name '*_pb2*.py' | wc -l) modules in $out"
