#!/usr/bin/env bash
# Checks the systemd integration without a running systemd:
#  1. `systemd-analyze verify` on tollgate.service and tollgate-firstboot.service (copies whose
#     /usr/bin/tollgate points at TOLLGATE_BIN, or at a stub, because verify insists that
#     ExecStart= binaries exist);
#  2. `systemd-analyze security --offline=yes`: tollgate.service's overall exposure must be
#     <= MAX_EXPOSURE (default 2.0); the score is printed for the README (operations section);
#  3. sysusers.d and tmpfiles.d snippets applied to a scratch root: user, groups, modes.
# Usage: scripts/check-systemd.sh            (needs systemd-analyze, systemd-sysusers, systemd-tmpfiles)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() { echo "check-systemd: FAIL: $*" >&2; exit 1; }

bin=${TOLLGATE_BIN:-}
if [ -z "$bin" ]; then
    bin="$work/tollgate"
    printf '#!/bin/sh\nexit 0\n' >"$bin"
    chmod +x "$bin"
fi
fixperms="$ROOT/systemd/fix-permissions.sh"

for unit in systemd/tollgate.service image/tollgate-firstboot.service; do
    name=$(basename "$unit")
    sed -e "s|/usr/bin/tollgate|$bin|g" -e "s|/usr/lib/tollgate/fix-permissions|$fixperms|g" \
        "$ROOT/$unit" >"$work/$name"
    if ! out=$(systemd-analyze verify --man=no "$work/$name" 2>&1) || [ -n "$out" ]; then
        echo "$out" >&2
        fail "systemd-analyze verify $unit"
    fi
    echo "ok: systemd-analyze verify $unit"
done

score_of() {
    local unit=$1 out
    out=$(systemd-analyze security --offline=yes --no-pager "$work/$unit" 2>&1) || true
    printf '%s\n' "$out" >"$work/$unit.security"
    sed -n "s/.*Overall exposure level for $unit: \([0-9.]*\).*/\1/p" <<<"$out"
}

score=$(score_of tollgate.service)
[ -n "$score" ] || { cat "$work/tollgate.service.security" >&2; fail "no exposure score from systemd-analyze security"; }
firstboot_score=$(score_of tollgate-firstboot.service)
echo "exposure: tollgate.service $score (limit $MAX_EXPOSURE), tollgate-firstboot.service ${firstboot_score:-?}"
if ! awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
    grep '✗' "$work/tollgate.service.security" >&2 || true
    fail "tollgate.service exposure $score > $MAX_EXPOSURE"
fi
echo "ok: tollgate.service exposure $score <= $MAX_EXPOSURE"

# sysusers.d + tmpfiles.d in a scratch root.
sr="$work/root"
mkdir -p "$sr/etc" "$sr/var/lib"
systemd-sysusers --root="$sr" "$ROOT/systemd/tollgate.sysusers"
grep -q '^tollgate:x:[0-9]*:[0-9]*:[^:]*:/var/lib/tollgate:/usr/sbin/nologin$' "$sr/etc/passwd" \
    || fail "sysusers did not create the tollgate user as expected: $(cat "$sr/etc/passwd")"
grep -q '^gpio:' "$sr/etc/group" || fail "sysusers did not create the gpio group"
uid=$(awk -F: '$1 == "tollgate" { print $3 }' "$sr/etc/passwd")
gid=$(awk -F: '$1 == "tollgate" { print $3 }' "$sr/etc/group")
[ "$uid" -lt 1000 ] || fail "tollgate uid $uid is not a system uid"
echo "ok: sysusers creates tollgate (uid $uid) and gpio"

systemd-tmpfiles --root="$sr" --create "$ROOT/systemd/tollgate.tmpfiles"
expect_mode() {
    local path=$1 want=$2 got
    got=$(stat -c '%a %u %g' "$sr$path")
    [ "$got" = "$want" ] || fail "$path is '$got' (mode uid gid), expected '$want'"
    echo "ok: $path $want"
}
expect_mode /etc/tollgate "750 0 $gid"
expect_mode /var/lib/tollgate "700 $uid $gid"

# The package's fix-permissions script against a PKI layout like `tollgate pki` writes.
pki="$work/etc/pki"
mkdir -p "$pki/devices"
touch "$work/etc/tollgate.toml" "$pki/ca.crt" "$pki/ca.key" "$pki/server.crt" "$pki/server.key" "$pki/devices/d1.key"
chmod 0600 "$pki"/*.key "$pki/devices/d1.key"
chmod 0700 "$pki" "$pki/devices"
TOLLGATE_ETC="$work/etc" TOLLGATE_USER="$(id -un)" TOLLGATE_GROUP="$(id -gn)" sh "$fixperms"
# tollgate refuses private keys that group or others can read: the service user owns its key.
[ "$(stat -c %a "$pki/server.key")" = 600 ] || fail "fix-permissions: server.key not 0600"
[ "$(stat -c %a "$pki/server.crt")" = 640 ] || fail "fix-permissions: server.crt not 0640"
[ "$(stat -c %a "$pki")" = 750 ] || fail "fix-permissions: pki dir not 0750"
[ "$(stat -c %a "$pki/ca.key")" = 600 ] || fail "fix-permissions: ca.key must stay 0600"
[ "$(stat -c %a "$pki/devices")" = 700 ] || fail "fix-permissions: devices/ must stay 0700"
[ "$(stat -c %a "$work/etc/tollgate.toml")" = 640 ] || fail "fix-permissions: config not 0640"
echo "ok: fix-permissions: config and certificates group-readable, server key 0600 for the service user, CA and device keys root-only"
echo "check-systemd: all checks passed (exposure $score)"
