#!/usr/bin/env bash
# Runs a documented subset of the test suite for aarch64 under qemu-user
# (runner from .cargo/config.toml: qemu-aarch64 -L /usr/aarch64-linux-gnu).
#
# Usage: scripts/cross-test.sh [TRIPLE]     (default aarch64-unknown-linux-gnu)
#
# The subset: the library's unit tests (--lib) plus every integration test file matching
# QEMU_TEST_GLOBS (default: telemetry_* tls_* acl_* pki_* auth_* config_* codec_* gpio_*): TLS
# handshakes, ACL semantics, PKI, passwords, configuration and telemetry, i.e. the code
# whose behaviour depends on the CPU (crypto in ring, byte order, word size), and the GPIO
# adapter built as on a Pi (feature gpio) on its fake pin backend.
# Left out: tests that start the tollgate binary itself (cli_*, app_*): without binfmt_misc
# (not available in containers) the kernel cannot exec a foreign binary, and the broker
# stress tests (broker_*), whose time under emulation exceeds the CI budget.
# Tests that re-exec their own test binary read CROSS_TEST_RUNNER (set below).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
target=${1:-aarch64-unknown-linux-gnu}
QEMU_TEST_GLOBS=${QEMU_TEST_GLOBS:-"telemetry_* tls_* acl_* pki_* auth_* config_* codec_* gpio_*"}

case "$target" in
    aarch64-unknown-linux-gnu) runner="qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armv7-unknown-linux-gnueabihf) runner="qemu-arm -L /usr/arm-linux-gnueabihf" ;;
    *) echo "cross-test: unsupported target $target" >&2; exit 2 ;;
esac
command -v "${runner%% *}" >/dev/null || { echo "cross-test: ${runner%% *} missing (apt-get install qemu-user)" >&2; exit 1; }
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

# --features gpio: the Pi builds' feature set (the rppal backend compiles in; the GPIO
# logic's tests, in --lib and gpio_pins, use the fake pin backend and run anywhere).
args=(--features gpio --lib)
selected=()
read -r -a globs <<<"$QEMU_TEST_GLOBS"
shopt -s nullglob
for glob in "${globs[@]}"; do
    for file in "$ROOT"/tests/$glob.rs; do
        name=$(basename "$file" .rs)
        args+=(--test "$name")
        selected+=("$name")
    done
done
echo "cross-test: $target under ${runner%% *}: --lib ${selected[*]}" >&2

export CROSS_TEST_RUNNER="$runner"
cargo test --locked --target "$target" --manifest-path "$ROOT/Cargo.toml" "${args[@]}"
