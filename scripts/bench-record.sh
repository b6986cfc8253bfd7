#!/usr/bin/env bash
# Runs tollgate-bench (release build) with --json, stores the result as
# docs/bench/<UTC date>-<commit>.json and renders it as Markdown next to it
# (docs/bench/<same>.md), the tables the README's performance section shows.
#
# Usage: scripts/bench-record.sh [TOLLGATE-BENCH OPTIONS...]
#   scripts/bench-record.sh                                   # defaults: TLS, QoS 1 and 0
#   scripts/bench-record.sh --tollgate /path/to/other/tollgate --commit e28fc34
# Needs an open-files limit of about 2,200 (ulimit -n 4096) for the idle-connection row.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins   # tollgate and tollgate-bench (bench/)
commit=$(git rev-parse --short HEAD)
extra=(--commit "$commit")
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    if [ "${args[i]}" = --commit ]; then
        commit=${args[i + 1]:-$commit}
        extra=()
    fi
done
out="docs/bench/$(date -u +%F)-${commit}"
mkdir -p docs/bench
target/release/tollgate-bench --json "${extra[@]}" "$@" >"$out.json.tmp"
mv "$out.json.tmp" "$out.json"
target/release/tollgate-bench --markdown "$out.json" >"$out.md"
echo "wrote $out.json and $out.md" >&2
cat "$out.md"
