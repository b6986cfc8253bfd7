#!/usr/bin/env bash
# Bounded fuzzing for CI on stable Rust: builds every target in fuzz/ with libFuzzer
# coverage instrumentation (the "Without nightly" recipe of fuzz/README.md), then runs
# each for TOLLGATE_FUZZ_SECONDS (default 20) over a temporary corpus seeded from
# fuzz/seeds/<target>/ (the committed seeds are never modified). Fails on the first
# crash, panic, timeout or out-of-memory; the input that did it is kept in
# fuzz/artifacts/<target>/ for replay (`fuzz/target/.../<target> <file>`).
# Usage: scripts/fuzz-ci.sh [target ...]       (default: every [[bin]] in fuzz/Cargo.toml)
# Env:   TOLLGATE_FUZZ_SECONDS  seconds per target (default 20)
#        TOLLGATE_FUZZ_JOBS     targets run at once (default 2: CI has 2 cores)
#        TOLLGATE_FUZZ_MAX_LEN  largest generated input in bytes (default 4096)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${TOLLGATE_FUZZ_SECONDS:-20}
jobs=${TOLLGATE_FUZZ_JOBS:-2}
max_len=${TOLLGATE_FUZZ_MAX_LEN:-4096}
triple=x86_64-unknown-linux-gnu
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^tollgate-fuzz$')
fi

# --target keeps the instrumentation away from build scripts and proc macros.
build_start=$(date +%s)
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
  cargo build --quiet --release --target "$triple" --bins
echo "fuzz build: $(( $(date +%s) - build_start ))s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs one target; writes its summary to $work/<target>.line and libFuzzer's exit
# status to $work/<target>.status.
run_target() {
  local target=$1 corpus="$work/$1/corpus" log="$work/$1.log"
  mkdir -p "$corpus" "artifacts/$target"
  if [ -d "seeds/$target" ]; then
    cp -R "seeds/$target/." "$corpus/"
  fi
  local seeds status=0 start
  seeds=$(find "$corpus" -type f | wc -l)
  start=$(date +%s)
  "target/$triple/release/$target" "$corpus" \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=25 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1 || status=$?
  local execs corpus_now
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  corpus_now=$(find "$corpus" -type f | wc -l)
  if [ "$status" -eq 0 ]; then
    echo "fuzz $target: ok, ${execs:-?} executions in $(( $(date +%s) - start ))s, corpus $seeds -> $corpus_now" >"$work/$target.line"
  else
    {
      if [ "$status" -gt 128 ]; then
        # libFuzzer's handler cannot run on an overflowed stack: nothing is saved.
        echo "fuzz $target: FAILED, killed by signal $((status - 128)) after ${execs:-?} executions (a stack overflow leaves no artifact)"
      else
        echo "fuzz $target: FAILED (exit $status) after ${execs:-?} executions; input kept in fuzz/artifacts/$target/"
      fi
      grep -A 6 'panicked at' "$log" | head -n 20 || true
      grep -E 'ERROR|SUMMARY|overflow|Test unit written|^Base64' "$log" || true
      tail -n 5 "$log"
    } >"$work/$target.line"
  fi
  echo "$status" >"$work/$target.status"
}

running=0
for target in "${targets[@]}"; do
  run_target "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait
failed=0
for target in "${targets[@]}"; do
  cat "$work/$target.line"
  [ "$(cat "$work/$target.status")" -eq 0 ] || failed=1
done
exit "$failed"
