#!/usr/bin/env bash
# Builds the mm_template module and its guest tests, boots Debian's kernel under QEMU (TCG, no
# KVM needed) with an initramfs holding them, runs the tests inside, powers off, and prints the
# guest's PASS/FAIL/METRIC lines. Exits non-zero when a test failed, the guest printed a kernel
# BUG/WARNING/Oops, or the guest did not finish.
#
#   run-guest-tests.sh [--node] [--bench] [--daemon] [--out DIR]
#     --node   also the Node-through-the-module tests (puts node, its libraries and CRIU in the initramfs)
#     --bench  also the kmod bench (N = 8, 16 Node instances: module vs CRIU private restore vs cold,
#              for the example agent and for the same agent holding a large initialised state)
#     --daemon instead: the daemon end to end with the module (daemon-guest.sh). The guest's root is
#              this host's / (read-only, virtio-9p, tmpfs on /tmp and /run), so it runs this
#              checkout's dist/ and native binaries, node and CRIU as they are here; needs
#              `node scripts/build.mjs` and `make -C runtime-daemon/native` done.
#
# Needs root only for nothing; needs linux-headers-$KVER, qemu-system-x86, busybox-static, cpio, gcc
# (scripts/setup-kmod.sh installs them).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
KVER=${TRENV_KMOD_KERNEL:-6.1.0-56-amd64}
NODE=0 BENCH=0 DAEMON=0 OUT=""
while [ $# -gt 0 ]; do case "$1" in --node) NODE=1;; --bench) NODE=1; BENCH=1;; --daemon) DAEMON=1;; --out) OUT=$2; shift;; *) echo "unknown argument $1" >&2; exit 2;; esac; shift; done
BUILD=$REPO/kernel-modules/build
mkdir -p "$BUILD"
[ -n "$OUT" ] || OUT=$BUILD/last-run
mkdir -p "$OUT"
log() { printf 'kmod-guest: %s\n' "$*" >&2; }

# ---- the guest kernel: the one scripts/setup-vm.sh unpacked, or our own private copy of the same package
KROOT=/opt/trenv/vm/kernels/$KVER/root
VMLINUZ=$KROOT/boot/vmlinuz-$KVER
if [ ! -f "$VMLINUZ" ]; then
  KROOT=$BUILD/kernel
  VMLINUZ=$BUILD/kernel/boot/vmlinuz-$KVER
  if [ ! -f "$VMLINUZ" ]; then
    log "downloading linux-image-$KVER (unpacked privately, not installed)"
    rm -rf "$BUILD/kernel" "$BUILD/deb" && mkdir -p "$BUILD/deb"
    (cd "$BUILD/deb" && apt-get download -qq "linux-image-$KVER" >/dev/null)
    dpkg-deb -x "$BUILD"/deb/*.deb "$BUILD/kernel" && rm -rf "$BUILD/deb"
    depmod -b "$BUILD/kernel" "$KVER"
  fi
fi

# ---- module and static test programs
make -s -C "/usr/src/linux-headers-$KVER" M="$REPO/kernel-modules/mm_template" modules >/dev/null
gcc -static -O2 -Wall -Werror -o "$BUILD/mmt_test" "$HERE/mmt_test.c"
if [ $NODE = 1 ]; then
  # the daemon's helper and its module code (runtime-daemon/template/mmTemplate.ts), as the daemon runs them
  gcc -static -O2 -Wall -Werror -o "$BUILD/trenv-mmt" "$REPO/runtime-daemon/native/trenv-mmt.c"
  "$REPO/node_modules/.bin/esbuild" "$REPO/runtime-daemon/template/mmTemplate.ts" --bundle --platform=node --format=cjs --log-level=warning --outfile="$BUILD/mmTemplate.js"
fi

# ---- initramfs
IR=$(mktemp -d /tmp/trenv-kmod-ir.XXXXXX)
trap 'rm -rf "$IR"' EXIT
chmod 755 "$IR"
mkdir -p "$IR"/{bin,dev,proc,sys,tmp,t}
cp /bin/busybox "$IR/bin/busybox"
for a in $("$IR/bin/busybox" --list); do [ -e "$IR/bin/$a" ] || ln -s busybox "$IR/bin/$a"; done
cp "$REPO/kernel-modules/mm_template/mm_template.ko" "$BUILD/mmt_test" "$IR/t/"
cp "$HERE/guest-init.sh" "$IR/init"
chmod 755 "$IR/init"
echo "NODE=$NODE BENCH=$BENCH" > "$IR/t/config"
# the kernel's own modules (and what they depend on), loaded in this order by the guest
add_mods() {
  mkdir -p "$IR/t/mods"; touch "$IR/t/mods.order"
  for m in "$@"; do
    modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}' || true
  done | awk '!seen[$0]++' | while read -r ko; do
    base=$(basename "$ko")
    case "$ko" in *.xz) xz -dc "$ko" > "$IR/t/mods/${base%.xz}"; base=${base%.xz} ;; *) cp "$ko" "$IR/t/mods/$base" ;; esac
    grep -qx "$base" "$IR/t/mods.order" || echo "$base" >> "$IR/t/mods.order"
  done
}
# what CRIU probes or needs: socket diag, nftables (kerndat), tun/veth probes
CRIU_MODS="unix_diag netlink_diag inet_diag tcp_diag udp_diag packet_diag nf_tables nft_ct tun veth"
if [ $DAEMON = 1 ]; then
  for f in dist/trenv.js runtime-daemon/native/build/trenv-mmt runtime-daemon/native/build/trenv-sandboxd; do
    [ -e "$REPO/$f" ] || { echo "FAIL daemon_guest_setup: $REPO/$f is missing (node scripts/build.mjs; make -C runtime-daemon/native)"; exit 1; }
  done
  cp "$HERE/daemon-init.sh" "$IR/init"
  echo "$REPO" > "$IR/t/repo"
  # virtio-9p for the host's root; overlay for the sandboxes' roots
  add_mods virtio_pci 9pnet_virtio 9p overlay $CRIU_MODS
fi
if [ $NODE = 1 ]; then
  cp "$BUILD/trenv-mmt" "$BUILD/mmTemplate.js" "$IR/t/"
  mkdir -p "$IR/usr/bin" "$IR/lib64" "$IR/usr/lib/x86_64-linux-gnu" "$IR/opt/trenv" "$IR/app" "$IR/etc"
  ln -s usr/lib "$IR/lib"
  cp /usr/bin/node "$IR/usr/bin/node"
  ldd /usr/bin/node | awk '/=> \//{print $3}' | while read -r lib; do cp "$(readlink -f "$lib")" "$IR/usr/lib/x86_64-linux-gnu/$(basename "$lib")"; done
  cp "$(readlink -f /lib64/ld-linux-x86-64.so.2)" "$IR/lib64/ld-linux-x86-64.so.2"
  cp -r "$REPO/runtime-daemon/runtimes/node" "$IR/opt/trenv/runtimes-node"
  cp -r "$REPO/examples/node-json-transform" "$IR/app/agent"
  cp "$HERE/node-instance.js" "$HERE/kmod-guest.mjs" "$HERE/node-tests.sh" "$IR/t/"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$IR/etc/passwd"
  [ -x /opt/trenv/criu/criu ] && cp -a /opt/trenv/criu "$IR/opt/trenv/criu"
  add_mods $CRIU_MODS
fi
(cd "$IR" && find . | cpio -o -H newc --quiet -R 0:0) > "$BUILD/initramfs.cpio"

# ---- boot
# guest RAM and time limit: the bench's large-state batches need ~2.5 GiB
if [ $BENCH = 1 ]; then MEM_MB=3072 LIMIT_S=480; elif [ $DAEMON = 1 ]; then MEM_MB=2048 LIMIT_S=400; else MEM_MB=1024 LIMIT_S=150; fi
MEM=${TRENV_KMOD_MEM:-$MEM_MB}
HOSTROOT=()
[ $DAEMON = 1 ] && HOSTROOT=(-virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap)
log "booting $KVER under TCG (initramfs $(( $(stat -c %s "$BUILD/initramfs.cpio") / 1048576 )) MiB)"
start=$(date +%s)
set +e
timeout ${TRENV_KMOD_TIMEOUT:-$LIMIT_S} qemu-system-x86_64 -accel tcg -smp 2 -m $MEM -nographic -no-reboot \
  -kernel "$VMLINUZ" -initrd "$BUILD/initramfs.cpio" "${HOSTROOT[@]}" \
  -append 'console=ttyS0 quiet panic=-1 oops=panic' < /dev/null > "$OUT/console.log" 2>&1
qrc=$?
set -e
tr -d '\r' < "$OUT/console.log" > "$OUT/console.txt"
log "guest ran $(( $(date +%s) - start )) s (qemu exit $qrc); console: $OUT/console.txt"
grep -E '^(PASS|FAIL|METRIC|SKIP|DONE|GUEST|INFO|BENCH) ' "$OUT/console.txt" || true
rc=0
grep -q '^GUEST done' "$OUT/console.txt" || { echo "FAIL guest_finished: the guest did not reach the end (qemu exit $qrc)"; rc=1; }
grep -q '^FAIL ' "$OUT/console.txt" && rc=1
if grep -E 'BUG:|WARNING:|Oops|general protection|Kernel panic|Call Trace' "$OUT/console.txt" | grep -v '^PASS\|^FAIL'; then echo "FAIL console_clean: kernel problem on the console"; rc=1; fi
exit $rc
