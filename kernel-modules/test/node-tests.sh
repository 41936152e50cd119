#!/bin/sh
# Node instances through the module (run by guest-init.sh when the initramfs has node and CRIU).
. /t/config
mkdir -p /run /tmp/log; mount -t tmpfs tmpfs /run
for m in $(cat /t/mods.order); do insmod /t/mods/$m 2>/dev/null; done
ifconfig lo 127.0.0.1 up
/opt/trenv/criu/criu check -v4 -o /tmp/log/check.log >/dev/null 2>&1 || { echo "INFO criu check failed:"; grep -E "Error|Warn|fail" /tmp/log/check.log | tail -8 | sed "s/^/INFO   /"; }
cd /t && MMT_DIAG=1 /usr/bin/node /t/kmod-guest.mjs test
[ "$BENCH" = 1 ] && /usr/bin/node /t/kmod-guest.mjs bench
exit 0
