#!/bin/sh
# /init of the daemon guest (run-guest-tests.sh --daemon): load the drivers and the mm_template
# module, mount this host's / read-only over virtio-9p as the new root, tmpfs on /tmp and /run,
# then continue in that root with daemon-guest.sh from the host's checkout.
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /t/mods.order); do insmod /t/mods/$m 2>/dev/null; done
echo "GUEST up $(uname -r) $(nproc) cpus $(awk '/MemTotal/{print $2}' /proc/meminfo) kB"
if insmod /t/mm_template.ko; then echo "PASS insmod"; else echo "FAIL insmod"; fi
REPO=$(cat /t/repo)
mkdir -p /newroot
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /newroot; then
  echo "FAIL mount_host_root: cannot mount the host's / over virtio-9p"; echo "GUEST done"; poweroff -f
fi
# a checkout under /tmp (CI clones there) stays visible under the tmpfs: bound aside, then back
case "$REPO" in /tmp/*|/run/*) mkdir -p /repo && mount --bind "/newroot$REPO" /repo ;; esac
for d in tmp run; do mount -t tmpfs -o mode=1777 tmpfs /newroot/$d; done
if [ -d /repo ]; then mkdir -p "/newroot$REPO" && mount --move /repo "/newroot$REPO"; fi
mount --move /dev /newroot/dev; mount --move /proc /newroot/proc; mount --move /sys /newroot/sys
exec switch_root /newroot /bin/bash "$REPO/kernel-modules/test/daemon-guest.sh" "$REPO"
