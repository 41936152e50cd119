#!/usr/bin/env bash
# Builds what trenv's microVM sandboxes boot, as root. Idempotent: a build is keyed by the hash of
# its inputs and skipped when that build exists.
#
#   - QEMU (Debian qemu-system-x86) and the tools to build images (busybox-static, cpio, e2fsprogs,
#     libcjson for the guest agent);
#   - a guest kernel: Debian's linux-image-6.1.0-N-amd64, DOWNLOADED and unpacked into a private
#     dir (not installed: the host's /boot and initramfs are not touched);
#   - an initramfs: static busybox + the virtio/pmem/ext4 modules of that kernel + /init, which
#     mounts the root (virtio-pmem with DAX, or virtio-blk) read-only and switch_roots into it;
#   - a root filesystem image (ext4, read-only): busybox, Debian's python3 (stdlib) and the node
#     binary with exactly the libraries they load, the runtime shims, the guest agent trenv-guest.
#     Built with fixed UUID, hash seed and timestamps so the same inputs give the same image.
#
# Output: $TRENV_VM_DIR (default /opt/trenv/vm)/<key>/{vmlinuz,initrd.cpio,rootfs.ext4,image.json}
# and $TRENV_VM_DIR/current -> <key>.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

log() { printf '\033[1msetup-vm:\033[0m %s\n' "$*"; }
warn() { printf '\033[1;33msetup-vm: warning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31msetup-vm: error:\033[0m %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (apt packages, image builds): run it with sudo"

VM_DIR=${TRENV_VM_DIR:-/opt/trenv/vm}
source scripts/apt-ensure.sh
apt_ensure qemu-system-x86 busybox-static cpio e2fsprogs libcjson-dev kmod gcc libc6-dev

# ---- the guest kernel: the newest Debian 6.1 kernel the archive offers (pin with TRENV_VM_KERNEL)
KVER=${TRENV_VM_KERNEL:-}
if [ -z "$KVER" ]; then
  if [ -f "$VM_DIR/current/image.json" ]; then KVER=$(sed -n 's/.*"kernel": *"\([^"]*\)".*/\1/p' "$VM_DIR/current/image.json"); fi
fi
if [ -z "$KVER" ]; then
  KVER=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sed 's/^linux-image-//' | sort -V | tail -1)
  if [ -z "$KVER" ]; then apt-get -o DPkg::Lock::Timeout=600 update -qq; KVER=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sed 's/^linux-image-//' | sort -V | tail -1); fi
fi
[ -n "$KVER" ] || die "no linux-image-6.1.0-*-amd64 in the apt sources"
KDIR="$VM_DIR/kernels/$KVER"
if [ ! -f "$KDIR/.done" ]; then
  log "downloading the guest kernel linux-image-$KVER"
  rm -rf "$KDIR" && mkdir -p "$KDIR/deb"
  (cd "$KDIR/deb" && apt-get download -qq -o APT::Sandbox::User=root "linux-image-$KVER" >/dev/null)
  dpkg-deb -x "$KDIR"/deb/*.deb "$KDIR/root"
  rm -rf "$KDIR/deb"
  depmod -b "$KDIR/root" "$KVER"
  touch "$KDIR/.done"
fi

# ---- the guest agent
GUEST_SRC=runtime-daemon/native/guest/trenv-guest.c
mkdir -p runtime-daemon/native/build
gcc -O2 -std=gnu11 -Wall -Wextra -Werror -o runtime-daemon/native/build/trenv-guest "$GUEST_SRC" -lcjson

# ---- the build key: everything that goes into the images
KEY=$( { echo "v4 $KVER"; sha256sum "$0" "$GUEST_SRC" runtime-daemon/runtimes/python/*.py runtime-daemon/runtimes/node/*.js runtime-daemon/runtimes/node/*.c;
  /usr/bin/python3 --version; /usr/bin/node --version; dpkg-query -W -f='${Version}' busybox-static; } | sha256sum | cut -c1-16)
OUT="$VM_DIR/$KEY"
if [ -f "$OUT/image.json" ]; then
  ln -sfn "$KEY" "$VM_DIR/current"
  log "guest images are current: $OUT"
  exit 0
fi
log "building guest images $KEY (kernel $KVER)"
TMP=$(mktemp -d /tmp/trenv-vm-build.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export SOURCE_DATE_EPOCH=1700000000 E2FSPROGS_FAKE_TIME=1700000000

# ---- initramfs: busybox, modules, /init
IR=$TMP/initrd
mkdir -p "$IR"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$IR/bin/busybox"
for a in sh mount umount mkdir insmod switch_root cat sleep echo mknod; do ln -s busybox "$IR/bin/$a"; done
MODS="virtio_pci virtio_console virtio_blk nd_pmem virtio_pmem ext4 crc32c_generic"
: > "$IR/modules.order"
for m in $MODS; do
  modprobe -d "$KDIR/root" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  base=$(basename "$ko")
  case "$ko" in
    *.xz) xz -dc "$ko" > "$IR/lib/modules/${base%.xz}"; base=${base%.xz} ;;
    *) cp "$ko" "$IR/lib/modules/$base" ;;
  esac
  echo "$base" >> "$IR/modules.order"
done
cat > "$IR/init" <<'EOF'
#!/bin/sh
# trenv guest init: load the drivers, mount the read-only root (DAX on virtio-pmem, or virtio-blk),
# give the agent tmpfs for /app, /tmp and its home, then become the guest agent.
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
root=pmem
for a in $(cat /proc/cmdline); do case "$a" in trenv.root=*) root=${a#trenv.root=};; esac; done
i=0
if [ "$root" = pmem ]; then dev=/dev/pmem0; opts=ro,dax; else dev=/dev/vda; opts=ro; fi
while [ ! -b $dev ] && [ $i -lt 200 ]; do sleep 0.01; i=$((i+1)); done
mount -t ext4 -o $opts $dev /newroot || { echo "trenv-init: cannot mount the root $dev ($opts)"; echo o > /proc/sysrq-trigger; }
for d in tmp app home/agent run; do mount -t tmpfs -o mode=1777,size=64m tmpfs /newroot/$d; done
mkdir -p /dev/shm; mount --move /dev /newroot/dev; mount --move /proc /newroot/proc; mount --move /sys /newroot/sys
exec switch_root /newroot /sbin/trenv-guest
EOF
chmod 755 "$IR/init"
find "$IR" -exec touch -h -d @$SOURCE_DATE_EPOCH {} +
(cd "$IR" && find . | LC_ALL=C sort | cpio -o -H newc --reproducible --quiet -R 0:0) > "$TMP/initrd.cpio"

# ---- root filesystem
RF=$TMP/rootfs
mkdir -p "$RF"/{bin,sbin,usr/bin,usr/lib,lib64,etc,proc,sys,dev,tmp,app,run,home/agent,opt/trenv/runtimes}
ln -s usr/lib "$RF/lib"
cp /bin/busybox "$RF/bin/busybox"
for a in $("$RF/bin/busybox" --list); do [ -e "$RF/bin/$a" ] || ln -s busybox "$RF/bin/$a"; done
cp /usr/bin/python3.11 "$RF/usr/bin/python3.11"; ln -s python3.11 "$RF/usr/bin/python3"
cp /usr/bin/node "$RF/usr/bin/node"
cp runtime-daemon/native/build/trenv-guest "$RF/sbin/trenv-guest"
# bash: E2B's SDKs run every command as `/bin/bash -l -c <cmd>`; /usr/bin/env for #! lines
cp "$(readlink -f /bin/bash)" "$RF/bin/bash"; ln -s ../../bin/bash "$RF/usr/bin/bash"
ln -s ../../bin/busybox "$RF/usr/bin/env"
# the stdlib (with its compiled bytecode, so imports need no compiling) without its tests, GUI and build parts
tar -C /usr/lib --exclude='python3.11/test' --exclude='python3.11/idlelib' --exclude='python3.11/tkinter' \
  --exclude='python3.11/turtledemo' --exclude='python3.11/lib2to3' --exclude='python3.11/ensurepip' \
  --exclude='python3.11/config-3.11-x86_64-linux-gnu' -cf - python3.11 | tar -C "$RF/usr/lib" -xf -
cp -r runtime-daemon/runtimes/python runtime-daemon/runtimes/node "$RF/opt/trenv/runtimes/"
rm -f "$RF/opt/trenv/runtimes/node/"*.c
[ -f "$RF/opt/trenv/runtimes/node/trenv_rand.node" ] || warn "the Node re-seed addon is not built: Node VM clones will share OpenSSL's DRBG state"
# exactly the shared libraries these binaries load
for b in /usr/bin/python3.11 /usr/bin/node /bin/bash runtime-daemon/native/build/trenv-guest /usr/lib/python3.11/lib-dynload/*.so; do
  ldd "$b" 2>/dev/null | awk '/=> \//{print $3} /^\t\/lib64/{print $1}'
done | sort -u | while read -r lib; do
  real=$(readlink -f "$lib")
  dest="$RF/usr/lib/x86_64-linux-gnu/$(basename "$lib")"
  mkdir -p "$(dirname "$dest")"
  cp "$real" "$dest"
done
cp "$(readlink -f /lib64/ld-linux-x86-64.so.2)" "$RF/lib64/ld-linux-x86-64.so.2"
printf 'root:x:0:0:root:/root:/bin/sh\nagent:x:10001:10001:trenv agent:/home/agent:/bin/sh\n' > "$RF/etc/passwd"
printf 'root:x:0:\nagent:x:10001:\n' > "$RF/etc/group"
echo trenv-vm > "$RF/etc/hostname"
: > "$RF/etc/resolv.conf"
find "$RF" -exec touch -h -d @$SOURCE_DATE_EPOCH {} +
size_mb=$(( $(du -sm "$RF" | cut -f1) + 48 ))
# a multiple of 2 MiB (virtio-pmem maps the image as guest memory)
size_mb=$(( (size_mb + 1) / 2 * 2 ))
mkfs.ext4 -q -F -L trenv-root -U 6b1f6f0e-0b55-4c6e-9c7e-7472656e7601 -E hash_seed=7472656e-7600-4000-8000-000000000001,root_owner=0:0 \
  -b 4096 -m 0 -O ^has_journal -d "$RF" "$TMP/rootfs.ext4" "${size_mb}M"

mkdir -p "$OUT.tmp"
cp "$KDIR/root/boot/vmlinuz-$KVER" "$OUT.tmp/vmlinuz"
mv "$TMP/initrd.cpio" "$TMP/rootfs.ext4" "$OUT.tmp/"
chmod 0444 "$OUT.tmp"/*
cat > "$OUT.tmp/image.json" <<EOF
{"key": "$KEY", "kernel": "$KVER", "python": "$(/usr/bin/python3 --version | cut -d' ' -f2)", "node": "$(/usr/bin/node --version)", "rootfsMiB": $size_mb, "builtAt": "$(date -u +%FT%TZ)"}
EOF
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
ln -sfn "$KEY" "$VM_DIR/current"
# older builds: their templates are stale now (the image key is part of a template's version)
for old in "$VM_DIR"/*/image.json; do
  d=$(dirname "$old"); [ -L "$d" ] || [ "$d" = "$OUT" ] || rm -rf "$d"
done
log "built $OUT: rootfs ${size_mb} MiB, initrd $(du -k "$OUT/initrd.cpio" | cut -f1) KiB"
