#!/usr/bin/env bash
# Inspects a tollgate .deb and installs it into a scratch root with its maintainer scripts.
#
# Usage: scripts/check-deb.sh PATH.deb [EXPECTED_ARCH]
#   - metadata (dpkg-deb -I): package, version, architecture, libc6 dependency, conffiles;
#   - contents (dpkg-deb -c): every file with its mode, nothing else;
#   - for the host architecture: dpkg --root=SCRATCH --force-script-chrootless -i, which runs
#     postinst with DPKG_ROOT (user, tmpfiles, ownership, enable symlink), then an upgrade that must
#     keep an edited config and an existing key, then remove and purge.
set -euo pipefail

deb=${1:?usage: check-deb.sh PATH.deb [EXPECTED_ARCH]}
want_arch=${2:-}
deb=$(realpath "$deb")
fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = tollgate ] || fail "Package is '$(field Package)'"
arch=$(field Architecture)
[ -z "$want_arch" ] || [ "$arch" = "$want_arch" ] || fail "Architecture $arch, expected $want_arch"
[ -n "$(field Version)" ] || fail "no Version"
field Depends | grep -q 'libc6 (>= 2\.[0-9]*)' || fail "Depends lacks a libc6 version: $(field Depends)"
field Description | grep -q 'MQTT' || fail "Description missing"
ok "metadata: tollgate $(field Version) $arch, Depends: $(field Depends)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -e "$deb" "$work/control"
[ "$(cat "$work/control/conffiles")" = /etc/tollgate/tollgate.toml ] || fail "conffiles: $(cat "$work/control/conffiles")"
for script in postinst prerm postrm; do
    [ -x "$work/control/$script" ] || fail "$script missing or not executable"
done
ok "conffiles and maintainer scripts"

# Contents: "mode path" for every regular file and directory we ship.
dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }' >"$work/contents"
expect() {
    grep -qxF -e "$1 root/root $2" "$work/contents" || fail "contents: expected '$1 root/root $2' in:
$(cat "$work/contents")"
}
expect -rwxr-xr-x ./usr/bin/tollgate
expect -rw-r--r-- ./lib/systemd/system/tollgate.service
expect -rw-r--r-- ./lib/systemd/system/tollgate-firstboot.service
expect -rw-r--r-- ./usr/lib/sysusers.d/tollgate.conf
expect -rw-r--r-- ./usr/lib/tmpfiles.d/tollgate.conf
expect -rwxr-xr-x ./usr/lib/tollgate/fix-permissions
expect drwxr-x--- ./etc/tollgate/
expect -rw-r----- ./etc/tollgate/tollgate.toml
expect -rw-r--r-- ./usr/share/doc/tollgate/copyright
expect -rw-r--r-- ./usr/share/doc/tollgate/examples/appliance.toml
expect -rw-r--r-- ./usr/share/doc/tollgate/examples/appliance.acl
unexpected=$(grep -v -e ' \./$' -e ' \./etc/$' -e ' \./etc/tollgate/' -e ' \./lib/$' -e ' \./lib/systemd/' \
    -e ' \./usr/$' -e ' \./usr/bin/' -e ' \./usr/lib/' -e ' \./usr/share/' "$work/contents" || true)
[ -z "$unexpected" ] || fail "unexpected paths in package: $unexpected"
# No keys, certificates or password files may ever ship in the package.
if grep -E '\.(key|pem|crt)$|passwd$|/pki/' "$work/contents"; then fail "secrets in package"; fi
ok "contents ($(wc -l <"$work/contents") entries)"

host_arch=$(dpkg --print-architecture)
if [ "$arch" != "$host_arch" ]; then
    echo "check-deb: $arch package: scratch-root install skipped (host is $host_arch)"
    exit 0
fi

root="$work/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\ndialout:x:20:\n' >"$root/etc/group"
dpkg_root() {
    env -u DPKG_ROOT dpkg --root="$root" --force-not-root --force-script-chrootless \
        --force-depends --log=/dev/null "$@" </dev/null
}

dpkg_root -i "$deb" >"$work/install.log" 2>&1 || { cat "$work/install.log" >&2; fail "dpkg -i into scratch root"; }
uid=$(awk -F: '$1 == "tollgate" { print $3 }' "$root/etc/passwd")
gid=$(awk -F: '$1 == "tollgate" { print $3 }' "$root/etc/group")
{ [ -n "$uid" ] && [ -n "$gid" ]; } || fail "postinst did not create user/group tollgate"
grep -q '^gpio:' "$root/etc/group" || fail "postinst did not create group gpio"
stat_is() {
    local got
    got=$(stat -c '%a %u %g' "$root$1")
    [ "$got" = "$2" ] || fail "$1 is '$got' (mode uid gid), expected '$2'"
}
stat_is /etc/tollgate "750 0 $gid"
stat_is /etc/tollgate/tollgate.toml "640 0 $gid"
stat_is /var/lib/tollgate "700 $uid $uid"
stat_is /usr/bin/tollgate "755 0 0"
[ -L "$root/etc/systemd/system/multi-user.target.wants/tollgate.service" ] || fail "tollgate.service not enabled"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/tollgate-firstboot.service" ] \
    || fail "the package must not enable tollgate-firstboot.service (the image does)"
ok "installed into scratch root: user $uid, /etc/tollgate root:tollgate 0750, state 0700, service enabled"

# Upgrade (reinstall) must keep an edited config and never touch keys.
echo '# edited by the operator' >>"$root/etc/tollgate/tollgate.toml"
mkdir -p "$root/etc/tollgate/pki"
echo 'SECRET' >"$root/etc/tollgate/pki/ca.key"
chmod 0600 "$root/etc/tollgate/pki/ca.key"
before=$(sha256sum "$root/etc/tollgate/tollgate.toml" "$root/etc/tollgate/pki/ca.key")
dpkg_root -i "$deb" >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log" >&2; fail "reinstall"; }
[ "$before" = "$(sha256sum "$root/etc/tollgate/tollgate.toml" "$root/etc/tollgate/pki/ca.key")" ] \
    || fail "upgrade changed the edited config or a key"
stat_is /etc/tollgate/pki/ca.key "600 0 0"
ok "upgrade keeps the edited config and the CA key (content and mode)"

dpkg_root -r tollgate >"$work/remove.log" 2>&1 || { cat "$work/remove.log" >&2; fail "remove"; }
[ ! -e "$root/usr/bin/tollgate" ] || fail "binary left after remove"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/tollgate.service" ] || fail "still enabled after remove"
[ -f "$root/etc/tollgate/tollgate.toml" ] || fail "remove deleted the conffile (only purge may)"
dpkg_root -P tollgate >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "purge"; }
[ ! -e "$root/var/lib/tollgate" ] || fail "purge left /var/lib/tollgate"
[ ! -e "$root/etc/tollgate/tollgate.toml" ] || fail "purge left the conffile"
[ -f "$root/etc/tollgate/pki/ca.key" ] || fail "purge deleted the CA key"
ok "remove disables and keeps config; purge deletes state and conffile but keeps keys"
echo "check-deb: all checks passed for $(basename "$deb")"
