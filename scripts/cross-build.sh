#!/usr/bin/env bash
# Release builds for the Raspberry Pi without Docker, with Debian's cross gcc as linker
# (.cargo/config.toml), and a size report of the stripped binaries.
#
# Usage: scripts/cross-build.sh [TRIPLE...]
#   default triples: aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
#   SIZE_LIMIT_MB (default 10): fail when a stripped binary is larger.
# Needs: rustup targets (added here if missing), gcc-aarch64-linux-gnu / gcc-arm-linux-gnueabihf.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_LIMIT_MB=${SIZE_LIMIT_MB:-10}
[ $# -gt 0 ] || set -- aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf

linker_for() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu-gcc ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf-gcc ;;
        *) echo "cross-build: unsupported target $1" >&2; return 1 ;;
    esac
}

ensure_target() {
    local target=$1
    if ! rustup target list --installed | grep -qx "$target"; then
        echo "cross-build: rustup target add $target" >&2
        rustup target add "$target"
    fi
    command -v "$(linker_for "$target")" >/dev/null \
        || { echo "cross-build: $(linker_for "$target") missing (apt-get install gcc-${target%%-*}-linux-gnu...)" >&2; return 1; }
}

status=0
report=""
for target in "$@"; do
    ensure_target "$target"
    start=$(date +%s)
    # The Pi builds carry GPIO support (rppal, feature "gpio"): the arm64/armhf .deb too.
    cargo build --release --locked --features gpio --bin tollgate --target "$target" --manifest-path "$ROOT/Cargo.toml" >&2
    bin="${CARGO_TARGET_DIR:-$ROOT/target}/$target/release/tollgate"
    # The release profile strips already (strip = true); verify rather than assume.
    if readelf -S --wide "$bin" | grep -q '\.debug_info'; then
        echo "cross-build: $bin still has debug info" >&2
        status=1
    fi
    bytes=$(stat -c %s "$bin")
    mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
    line="$target: $mib MiB ($bytes bytes) stripped, built in $(( $(date +%s) - start )) s: $bin"
    report="$report$line"$'\n'
    if [ "$bytes" -gt $(( SIZE_LIMIT_MB * 1048576 )) ]; then
        echo "cross-build: FAIL: $target binary $mib MiB > $SIZE_LIMIT_MB MiB" >&2
        status=1
    fi
done
printf '%s' "$report"
exit "$status"
