#!/usr/bin/env bash
# Backup and restore side by side: one Roster member and one etcd member on
# loopback, the same keys loaded by the same client (`roster bench put`), then
# `etcdctl snapshot save` against each (and `roster snapshot save` against
# Roster), twice, then each tool's restore. Prints seconds and bytes.
#   cargo build --release -p roster-cli && scripts/bench-snapshot.sh   (N=200000 keys)
# It stops every `roster serve` and etcd running on this machine first.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${R:-$PWD/target/release/roster}
N=${N:-200000}
D=$(mktemp -d /tmp/snapbench.XXXX)
pkill -9 -f "roster[.a-z]* serve" || true; pkill -9 etcd || true; sleep 1
$R serve --name r1 --data-dir $D/r1 --listen-client-urls http://127.0.0.1:61379 --listen-peer-urls http://127.0.0.1:61380 >$D/r1.log 2>&1 &
etcd --name e1 --data-dir $D/e1 --listen-client-urls http://127.0.0.1:62379 --advertise-client-urls http://127.0.0.1:62379 --listen-peer-urls http://127.0.0.1:62380 --initial-advertise-peer-urls http://127.0.0.1:62380 --initial-cluster e1=http://127.0.0.1:62380 >$D/e1.log 2>&1 &
sleep 3
for ep in 127.0.0.1:61379 127.0.0.1:62379; do
  $R bench --endpoints $ep --total $N --duration 300s put 2>&1 | grep -iE "ops/s|throughput" | head -1
done
t() { local s=$(date +%s.%N); "$@" >/dev/null 2>&1; local e=$(date +%s.%N); echo "$(echo "$e - $s" | bc)"; }
for i in 1 2; do
  echo "round $i"
  echo "roster: etcdctl snapshot save $(t env ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:61379 snapshot save $D/r-$i.db) s, $(stat -c %s $D/r-$i.db) bytes"
  echo "etcd:   etcdctl snapshot save $(t env ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:62379 snapshot save $D/e-$i.db) s, $(stat -c %s $D/e-$i.db) bytes"
  echo "roster: roster snapshot save  $(t $R snapshot save $D/rr-$i.db --endpoints 127.0.0.1:61379) s"
done
echo "roster: snapshot restore $(t $R snapshot restore $D/r-1.db --name x --data-dir $D/rx --initial-cluster x=http://127.0.0.1:63380 --initial-advertise-peer-urls http://127.0.0.1:63380) s"
echo "etcd:   snapshot restore $(t env ETCDCTL_API=3 etcdctl snapshot restore $D/e-1.db --name x --data-dir $D/ex --initial-cluster x=http://127.0.0.1:63380 --initial-advertise-peer-urls http://127.0.0.1:63380) s"
$R snapshot status $D/r-1.db
ETCDCTL_API=3 etcdctl snapshot status $D/e-1.db -w table
pkill -9 -f "roster[.a-z]* serve" || true; pkill -9 etcd || true
rm -rf $D
