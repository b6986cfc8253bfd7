#!/usr/bin/env bash
# Checks the pi-gen stage in image/ without building an image:
#  1. shellcheck on every stage script (pi-gen runs them with bash -e);
#  2. a dry run of 00-install/{00,01}-run.sh against a scratch ROOTFS_DIR with a recording
#     on_chroot: the right .deb is picked for ARCH, a missing .deb fails, files land with the
#     intended modes and the chroot commands install the package and enable both units;
#  3. if TOLLGATE_BIN (default target/debug/tollgate) has a `check` subcommand, the appliance
#     config and ACL are validated with `tollgate check` against a throw-away PKI, made by the
#     first-boot unit's own ExecStart= commands when the binary has `tollgate pki`, else by openssl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAGE="$ROOT/image/stage-tollgate"
fail() { echo "check-image: FAIL: $*" >&2; exit 1; }

mapfile -t scripts < <(find "$STAGE" -name '*.sh' | sort)
[ "${#scripts[@]}" -ge 3 ] || fail "stage scripts missing"
shellcheck --shell=bash "${scripts[@]}"
echo "ok: shellcheck ${#scripts[@]} stage scripts"
for s in "${scripts[@]}"; do [ -x "$s" ] || fail "$s is not executable (pi-gen runs it directly)"; done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$STAGE" "$work/stage"
sub="$work/stage/00-install"
export ROOTFS_DIR="$work/rootfs"
mkdir -p "$ROOTFS_DIR/tmp" "$ROOTFS_DIR/etc"
export CHROOT_LOG="$work/chroot.log"
on_chroot() { cat >>"$CHROOT_LOG"; }
export -f on_chroot

# Without a package for the image's architecture the stage must stop.
if (cd "$sub" && ARCH=arm64 ./00-run.sh) >"$work/nodeb.log" 2>&1; then
    fail "00-run.sh succeeded without a .deb"
fi
grep -q 'expected exactly one' "$work/nodeb.log" || fail "unhelpful message without a .deb: $(cat "$work/nodeb.log")"

echo arm64 >"$sub/files/tollgate_0.1.0_arm64.deb"
echo armhf >"$sub/files/tollgate_0.1.0_armhf.deb"
(cd "$sub" && ARCH=arm64 ./00-run.sh && ./01-run.sh) >"$work/run.log" 2>&1 || { cat "$work/run.log" >&2; fail "stage dry run"; }
[ "$(cat "$ROOTFS_DIR/tmp/tollgate.deb")" = arm64 ] || fail "00-run.sh copied the wrong architecture's package"
grep -q 'apt-get install -y --no-install-recommends /tmp/tollgate.deb' "$CHROOT_LOG" || fail "package not installed in chroot"
grep -q 'systemctl enable tollgate-firstboot.service tollgate.service' "$CHROOT_LOG" || fail "units not enabled"
grep -q 'chown root:tollgate /etc/tollgate ' "$CHROOT_LOG" || fail "/etc/tollgate not given to group tollgate"
[ "$(stat -c %a "$ROOTFS_DIR/etc/tollgate")" = 750 ] || fail "/etc/tollgate not 0750"
[ "$(stat -c %a "$ROOTFS_DIR/etc/tollgate/tollgate.toml")" = 640 ] || fail "tollgate.toml not 0640"
[ "$(stat -c %a "$ROOTFS_DIR/etc/tollgate/acl")" = 640 ] || fail "acl not 0640"
echo "ok: stage dry run (package per ARCH, /etc/tollgate 0750, units enabled)"

bin=${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/tollgate}
has_subcommand() { "$bin" "$1" --help 2>&1 | grep -q -- "$2"; }
if [ -x "$bin" ] && has_subcommand check '--config'; then
    pki="$work/pki"
    if has_subcommand pki 'init'; then
        # Run the first-boot unit's own ExecStart= lines, as systemd would (%H = host name),
        # against a scratch /etc/tollgate.
        etc="$work/etc"
        mkdir -p "$etc"
        user=$(id -un)
        group=$(id -gn)
        while IFS= read -r line; do
            line=${line//%H/gateway}
            line=${line//\/usr\/lib\/tollgate\/fix-permissions/env TOLLGATE_ETC=$etc TOLLGATE_USER=$user TOLLGATE_GROUP=$group sh $ROOT/systemd/fix-permissions.sh}
            line=${line//\/usr\/bin\/tollgate/env -u TOLLGATE_BIN $bin}
            line=${line//\/etc\/tollgate/$etc}
            eval "set -- $line"
            "$@" >/dev/null || fail "first-boot command failed: $line"
        done < <(sed -n 's/^ExecStart=//p' "$ROOT/image/tollgate-firstboot.service")
        for f in ca.crt ca.key server.crt server.key; do
            [ -s "$etc/pki/$f" ] || fail "first boot did not create pki/$f"
        done
        [ "$(stat -c '%a %U' "$etc/pki/server.key")" = "600 $user" ] || fail "first boot: server.key must be 0600 and owned by the service user"
        [ "$(stat -c %a "$etc/pki/server.crt")" = 640 ] || fail "first boot: server.crt must be group-readable"
        [ "$(stat -c %a "$etc/pki/ca.key")" = 600 ] || fail "first boot left ca.key readable beyond root"
        echo "ok: tollgate-firstboot.service commands create the PKI with the intended modes"
        pki="$etc/pki"
    else
        # Binary without `tollgate pki` (e.g. before the branches are merged): same layout via openssl.
        mkdir -p "$pki"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=ca \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
            -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=gateway.local \
            -keyout "$pki/server.key" -out "$work/server.csr" 2>/dev/null
        printf 'subjectAltName=DNS:gateway.local\nextendedKeyUsage=serverAuth\n' >"$work/ext"
        openssl x509 -req -in "$work/server.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
            -days 2 -extfile "$work/ext" -out "$pki/server.crt" 2>/dev/null
    fi
    cp "$STAGE/00-install/files/acl" "$work/acl"
    sed -e "s|/etc/tollgate/pki|$pki|g" -e "s|/etc/tollgate/acl|$work/acl|g" \
        -e "s|/var/lib/tollgate|$work/state|g" "$STAGE/00-install/files/tollgate.toml" >"$work/tollgate.toml"
    mkdir -p "$work/state"
    # TOLLGATE_* variables are configuration overrides for tollgate: do not leak ours.
    env -u TOLLGATE_BIN "$bin" check -c "$work/tollgate.toml" || fail "tollgate check rejects the appliance config"
    echo "ok: tollgate check accepts the appliance config and ACL"
else
    echo "check-image: SKIPPED config validation: $bin has no check subcommand"
fi
echo "check-image: all checks passed"
