#!/usr/bin/env bash
# Every appliance check in one command, for .ci/run (from a fresh clone, as root on Debian 12):
#   1. Debian packages it needs, installed when missing (apt-get, root only);
#   2. shellcheck on every shell script we ship or run;
#   3. systemd: unit verify, exposure score <= 2.0, sysusers/tmpfiles (check-systemd.sh);
#   4. image: pi-gen stage dry run and appliance config check (check-image.sh);
#   5. amd64 .deb: build, inspect, install/upgrade/remove/purge in a scratch root (check-deb.sh);
#   6. aarch64: release build + stripped size (cross-build.sh), arm64 .deb inspected,
#      and the documented test subset under qemu-aarch64 (cross-test.sh); armv7: cargo check
#      (32-bit usize), or a full release build + armhf .deb with APPLIANCE_ARMV7=1.
# Knobs: APPLIANCE_SKIP_CROSS=1 skips step 6; APPLIANCE_ARMV7=1 also builds armv7 + armhf .deb;
#        APPLIANCE_RELEASE_DEB=1 packages a native release build in step 5 instead of the
#        (stripped) debug binary the test suite already built, which saves an LTO build.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
out=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$out"
t0=$(date +%s)
summary=""
step() {
    local name=$1 start
    shift
    start=$(date +%s)
    echo "=== appliance: $name"
    "$@"
    summary="$summary$(printf '%-46s %4ss' "$name" $(( $(date +%s) - start )))"$'\n'
}

# 1. Debian packages ------------------------------------------------------------------------
need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("${@:2}"); }
want systemd-analyze systemd
want systemd-sysusers systemd
want shellcheck shellcheck
want dpkg-deb dpkg
want readelf binutils
want openssl openssl
want unshare util-linux
if [ "${APPLIANCE_SKIP_CROSS:-0}" != 1 ]; then
    want qemu-aarch64 qemu-user
    want aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    want arm-linux-gnueabihf-gcc gcc-arm-linux-gnueabihf libc6-dev-armhf-cross   # ring compiles C even for cargo check
fi
install_packages() {
    if [ "$(id -u)" != 0 ]; then
        echo "ci-appliance: missing packages ${need[*]}; run as root or install them" >&2
        return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
}
if [ "${#need[@]}" -gt 0 ]; then
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    step "apt-get install ${need[*]}" install_packages
fi

# 2. shellcheck -----------------------------------------------------------------------------
run_shellcheck() {
    local files
    mapfile -t files < <(find scripts systemd image -type f \( -name '*.sh' -o -path 'scripts/deb/*' \) | sort)
    shellcheck "${files[@]}"
    echo "ok: shellcheck ${#files[@]} scripts"
}
step "shellcheck" run_shellcheck

# 3. + 4. systemd and image -----------------------------------------------------------------
step "systemd verify + security" scripts/check-systemd.sh
native_bin() {
    if [ "${APPLIANCE_RELEASE_DEB:-0}" = 1 ]; then
        cargo build --release --locked --bin tollgate
        cp "$out/release/tollgate" "$out/appliance-tollgate"
    else
        cargo build --locked --bin tollgate
        strip -o "$out/appliance-tollgate" "$out/debug/tollgate"
    fi
}
step "native tollgate binary" native_bin
step "image stage" env TOLLGATE_BIN="$out/appliance-tollgate" scripts/check-image.sh

# 5. amd64 package --------------------------------------------------------------------------
deb_amd64() {
    local deb
    deb=$(scripts/package-deb.sh --binary "$out/appliance-tollgate" | tail -n1)
    scripts/check-deb.sh "$deb" "$(dpkg --print-architecture)"
}
step "deb (host arch): build, inspect, scratch install" deb_amd64

# 6. cross ----------------------------------------------------------------------------------
cross_target() {
    local target=$1 arch=$2 deb
    scripts/cross-build.sh "$target" | tee -a "$out/appliance-sizes.txt"
    deb=$(scripts/package-deb.sh --target "$target" --binary "$out/$target/release/tollgate" | tail -n1)
    scripts/check-deb.sh "$deb" "$arch"
}
if [ "${APPLIANCE_SKIP_CROSS:-0}" != 1 ]; then
    : >"$out/appliance-sizes.txt"
    step "aarch64 release build + arm64 deb" cross_target aarch64-unknown-linux-gnu arm64
    step "aarch64 tests under qemu" scripts/cross-test.sh aarch64-unknown-linux-gnu
    if [ "${APPLIANCE_ARMV7:-0}" = 1 ]; then
        step "armv7 release build + armhf deb" cross_target armv7-unknown-linux-gnueabihf armhf
    else
        # 32-bit: usize is 32 bits there (e.g. `1usize << 36` does not compile). Type-checking
        # catches that for a fraction of a release build's time.
        armv7_check() {
            rustup target list --installed | grep -qx armv7-unknown-linux-gnueabihf \
                || rustup target add armv7-unknown-linux-gnueabihf
            cargo check --locked --workspace --features tollgate/gpio --target armv7-unknown-linux-gnueabihf --lib --bins
        }
        step "armv7 cargo check (32-bit)" armv7_check
    fi
fi

echo "=== appliance: summary"
printf '%s' "$summary"
[ ! -s "$out/appliance-sizes.txt" ] || cat "$out/appliance-sizes.txt"
echo "ci-appliance: all checks passed in $(( $(date +%s) - t0 )) s"
