#!/usr/bin/env bash
# Regenerate the committed gRPC stubs from proto/kinodb/v1/kinodb.proto.
#
# Usage: scripts/gen_proto.sh [OUTDIR]   (default: src/kinodb/serve/_proto)
# Needs grpcio-tools (pip install 'kinodb[dev]'); PYTHON picks the interpreter.
# tests/serve/test_serve_proto.py checks that the committed stubs equal a fresh run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/src/kinodb/serve/_proto}"
python="${PYTHON:-python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cd "$root"
"$python" -m grpc_tools.protoc -I proto \
    --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
    proto/kinodb/v1/kinodb.proto

mkdir -p "$out"
for name in kinodb_pb2.py kinodb_pb2.pyi kinodb_pb2_grpc.py; do
    # protoc imports the message module by its proto path (kinodb.v1); it lives here instead.
    sed -e 's/^from kinodb\.v1 import kinodb_pb2 as /from kinodb.serve._proto import kinodb_pb2 as /' \
        "$tmp/kinodb/v1/$name" > "$out/$name"
done
