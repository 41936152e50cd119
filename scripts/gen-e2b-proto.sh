#!/usr/bin/env bash
# Regenerates runtime-daemon/e2b/gen/*_pb.ts from runtime-daemon/e2b/proto/*.proto
# (buf + protoc-gen-es from devDependencies; no network).
set -euo pipefail
cd "$(dirname "$0")/../runtime-daemon/e2b/proto"
rm -rf ../gen
../../../node_modules/.bin/buf generate
