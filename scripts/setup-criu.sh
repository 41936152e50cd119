#!/usr/bin/env bash
# Install a working CRIU (4.x, from Debian trixie) into a private prefix, as root. Idempotent.
#
# Why: Debian 12's criu 3.17 fails `criu check` on this kernel (it does not know the
# `[vvar_vclock]` vDSO mapping). criu 4.x from trixie works, but needs trixie's libc. We
# install NOTHING system-wide: criu, its shared-library dependencies and trixie's libc6 are
# fetched with a SEPARATE apt configuration (own sources.list + state/cache dirs) and unpacked
# with `dpkg-deb -x` into $PREFIX. The wrapper $PREFIX/criu runs criu through trixie's own
# dynamic loader with an explicit --library-path, so the machine's libc and /etc/apt are
# never touched.
#
#   sudo scripts/setup-criu.sh            # install (quick when already done: stamp file)
#   sudo scripts/setup-criu.sh --force    # re-download and re-unpack
#   TRENV_CRIU_PREFIX=/somewhere ...      # other prefix (default /opt/trenv/criu)
#
# Afterwards: /opt/trenv/criu/criu check   -> "Looks good."
set -euo pipefail

PREFIX=${TRENV_CRIU_PREFIX:-/opt/trenv/criu}
SUITE=${TRENV_CRIU_SUITE:-trixie}
WORK="$PREFIX.apt"            # private apt state/cache/sources (not under /etc, /var/lib/apt)
STAMP="$PREFIX/.trenv-criu-stamp"
STAMP_WANT="v1 suite=$SUITE"

log() { printf '\033[1msetup-criu:\033[0m %s\n' "$*"; }
die() { printf '\033[1;31msetup-criu: error:\033[0m %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (CRIU itself needs root to dump/restore); run it with sudo"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported (found $(uname -m))"
for t in apt-get apt-cache dpkg-deb; do command -v "$t" >/dev/null || die "missing '$t' (this script expects Debian)"; done

FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

if [ $FORCE = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_WANT" ] && [ -x "$PREFIX/criu" ]; then
  if out=$("$PREFIX/criu" check 2>&1) && grep -q "Looks good" <<<"$out"; then
    log "already installed: $("$PREFIX/criu" --version | head -1) at $PREFIX/criu ($(tail -1 <<<"$out"))"
    exit 0
  fi
  log "stamp present but 'criu check' fails; reinstalling"
fi

# ---- the Debian mirror host this machine already uses (never the security/other repos)
mirror=""
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -r "$f" ] || continue
  # one-line format: deb [opts] URI suite comp...; deb822: URIs: ...
  cand=$(grep -hoE '^[[:space:]]*(deb[[:space:]]+(\[[^]]*\][[:space:]]+)?|URIs:[[:space:]]*)[a-z]+://[^[:space:]]+' "$f" 2>/dev/null |
    grep -oE '[a-z]+://[^[:space:]]+' | sed 's:/*$::' | grep -E '/debian$' | head -1 || true)
  if [ -n "$cand" ]; then mirror=$cand; break; fi
done
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
log "using mirror $mirror (suite $SUITE) with a private apt configuration in $WORK"

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$KEYRING" ] || die "missing $KEYRING (package debian-archive-keyring) to verify $SUITE"

# ---- private apt configuration: nothing under /etc/apt or /var/lib/apt is read or written
mkdir -p "$WORK"/{etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,etc/trusted.gpg.d,state/lists/partial,cache/archives/partial,debs,log}
echo "deb [signed-by=$KEYRING] $mirror $SUITE main" > "$WORK/etc/sources.list"
: > "$WORK/state/status" # empty dpkg status: resolve dependencies from scratch
APT_OPTS=(
  -o "Dir::Etc=$WORK/etc"
  -o "Dir::Etc::sourcelist=$WORK/etc/sources.list"
  -o "Dir::Etc::sourceparts=$WORK/etc/sources.list.d"
  -o "Dir::Etc::parts=$WORK/etc/apt.conf.d"
  -o "Dir::Etc::preferencesparts=$WORK/etc/preferences.d"
  -o "Dir::Etc::trustedparts=$WORK/etc/trusted.gpg.d"
  -o "Dir::State=$WORK/state"
  -o "Dir::State::status=$WORK/state/status"
  -o "Dir::Cache=$WORK/cache"
  -o "Dir::Log=$WORK/log"
  -o "APT::Architecture=amd64"
  -o "APT::Architectures::=amd64"
  -o "Debug::NoLocking=1"
  -o "APT::Get::AllowUnauthenticated=false"
)
touch "$WORK/etc/apt.conf"
export APT_CONFIG="$WORK/etc/apt.conf" # ignore the machine's apt.conf too
apt_() { "$1" "${APT_OPTS[@]}" "${@:2}"; }

log "apt-get update ($SUITE index only, private state)"
apt_ apt-get update -qq >"$WORK/log/update.log" 2>&1 || { tail -20 "$WORK/log/update.log" >&2; die "apt-get update of $SUITE failed (see $WORK/log/update.log)"; }

ver=$(apt_ apt-cache policy criu | awk '/Candidate:/ {print $2}')
case "$ver" in
  4.*) log "criu candidate in $SUITE: $ver" ;;
  ''|'(none)') die "no criu package found in $SUITE at $mirror" ;;
  *) die "criu in $SUITE is $ver, need 4.x" ;;
esac

# ---- dependency closure: criu + every library package it pulls in (recursively), plus libc6.
# Non-library dependencies (python3 for crit, iproute2 ...) are not needed by the criu binary.
log "resolving dependencies"
pkgs=$(apt_ apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances --no-pre-depends criu 2>/dev/null |
  grep -vE '^[[:space:]]' | grep -vE '^<' | sort -u)
want=(criu libc6)
for p in $pkgs; do
  case "$p" in
    criu|libc6) ;;
    lib*) case "$p" in libpython*|libperl*|*-dev|*-bin|*-common|*-data) ;; *) want+=("$p") ;; esac ;;
  esac
done
log "packages: ${want[*]}"

log "downloading ${#want[@]} packages"
rm -f "$WORK"/debs/*.deb
(cd "$WORK/debs" && apt_ apt-get download -qq "${want[@]}" >"$WORK/log/download.log" 2>&1) ||
  { tail -20 "$WORK/log/download.log" >&2; die "apt-get download failed (see $WORK/log/download.log)"; }

# ---- unpack into a fresh prefix (old one replaced only when the new one is complete)
NEW="$PREFIX.new"
rm -rf "$NEW"; mkdir -p "$NEW"
for d in "$WORK"/debs/*.deb; do dpkg-deb -x "$d" "$NEW" || die "dpkg-deb -x $d failed"; done

# trixie's loader: usrmerged, /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 (lib64/ is a symlink
# to an absolute path, which inside a prefix would point at the HOST's loader: do not use it).
LD_REL=""
for c in usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 usr/lib64/ld-linux-x86-64.so.2; do
  [ -e "$NEW/$c" ] || continue
  # a regular file, or a RELATIVE link (an absolute one would resolve to the host's loader)
  if [ ! -L "$NEW/$c" ] || [ "$(readlink "$NEW/$c" | cut -c1)" != / ]; then LD_REL=$c; break; fi
done
[ -n "$LD_REL" ] || die "trixie's dynamic loader not found in the unpacked libc6"
[ -x "$NEW/usr/sbin/criu" ] || die "criu binary missing after unpack ($NEW/usr/sbin/criu)"
LIBPATH_REL="usr/lib/x86_64-linux-gnu:lib/x86_64-linux-gnu"

cat > "$NEW/criu" <<EOF
#!/bin/sh
# Runs criu $ver from Debian $SUITE with its own libc (made by scripts/setup-criu.sh).
P=\$(dirname "\$(readlink -f "\$0")")
exec "\$P/$LD_REL" --library-path "\$P/usr/lib/x86_64-linux-gnu:\$P/lib/x86_64-linux-gnu" "\$P/usr/sbin/criu" "\$@"
EOF
chmod 755 "$NEW/criu"

# every shared library must resolve inside the prefix
missing=$("$NEW/$LD_REL" --library-path "$NEW/usr/lib/x86_64-linux-gnu:$NEW/lib/x86_64-linux-gnu" --list "$NEW/usr/sbin/criu" 2>&1 | grep -i 'not found' || true)
[ -z "$missing" ] || die "criu has unresolved libraries:\n$missing"
outside=$("$NEW/$LD_REL" --library-path "$NEW/usr/lib/x86_64-linux-gnu:$NEW/lib/x86_64-linux-gnu" --list "$NEW/usr/sbin/criu" 2>&1 | grep '=>' | grep -v "$NEW" || true)
[ -z "$outside" ] || die "criu would load libraries from outside the prefix:\n$outside"

rm -rf "$PREFIX.old"
[ -e "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
mv "$NEW" "$PREFIX"
# dirs, the wrapper and LD path are relative to the wrapper's location, so the rename is fine
rm -rf "$PREFIX.old"

log "checking: $PREFIX/criu check"
out=$("$PREFIX/criu" check 2>&1) || true
echo "$out" | tail -5
grep -q "Looks good" <<<"$out" || die "'criu check' did not say 'Looks good' (output above)"
echo "$STAMP_WANT" > "$STAMP"
log "ready: $("$PREFIX/criu" --version | head -1) -> $PREFIX/criu"
