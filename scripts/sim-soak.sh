#!/usr/bin/env bash
# The deterministic simulation for many seeds: builds crates/sim's `sim`
# example in release mode, then runs seeds FIRST..LAST on 3- and 5-node
# clusters (NODES, default 3,5), each with SECS virtual seconds of faults.
# Prints one line per run, a summary (runs, operations, faults by kind,
# anomalies), and for each failing run the command that replays it exactly.
# Several seed ranges run in parallel (JOBS, default the number of cores).
#
# usage: scripts/sim-soak.sh [FIRST=1] [LAST=1000] [SECS=20]
#   NODES=3,5 JOBS=2 scripts/sim-soak.sh 1 1000 20
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
first=${1:-1}
last=${2:-1000}
secs=${3:-20}
nodes=${NODES:-3,5}
jobs=${JOBS:-$(nproc)}
cargo build -q --release -p roster-sim --example sim
bin=target/release/examples/sim
out=$(mktemp -d)
count=$((last - first + 1))
step=$(((count + jobs - 1) / jobs))
pids=()
for ((j = 0; j < jobs; j++)); do
  a=$((first + j * step))
  b=$((a + step - 1))
  [ "$b" -gt "$last" ] && b=$last
  [ "$a" -gt "$b" ] && continue
  "$bin" --seeds "$a..$b" --nodes "$nodes" --secs "$secs" >"$out/$j.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
cat "$out"/*.log | grep -vE '^sim: [0-9]+ runs' | grep -E '^sim: seed' || true
echo "== summary (logs in $out)"
grep -hE '^sim: [0-9]+ runs' "$out"/*.log
grep -h 'FAILED' "$out"/*.log || true
exit $status
