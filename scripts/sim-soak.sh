#!/usr/bin/env bash
# The deterministic simulation for many seeds: builds crates/sim's `sim`
# example in release mode, then runs seeds FIRST..LAST on 3- and 5-node
# clusters (NODES, default 3,5), each with SECS virtual seconds of faults,
# each in a child process of its own, JOBS at a time (default: the number of
# cores). Prints one line per run, a summary (runs, operations, faults by
# kind, anomalies), and for each failing run the command that replays it.
#
# usage: scripts/sim-soak.sh [FIRST=1] [LAST=1000] [SECS=20]
#   NODES=3,5 JOBS=2 scripts/sim-soak.sh 1 1000 20
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
first=${1:-1}
last=${2:-1000}
secs=${3:-20}
cargo build -q --release -p roster-sim --example sim
exec target/release/examples/sim --seeds "$first..$last" --nodes "${NODES:-3,5}" \
    --secs "$secs" --jobs "${JOBS:-$(nproc)}"
