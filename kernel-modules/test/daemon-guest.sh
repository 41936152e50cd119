#!/bin/bash
# PID 1 of the daemon guest after daemon-init.sh switched to the host's root (read-only 9p):
# what a host would have (cgroup v1 hierarchies, /dev/shm, /dev/pts, loopback), then the
# checks in daemon-guest.mjs, then power off. Everything it writes is on tmpfs.
REPO=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C
# cgroup v1 hierarchies, as on this host (the daemon would take v2 with memory+pids if it found it)
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
for c in memory pids cpu cpuacct freezer devices; do mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c none /sys/fs/cgroup/$c || echo "FAIL daemon_guest_cgroup_v1: $c"; done
mkdir -p /dev/shm /dev/pts && mount -t tmpfs -o mode=1777 tmpfs /dev/shm && mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
# what udev would make: bash's process substitution needs /dev/fd
ln -sfn /proc/self/fd /dev/fd; ln -sf /proc/self/fd/0 /dev/stdin; ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr
ip link set lo up 2>/dev/null || busybox ifconfig lo 127.0.0.1 up
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
node "$REPO/kernel-modules/test/daemon-guest.mjs" "$REPO" || echo "FAIL daemon_guest_driver: exited $?"
if dmesg | grep -E 'BUG:|WARNING:|Oops|general protection|Call Trace'; then echo "FAIL dmesg_clean"; else echo "PASS dmesg_clean"; fi
echo "GUEST done"
sync
/bin/busybox poweroff -f
