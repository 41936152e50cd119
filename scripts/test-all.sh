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
echo "== native sandbox manager and zygote smoke tests"
node runtime-daemon/native/test-sandboxd.mjs
node runtime-daemon/native/test-zygote.mjs
echo "== integration tests (real namespaces, cgroups, mounts)"
node --test --test-concurrency=1 --test-reporter=spec out/test/integration/*.test.js
echo "== webviews rendered in chromium (screenshots in test/artifacts)"
node --test --test-reporter=spec out/test/e2e/webview-preview.js
echo "== the extension in a real VS Code (code-server): extension-host suite and UI end to end"
bash scripts/setup-editor.sh
node --test --test-concurrency=1 --test-reporter=spec out/test/e2e/infra.e2e.js out/test/e2e/trenv.e2e.js
