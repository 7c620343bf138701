#!/usr/bin/env bash
# Starts a 3-member etcd cluster on loopback for side-by-side benchmarks with
# `roster bench` (Debian's etcd-server). Same timing as Roster's defaults:
# heartbeat 100 ms, election timeout 1000 ms.
#
#   scripts/bench-etcd.sh [DIR]      # data under DIR (default /tmp/bench-etcd)
#   roster bench --endpoints 127.0.0.1:51379,127.0.0.1:52379,127.0.0.1:53379 put
#
# ETCD_PORT_PREFIX (default 5) is the ports' first digit, so that two clusters
# can run side by side: with 6, clients on 61379, 62379, 63379 and peers on
# 61380, 62380, 63380. Each member's process id is written to DIR/eN.pid.
# Stops the members on Ctrl-C / exit.
set -euo pipefail
dir=${1:-/tmp/bench-etcd}
p=${ETCD_PORT_PREFIX:-5}
[[ $p =~ ^[1-6]$ ]] || { echo "ETCD_PORT_PREFIX must be one digit, 1 to 6" >&2; exit 1; }
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
rm -rf "$dir" && mkdir -p "$dir"
cluster=e1=http://127.0.0.1:${p}1380,e2=http://127.0.0.1:${p}2380,e3=http://127.0.0.1:${p}3380
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for n in 1 2 3; do
  etcd --name "e$n" --data-dir "$dir/e$n" \
    --listen-client-urls "http://127.0.0.1:${p}${n}379" --advertise-client-urls "http://127.0.0.1:${p}${n}379" \
    --listen-peer-urls "http://127.0.0.1:${p}${n}380" --initial-advertise-peer-urls "http://127.0.0.1:${p}${n}380" \
    --initial-cluster "$cluster" --initial-cluster-token bench --initial-cluster-state new \
    --heartbeat-interval 100 --election-timeout 1000 >"$dir/e$n.log" 2>&1 &
  pids+=($!)
  echo $! >"$dir/e$n.pid"
done
echo "etcd: 127.0.0.1:${p}1379,127.0.0.1:${p}2379,127.0.0.1:${p}3379 (logs in $dir)"
wait
