#!/usr/bin/env bash
# The main job: set up, start the daemon, invoke every example agent, print results, restore traces and memory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node dist/trenv.js demo "$@"
