#!/usr/bin/env bash
# What authentication costs, side by side on loopback single members:
#  1. writes with auth off, this binary against one built before auth
#     existed (OLD=path/to/roster), alternating: the checks must cost nothing
#     while auth is off;
#  2. writes with auth on, a non-root user's token on every put, against
#     auth off, this binary;
#  3. a login (`etcdctl --user` authenticates once per call), Roster against
#     etcd 3.4 (bcrypt cost 10): the time of `etcdctl --user root:pw get k`
#     less that of `etcdctl endpoint status` (the same process start-up, no
#     login), median of ROUNDS calls.
#   cargo build --release -p roster-cli && OLD=/tmp/old/roster scripts/bench-auth.sh
# It stops every `roster serve` and etcd running on this machine first.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${R:-$PWD/target/release/roster}
OLD=${OLD:?OLD=path to a roster binary from before auth}
N=${N:-100000}
ROUNDS=${ROUNDS:-15}
D=$(mktemp -d /tmp/authbench.XXXX)
stop() { { pkill -9 -f "roster[.a-z-]* serve"; pkill -9 -x etcd; } 2>/dev/null || true; wait 2>/dev/null || true; sleep 1; }
serve() { # binary dir port
  $1 serve --name n --data-dir $2 --listen-client-urls http://127.0.0.1:$3 --listen-peer-urls http://127.0.0.1:$(($3 + 1)) >$2.log 2>&1 &
  sleep 3
}
stop
echo "== writes, auth off (roster bench --clients 64 put, $N keys)"
for round in $(seq ${WRITE_ROUNDS:-3}); do
  for which in old new; do
    bin=$R; [ $which = old ] && bin=$OLD
    serve $bin $D/$which-$round 61379
    printf '%s round %s: ' $which $round
    $R bench --endpoints 127.0.0.1:61379 --clients 64 --total $N put 2>&1 | grep -iE "ops/s" | head -1
    stop
  done
done

echo "== writes with auth on: a user holding readwrite on bench/ sends a token with each put (this binary)"
for round in $(seq ${WRITE_ROUNDS:-3}); do
  serve $R $D/off-$round 61379
  printf 'auth off, round %s: ' $round
  $R bench --endpoints 127.0.0.1:61379 --clients 64 --total $N put 2>&1 | grep -iE "ops/s" | head -1
  stop
  serve $R $D/on-$round 61379
  ctl="env ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:61379"
  $ctl user add root:pw >/dev/null; $ctl user add bench:pw >/dev/null
  $ctl role add bench >/dev/null; $ctl role grant-permission bench readwrite bench/ --prefix >/dev/null
  $ctl user grant-role bench bench >/dev/null; $ctl auth enable >/dev/null
  printf 'auth on,  round %s: ' $round
  $R bench --endpoints 127.0.0.1:61379 --clients 64 --total $N --user bench:pw put 2>&1 | grep -iE "ops/s" | head -1
  stop
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms() { local s=$(date +%s%N); "$@" >/dev/null 2>&1 || true; echo $((($(date +%s%N) - s) / 1000000)); }
login_cost() { # endpoint
  local ctl="env ETCDCTL_API=3 etcdctl --endpoints $1"
  $ctl user add root:pw >/dev/null; $ctl auth enable >/dev/null
  $ctl --user root:pw put k v >/dev/null
  local with=$(for i in $(seq $ROUNDS); do ms $ctl --user root:pw get k; done | median)
  local without=$(for i in $(seq $ROUNDS); do ms $ctl endpoint status; done | median)
  echo "get with --user ${with} ms, endpoint status ${without} ms: login about $((with - without)) ms"
}
echo "== login (median of $ROUNDS etcdctl calls)"
serve $R $D/login 61379
printf 'roster: '; login_cost 127.0.0.1:61379
stop
etcd --name e --data-dir $D/e --listen-client-urls http://127.0.0.1:62379 --advertise-client-urls http://127.0.0.1:62379 --listen-peer-urls http://127.0.0.1:62380 --initial-advertise-peer-urls http://127.0.0.1:62380 --initial-cluster e=http://127.0.0.1:62380 >$D/e.log 2>&1 &
sleep 3
printf 'etcd:   '; login_cost 127.0.0.1:62379
stop
rm -rf $D
