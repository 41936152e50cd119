#!/usr/bin/env bash
# TrEnv studio (`npm run studio`, as root): the real VS Code workbench with the TrEnv extension, in
# a browser. It sets up the editor tools (scripts/setup-editor.sh), bundles the daemon, CLI and
# extension (scripts/build.mjs), starts the daemon (`trenv daemon start`; it stays running after the
# studio exits: stop it with `node dist/trenv.js daemon stop`), then serves code-server on
# 127.0.0.1:${TRENV_STUDIO_PORT:-8765} with the extension from the repo root and examples/ open, and
# prints the loopback URL. Runs until Ctrl-C, then stops code-server (its whole process group).
# Over SSH, forward the port: ssh -L 8765:127.0.0.1:8765 host, then open the printed URL.
# Editor state (settings, layout) persists in test/.tools/studio/ (git-ignored); delete it to reset.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${TRENV_STUDIO_PORT:-8765}
STUDIO=$ROOT/test/.tools/studio
CODE_SERVER=$ROOT/test/.tools/code-server/node_modules/.bin/code-server
log() { printf '\033[1mstudio:\033[0m %s\n' "$*"; }

bash scripts/setup-editor.sh
log "bundling (scripts/build.mjs)"
node scripts/build.mjs
if [ ! -f dist/extension.js ]; then
  echo "studio: dist/extension.js was not built (is extension/extension.ts there?)" >&2
  exit 1
fi
node dist/trenv.js daemon start

# The extension is installed as a symlink named publisher.name-version in a fresh extensions dir,
# so every start sees the current package.json and dist/.
ext_name=$(node -p 'const p=require("./package.json"); `${p.publisher}.${p.name}-${p.version}`')
rm -rf "$STUDIO/extensions"
mkdir -p "$STUDIO/extensions" "$STUDIO/user-data/User" "$STUDIO/config" "$STUDIO/data"
ln -s "$ROOT" "$STUDIO/extensions/$ext_name"
settings=$STUDIO/user-data/User/settings.json
if [ ! -f "$settings" ]; then
  cat > "$settings" <<'JSON'
{
  "workbench.startupEditor": "none",
  "security.workspace.trust.enabled": false,
  "telemetry.telemetryLevel": "off",
  "terminal.integrated.gpuAcceleration": "off",
  "update.mode": "none",
  "extensions.autoCheckUpdates": false,
  "extensions.autoUpdate": false,
  "git.openRepositoryInParentFolders": "never"
}
JSON
fi

# setsid: code-server leads its own process group, so stopping it stops its extension host too.
# (A background job of a non-interactive shell is not a group leader, so setsid does not fork
# and $! is code-server's pid = its process group id.)
XDG_CONFIG_HOME=$STUDIO/config XDG_DATA_HOME=$STUDIO/data setsid "$CODE_SERVER" \
  --auth none --bind-addr "127.0.0.1:$PORT" --disable-telemetry --disable-update-check \
  --disable-workspace-trust --disable-getting-started-override \
  --user-data-dir "$STUDIO/user-data" --extensions-dir "$STUDIO/extensions" \
  "$ROOT/examples" >"$STUDIO/code-server.log" 2>&1 &
CS_PID=$!

stop() {
  trap - INT TERM EXIT
  if kill -0 -- "-$CS_PID" 2>/dev/null; then
    log "stopping code-server"
    kill -TERM -- "-$CS_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 -- "-$CS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$CS_PID" 2>/dev/null || true
  fi
}
trap 'stop; exit 130' INT TERM
trap stop EXIT

ready=
for _ in $(seq 300); do
  if ! kill -0 "$CS_PID" 2>/dev/null; then break; fi
  if node -e 'require("http").get(process.argv[1], r => process.exit(r.statusCode === 200 ? 0 : 1)).on("error", () => process.exit(1))' \
    "http://127.0.0.1:$PORT/healthz"; then ready=1; break; fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "studio: code-server did not start on 127.0.0.1:$PORT; its log ($STUDIO/code-server.log):" >&2
  tail -20 "$STUDIO/code-server.log" >&2
  exit 1
fi

folder=$(node -p 'encodeURIComponent(process.argv[1])' "$ROOT/examples")
log "TrEnv studio is ready (log: $STUDIO/code-server.log)"
echo
echo "    http://127.0.0.1:$PORT/?folder=$folder"
echo
log "press Ctrl-C to stop"
wait "$CS_PID" || true
