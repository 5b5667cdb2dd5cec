#!/usr/bin/env bash
# Regenerates the shipped gRPC stubs (python/shoal/v1/*_pb2*.py{,i}) from proto/shoal/v1/*.proto,
# so that `pip install ./python` needs no protoc. Needs grpcio-tools (pip install './python[dev]').
#
#   python/scripts/gen_stubs.sh          # rewrite the stubs
#   python/scripts/gen_stubs.sh --check  # fail if the shipped stubs differ from the .proto files
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$PY" -m grpc_tools.protoc -I proto --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
    proto/shoal/v1/common.proto proto/shoal/v1/federation.proto proto/shoal/v1/trees.proto \
    proto/shoal/v1/jobs.proto
if [[ "${1:-}" == "--check" ]]; then
    for f in "$out"/shoal/v1/*; do
        if ! cmp -s "$f" "python/shoal/v1/$(basename "$f")"; then
            echo "python/shoal/v1/$(basename "$f") is stale: run python/scripts/gen_stubs.sh" >&2
            exit 1
        fi
    done
    echo "python stubs match proto/"
else
    cp "$out"/shoal/v1/* python/shoal/v1/
    echo "python stubs regenerated"
fi
