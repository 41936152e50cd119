#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, as root: system packages, npm dependencies,
# the native sandbox manager and the bundles. Safe to run again; quick when everything is current.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: needs root (apt packages, and the daemon itself needs namespaces, cgroups and mounts): run it with sudo" >&2
  exit 1
fi

# ---- Debian packages
# runtime: compilers for the native helpers, the agents' interpreters and their Debian libraries,
# user-mode networking, debugpy; bench baselines: runc; webview/e2e tests: chromium; E2B code
# interpreter charts: matplotlib
APT_PACKAGES=(gcc make libc6-dev python3 python3-debugpy python3-pyaes python3-jinja2 python3-pil
  slirp4netns iproute2 procps util-linux ca-certificates runc chromium python3-matplotlib)
source scripts/apt-ensure.sh # (the script has cd'd to the repo root)
apt_ensure "${APT_PACKAGES[@]}"

# ---- Node.js (the machine ships Node 20; Debian's nodejs 18 would do for the daemon too)
if ! command -v node >/dev/null; then
  log "installing nodejs and npm from Debian"
  apt-get install -y -qq nodejs npm >/dev/null
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then echo "setup: Node >= 18 is needed, found $(node --version)" >&2; exit 1; fi

# ---- npm dependencies (only when package-lock.json changed)
stamp=node_modules/.trenv-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

# ---- npm dependencies of the example agents that have them (mounted into their sandboxes with the code)
for lock in examples/*/package-lock.json; do
  [ -f "$lock" ] || continue
  dir=$(dirname "$lock")
  stamp="$dir/node_modules/.trenv-lock-hash"
  want=$(sha256sum "$lock" | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing npm dependencies of $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
done

# ---- native helpers: the sandbox manager, trenv-enter, the Node re-seed addon (the VM images copy it)
log "building the native sandbox manager"
make -s -C runtime-daemon/native

# ---- CRIU 4 in a private prefix (Debian 12's criu 3.17 fails on this kernel): Node templates, CRIU baseline
bash scripts/setup-criu.sh || echo "setup: CRIU is unavailable ($?): Node agents run without memory templates" >&2

# ---- microVMs: QEMU, the guest kernel (downloaded, not installed), initramfs and root filesystem image
bash scripts/setup-vm.sh || echo "setup: microVM images could not be built ($?): invoking with --vm will say why" >&2

# ---- the mm_template kernel module: pinned headers of the guest kernel, QEMU; loaded only in a test guest
bash scripts/setup-kmod.sh || echo "setup: the mm_template kernel module could not be built ($?): its guest tests will be skipped" >&2

# ---- bundles
log "bundling the daemon and CLI"
node scripts/build.mjs
log "ready"
