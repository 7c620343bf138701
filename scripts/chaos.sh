#!/usr/bin/env bash
# Real-process chaos for longer than CI does it: runs tests/chaos.rs (a
# 3-node cluster under kills, pauses and full restarts, with the checkers of
# crates/check judging the clients' histories) again and again for TOTAL
# seconds, each run SECONDS_PER_RUN long, and prints each run's verdicts and
# a summary. A failing run's output is kept under /tmp/roster-chaos-failures/.
#
# usage: scripts/chaos.sh [TOTAL_SECONDS=1800] [SECONDS_PER_RUN=120]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
total=${1:-1800}
per=${2:-120}
mkdir -p /tmp/roster-chaos-failures
cargo test -q -p roster-cli --test chaos --no-run
end=$((SECONDS + total))
runs=0 failed=0 ops=0 faults=0
kinds=$(mktemp)
while [ "$SECONDS" -lt "$end" ]; do
  runs=$((runs + 1))
  log=$(mktemp)
  if ROSTER_CHAOS_SECS=$per cargo test -q -p roster-cli --test chaos -- --nocapture >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed=$((failed + 1))
    cp "$log" "/tmp/roster-chaos-failures/run-$runs.log"
  fi
  summary=$(grep -E '^chaos: seed [0-9]+,' "$log" || true)
  echo "run $runs $status: ${summary#chaos: }"
  grep -E '^chaos: (linearizable|lease-safety|watch|durability)' "$log" | grep FAILED || true
  ops=$((ops + $(echo "$summary" | grep -oE '[0-9]+ kv operations' | grep -oE '^[0-9]+' || echo 0)))
  faults=$((faults + $(echo "$summary" | grep -oE '[0-9]+ faults' | grep -oE '^[0-9]+' || echo 0)))
  grep -oE '^chaos: [A-Za-z]+ \(node' "$log" | awk '{print $2}' >>"$kinds" || true
  rm -f "$log"
done
echo "chaos soak: $runs runs, $ops kv operations, $faults faults, $failed failed runs"
echo "faults by kind: $(sort "$kinds" | uniq -c | awk '{printf "%s %s, ", $2, $1}')"
rm -f "$kinds"
[ "$failed" -eq 0 ]
