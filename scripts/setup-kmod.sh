#!/usr/bin/env bash
# Builds the mm_template kernel module (kernel-modules/mm_template) against Debian's headers of the
# guest kernel, as root. Idempotent. The host kernel has no module support: the module is loaded and
# tested only inside a QEMU guest (kernel-modules/test/run-guest-tests.sh).
#
# Pinned: the headers must match the guest kernel exactly (vermagic), so the version is fixed here
# rather than "the newest 6.1": TRENV_KMOD_KERNEL overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\033[1msetup-kmod:\033[0m %s\n' "$*"; }
die() { printf '\033[1;31msetup-kmod: error:\033[0m %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (apt packages): run it with sudo"
KVER=${TRENV_KMOD_KERNEL:-6.1.0-56-amd64}
source scripts/apt-ensure.sh
apt_ensure "linux-headers-$KVER" qemu-system-x86 busybox-static cpio gcc libc6-dev make
# pin: a later `apt-get upgrade` must not replace the headers the module was built for
apt-mark hold "linux-headers-$KVER" >/dev/null 2>&1 || true
make -s -C "/usr/src/linux-headers-$KVER" M="$PWD/kernel-modules/mm_template" modules >/dev/null
log "built kernel-modules/mm_template/mm_template.ko for $KVER"
