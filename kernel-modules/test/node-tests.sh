#!/bin/sh
# Node instances through the module (run by guest-init.sh when the initramfs has node and CRIU).
. /t/config
mkdir -p /tmp/log
for m in $(cat /t/mods.order); do insmod /t/mods/$m 2>/dev/null; done
ifconfig lo 127.0.0.1 up
/opt/trenv/criu/criu check -v4 -o /tmp/log/check.log >/dev/null 2>&1 || { echo "INFO criu check failed:"; grep -E "Error|Warn|fail" /tmp/log/check.log | tail -8 | sed "s/^/INFO   /"; }
cd /t && MMT_DIAG=1 /usr/bin/node /t/kmod-guest.mjs test || echo "FAIL node_tests_exit: kmod-guest.mjs test exited $?"
if [ "$BENCH" = 1 ]; then /usr/bin/node /t/kmod-guest.mjs bench || echo "FAIL node_bench_exit: kmod-guest.mjs bench exited $?"; fi
exit 0
