#!/bin/bash
# PID 1 of the daemon guest after daemon-init.sh switched to the host's root (read-only 9p):
# what a host would have (cgroup2 with memory+pids, /dev/shm, /dev/pts, loopback), then the
# checks in daemon-guest.mjs, then power off. Everything it writes is on tmpfs.
REPO=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C
mount -t cgroup2 none /sys/fs/cgroup && echo "+memory +pids" > /sys/fs/cgroup/cgroup.subtree_control || echo "FAIL daemon_guest_cgroup2"
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
