#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests need
# (Debian mosquitto + clients as independent peers, socat, openssl, systemd tools,
# cross gcc + qemu-user, shellcheck), then runs fmt, clippy, the Rust tests and the
# appliance checks (systemd unit, .deb, image stage, aarch64 build under qemu).
# Usage: scripts/test-all.sh            (everything)
#        TOLLGATE_SKIP_APPLIANCE=1 scripts/test-all.sh   (Rust suite only)
#        TOLLGATE_SKIP_BENCH=1 scripts/test-all.sh       (without the bench smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pair in python3:python3 mosquitto:mosquitto mosquitto_pub:mosquitto-clients socat:socat openssl:openssl \
            shellcheck:shellcheck systemd-analyze:systemd dpkg-deb:dpkg \
            qemu-aarch64:qemu-user aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu \
            arm-linux-gnueabihf-gcc:gcc-arm-linux-gnueabihf; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need_pkgs+=("$pkg")
done
# The Modbus tests' device simulator (pymodbus) lives in a venv under target/: venv and pip.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
[ -d /usr/aarch64-linux-gnu/lib ] || need_pkgs+=(libc6-dev-arm64-cross)
[ -d /usr/arm-linux-gnueabihf/lib ] || need_pkgs+=(libc6-dev-armhf-cross)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi
# mosquitto's Debian package may start a system broker on 1883; tests never use fixed ports.
export PATH="$PATH:/usr/sbin"

# pymodbus 3.x (with pyserial for RTU) from PyPI into target/modbus-venv, which
# tests/support/modbus.rs uses (TOLLGATE_MODBUS_PYTHON overrides it). No system pip changes.
modbus_python=target/modbus-venv/bin/python
if ! "$modbus_python" -c 'from pymodbus.simulator import SimDevice; import serial' >/dev/null 2>&1; then
  echo "== installing pymodbus into target/modbus-venv"
  rm -rf target/modbus-venv
  python3 -m venv target/modbus-venv
  "$modbus_python" -m pip install --quiet --disable-pip-version-check 'pymodbus[serial]>=3.10,<4'
fi

# MQTT.js (the browser MQTT client, run under node) from npm into target/node-mqtt, which
# tests/edge_ws.rs uses as an independent WebSocket client (TOLLGATE_NODE_MQTT overrides it).
command -v node >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"; $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm; }
if [ ! -f target/node-mqtt/node_modules/mqtt/package.json ]; then
  echo "== installing MQTT.js into target/node-mqtt"
  mkdir -p target/node-mqtt
  npm install --prefix target/node-mqtt --no-audit --no-fund --silent 'mqtt@^5'
fi

# CI builds once: incremental caches would only take disk (they were 15 GB of a run).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# Disk use at every stage, so that a full disk is seen where it happens.
disk() { echo "-- disk after $1: $(df -h --output=avail . | tail -1 | tr -d ' ') free, target $(du -sh target 2>/dev/null | cut -f1)"; }
disk "setup"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== architecture rules: no import cycles (broker, app), file and function sizes"
python3 scripts/check-imports.py broker app
python3 scripts/check-sizes.py
echo "== cargo test"
export TOLLGATE_REQUIRE_PEERS=1
cargo test --workspace --lib --bins --tests -- --test-threads=2
disk "cargo test"
if [ -z "${TOLLGATE_SKIP_FUZZ:-}" ]; then
  echo "== fuzz targets, bounded (TOLLGATE_SKIP_FUZZ=1 skips)"
  TOLLGATE_FUZZ_SECONDS=${TOLLGATE_FUZZ_SECONDS:-10} scripts/fuzz-ci.sh
  disk "fuzz"
  # The instrumented build is a second copy of every dependency; on a machine short of
  # disk (under 20 GB left) it goes before the cross builds need the room.
  if [ "$(df --output=avail -k . | tail -1)" -lt 20000000 ]; then
    echo "-- short of disk: removing fuzz/target"; rm -rf fuzz/target
  fi
fi

if [ -z "${TOLLGATE_SKIP_BENCH:-}" ]; then
  # A few seconds of every bench section against Mosquitto (debug build): proves the bench
  # still runs end to end; no figure is judged. It starts target/debug/tollgate, which the
  # test step above has just built.
  echo "== tollgate-bench smoke run"
  cargo run --quiet -p tollgate-bench -- --messages 2000 --connects 50 --rounds 1 \
    --idle-conns 50 --devices 50 --load-rounds 1 --latency-secs 0.5 --settle-secs 2 --bridge --bridge-messages 2000 \
    --persistence
fi

if [ -z "${TOLLGATE_SKIP_APPLIANCE:-}" ] && [ -x scripts/ci-appliance.sh ]; then
  echo "== appliance checks"
  scripts/ci-appliance.sh
  disk "appliance"
fi
echo "== all checks passed"
