#!/usr/bin/env bash
# Idempotent set-up of the real-editor test tools, as root: Debian's chromium, ripgrep and
# libkrb5-dev, and code-server@4.100.3 (the last release that runs on Node 20) installed with npm
# into test/.tools/code-server (git-ignored). Quick when already installed (stamp file).
#
# VS Code desktop cannot be downloaded on this machine, so the e2e tests run VS Code's own
# workbench and extension host through code-server, driven by playwright-core + /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

CODE_SERVER_VERSION=4.100.3
TOOLS=test/.tools/code-server
STAMP=$TOOLS/.trenv-installed
log() { printf '\033[1msetup-editor:\033[0m %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup-editor: needs root (apt packages): run it with sudo" >&2
  exit 1
fi

# ---- Debian packages
APT_PACKAGES=(chromium libkrb5-dev ripgrep tar gzip)
source scripts/apt-ensure.sh # (the script has cd'd to the repo root)
apt_ensure "${APT_PACKAGES[@]}"

code_server_runs() {
  [ -x "$TOOLS/node_modules/.bin/code-server" ] &&
    [ -f "$TOOLS/node_modules/code-server/lib/vscode/node_modules/@vscode/ripgrep/bin/rg" ] &&
    timeout 60 "$TOOLS/node_modules/.bin/code-server" --version >/dev/null 2>&1
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$CODE_SERVER_VERSION" ] && code_server_runs; then
  exit 0
fi

# ---- ripgrep cache trick: @vscode/ripgrep's postinstall downloads rg from GitHub; give it
# Debian's rg in the cache it looks in first.
TMP=$(node -p 'require("os").tmpdir()')
RG_CACHE=$TMP/vscode-ripgrep-cache-1.15.11
RG_TGZ=$RG_CACHE/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz
if [ ! -s "$RG_TGZ" ]; then
  log "pre-filling the ripgrep cache from Debian's rg"
  mkdir -p "$RG_CACHE"
  work=$(mktemp -d)
  cp "$(command -v rg)" "$work/rg"
  tar -czf "$RG_TGZ" -C "$work" rg
  rm -rf "$work"
fi

# ---- code-server. npm 11 refuses --allow-scripts in a project install and may skip unreviewed
# install scripts, so the tools folder gets its own package.json approving code-server's; we
# still check afterwards and run the postinstall ourselves if it was skipped.
log "installing code-server@$CODE_SERVER_VERSION into $TOOLS (takes a few minutes the first time)"
mkdir -p "$TOOLS"
cat > "$TOOLS/package.json" <<'JSON'
{
  "name": "trenv-editor-tools",
  "private": true,
  "description": "code-server for trenv's real-editor tests (installed by scripts/setup-editor.sh)",
  "allowScripts": { "code-server": true, "argon2": true, "@vscode/ripgrep": true }
}
JSON
npm_config_yes=true npm_config_nodedir=/usr \
  npm install --unsafe-perm --no-audit --no-fund --loglevel=error \
  "code-server@$CODE_SERVER_VERSION" --prefix "$TOOLS"

CS=$TOOLS/node_modules/code-server
if [ ! -f "$CS/lib/vscode/node_modules/@vscode/ripgrep/bin/rg" ] || [ ! -d "$CS/lib/vscode/node_modules" ]; then
  log "running code-server's postinstall (npm skipped it)"
  (cd "$CS" && npm_config_nodedir=/usr npm_config_allow_scripts=true bash ./postinstall.sh)
fi
if [ ! -f "$CS/lib/vscode/node_modules/@vscode/ripgrep/bin/rg" ]; then
  # Last resort: the editor only needs an rg binary for search.
  mkdir -p "$CS/lib/vscode/node_modules/@vscode/ripgrep/bin"
  cp "$(command -v rg)" "$CS/lib/vscode/node_modules/@vscode/ripgrep/bin/rg"
fi

if ! code_server_runs; then
  echo "setup-editor: code-server was installed but '$TOOLS/node_modules/.bin/code-server --version' fails" >&2
  "$TOOLS/node_modules/.bin/code-server" --version >&2 || true
  exit 1
fi
echo "$CODE_SERVER_VERSION" > "$STAMP"
log "code-server $("$TOOLS/node_modules/.bin/code-server" --version | head -1) ready"
