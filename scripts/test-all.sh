#!/usr/bin/env bash
# Runs every test: set-up, type check, unit tests, integration tests with real sandboxes (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== type check and compile tests"
rm -rf out
npx tsc -p .
echo "== unit tests"
node --test --test-reporter=spec out/test/unit/*.test.js
echo "== native sandbox manager smoke test"
node runtime-daemon/native/test-sandboxd.mjs
echo "== integration tests (real namespaces, cgroups, mounts)"
node --test --test-concurrency=1 --test-reporter=spec out/test/integration/*.test.js
