#!/usr/bin/env bash
# Idle memory of a tollgate binary: starts `tollgate run` with two loopback listeners (tcp and
# TLS with the development PKI, ports chosen by the kernel), waits until both listen, lets it
# idle for IDLE_SECONDS (default 3), prints VmRSS and VmHWM, then stops it with SIGTERM.
#
# Usage: scripts/measure-rss.sh BINARY [RUNNER...]
#   scripts/measure-rss.sh target/release/tollgate
#   scripts/measure-rss.sh target/aarch64-unknown-linux-gnu/release/tollgate qemu-aarch64 -L /usr/aarch64-linux-gnu
# Under qemu-user the figure includes the emulator itself (translation cache, its own heap):
# it overstates what the binary needs on a real Pi.
set -euo pipefail

bin=$(realpath "${1:?usage: measure-rss.sh BINARY [RUNNER...]}")
shift
IDLE_SECONDS=${IDLE_SECONDS:-3}
work=$(mktemp -d)
pid=""
cleanup() {
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/tollgate.toml" <<TOML
[broker]
data_dir = "$work/state"

[[listener]]
name = "local"
bind = "127.0.0.1:0"
transport = "tcp"
allow_anonymous = true

[[listener]]
name = "devices"
bind = "127.0.0.1:0"
transport = "tls"
allow_anonymous = true
TOML
mkdir -p "$work/state"

# The allocator policy of systemd/tollgate.service (mimalloc; README "Memory and the allocator").
export MIMALLOC_ARENA_EAGER_COMMIT=${MIMALLOC_ARENA_EAGER_COMMIT:-0}
export MIMALLOC_PURGE_DELAY=${MIMALLOC_PURGE_DELAY:-100}
"$@" "$bin" run -c "$work/tollgate.toml" --log text >"$work/out.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
        cat "$work/out.log" >&2
        echo "measure-rss: tollgate exited" >&2
        exit 1
    fi
    listening=$(ss -ltnpH 2>/dev/null | grep -c "pid=$pid," || true)
    [ "$listening" -lt 2 ] || break
    sleep 0.1
done
[ "${listening:-0}" -ge 2 ] || { cat "$work/out.log" >&2; echo "measure-rss: listeners not up" >&2; exit 1; }
sleep "$IDLE_SECONDS"
if ! kill -0 "$pid" 2>/dev/null; then
    cat "$work/out.log" >&2
    echo "measure-rss: tollgate exited while idle" >&2
    exit 1
fi
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
threads=$(awk '/^Threads/ { print $2 }' "/proc/$pid/status")
kill -TERM "$pid"
wait "$pid" || true
pid=""
printf 'idle RSS %.1f MiB (peak %.1f MiB, %s threads): %s %s\n' \
    "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$(awk -v k="$hwm" 'BEGIN { print k / 1024 }')" \
    "$threads" "${*:-native}" "$bin"
