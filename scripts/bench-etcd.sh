#!/usr/bin/env bash
# Starts a 3-member etcd cluster on loopback for side-by-side benchmarks with
# `roster bench` (Debian's etcd-server). Same timing as Roster's defaults:
# heartbeat 100 ms, election timeout 1000 ms.
#
#   scripts/bench-etcd.sh [DIR]      # data under DIR (default /tmp/bench-etcd)
#   roster bench --endpoints 127.0.0.1:51379,127.0.0.1:52379,127.0.0.1:53379 put
#
# Stops the members on Ctrl-C / exit.
set -euo pipefail
dir=${1:-/tmp/bench-etcd}
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
rm -rf "$dir" && mkdir -p "$dir"
cluster=e1=http://127.0.0.1:51380,e2=http://127.0.0.1:52380,e3=http://127.0.0.1:53380
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for n in 1 2 3; do
  etcd --name "e$n" --data-dir "$dir/e$n" \
    --listen-client-urls "http://127.0.0.1:5${n}379" --advertise-client-urls "http://127.0.0.1:5${n}379" \
    --listen-peer-urls "http://127.0.0.1:5${n}380" --initial-advertise-peer-urls "http://127.0.0.1:5${n}380" \
    --initial-cluster "$cluster" --initial-cluster-token bench --initial-cluster-state new \
    --heartbeat-interval 100 --election-timeout 1000 >"$dir/e$n.log" 2>&1 &
  pids+=($!)
done
echo "etcd: 127.0.0.1:51379,127.0.0.1:52379,127.0.0.1:53379 (logs in $dir)"
wait
