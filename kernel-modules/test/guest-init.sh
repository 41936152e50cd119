#!/bin/sh
# /init of the mm_template test guest (kernel-modules/test/run-guest-tests.sh puts it there).
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t debugfs debugfs /sys/kernel/debug; mount -t tmpfs tmpfs /tmp
# cgroup v2 with the memory controller: template pages are charged to their creator's cgroup
mount -t cgroup2 none /sys/fs/cgroup && echo +memory > /sys/fs/cgroup/cgroup.subtree_control
. /t/config
echo "GUEST up $(uname -r) $(nproc) cpus $(awk '/MemTotal/{print $2}' /proc/meminfo) kB"
if insmod /t/mm_template.ko; then echo "PASS insmod"; else echo "FAIL insmod"; fi
mkdir -p /run && mount -t tmpfs tmpfs /run && mkdir -p /run/mm_template && mount -t mm_template none /run/mm_template || echo "FAIL mount_mm_template_fs"
/t/mmt_test
# unloading is refused while a mapping exists (the fd is closed: the VMA alone pins the module)
/t/mmt_test hold /tmp/held & H=$!
i=0; while [ ! -f /tmp/held ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if rmmod mm_template 2>/dev/null; then echo "FAIL rmmod_refused_while_mapped"; else echo "PASS rmmod_refused_while_mapped"; fi
kill $H; wait $H 2>/dev/null
if [ "$NODE" = 1 ]; then /t/node-tests.sh; fi
sed 's/^/STAT /' /sys/kernel/debug/mm_template/stats
# the mounted filesystem pins the module too
if rmmod mm_template 2>/dev/null; then echo "FAIL rmmod_refused_while_mounted"; else echo "PASS rmmod_refused_while_mounted"; fi
umount /run/mm_template
if rmmod mm_template; then echo "PASS rmmod_after_unmap"; else echo "FAIL rmmod_after_unmap"; fi
if dmesg | grep -E 'BUG:|WARNING:|Oops|general protection|Call Trace'; then echo "FAIL dmesg_clean"; else echo "PASS dmesg_clean"; fi
echo "GUEST done"
poweroff -f
