#!/usr/bin/env bash
# Roster against etcd 3.4, side by side: the same `roster bench` command
# against a fresh 3-node Roster cluster and a fresh 3-member etcd cluster
# (scripts/bench-etcd.sh), one after the other for each workload; writes a
# markdown table (workload, command, Roster, etcd, ratio) with the machine,
# the versions and the date, to stdout and to OUT.
#
#   scripts/bench-compare.sh [--quick] [--only REGEX] [OUT]
#                                               # OUT: target/bench-compare.md
#
# --quick runs tiny totals (a smoke run of a minute or two); the figures mean
# little. Without it a run takes the better part of an hour (scale grants a
# million leases on each cluster). --only runs just the rows whose name
# matches the extended regex (e.g. 'put, 64|keepalive'); the groups without
# such a row start no clusters.
#
# Environment:
#   ROSTER_BASE_PORT  Roster client ports P, P+20000, P+30000, peers +1 (14379)
#   ETCD_PORT_PREFIX  etcd ports 61379, 62379, 63379 for 6 (default 6)
#   BENCH_DIR         clusters' data, logs and raw outputs (/tmp/bench-compare)
#   CARGO_TARGET_DIR  where cargo builds the release binary (target)
#
# The Roster nodes are three `roster serve` processes with the flags that
# `roster dev` gives them, started here rather than through `roster dev`,
# which stops every node when one exits (the failover workload kills one).
# The clusters are fresh for each group of workloads: the shared ones, then
# storm, failover and scale, each on new clusters. The failover kill command
# reads the leader's pid from BENCH_DIR/pids/<client port>.pid.
set -euo pipefail

quick=0 out= only=
while (($#)); do
  arg=$1
  shift
  case $arg in
    --quick) quick=1 ;;
    --only) only=${1:?--only needs a regex}; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
    -*) echo "unknown flag $arg" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${out:-target/bench-compare.md}
base=${ROSTER_BASE_PORT:-14379}
ep=${ETCD_PORT_PREFIX:-6}
work=${BENCH_DIR:-/tmp/bench-compare}
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
  { echo "etcd and etcdctl are needed (apt-get install etcd-server etcd-client)" >&2; exit 1; }

cargo build --release -p roster-cli
roster="$(realpath "${CARGO_TARGET_DIR:-target}")/release/roster"
ports=("$base" "$((base + 20000))" "$((base + 30000))")
R=127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}
E=127.0.0.1:${ep}1379,127.0.0.1:${ep}2379,127.0.0.1:${ep}3379
rm -rf "$work" && mkdir -p "$work/pids" "$work/out"

# --- clusters ---------------------------------------------------------------

roster_pids=() etcd_script=
wait_ready() { # ENDPOINTS: until every member answers a linearizable read
  for _ in $(seq 60); do
    ETCDCTL_API=3 etcdctl --endpoints="$1" --dial-timeout=1s --command-timeout=2s \
      endpoint health >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "cluster $1 not ready after 30 s (logs in $work)" >&2
  return 1
}

start_roster() {
  local dir=$work/roster cluster= n p
  rm -rf "$dir" && mkdir -p "$dir"
  for n in 1 2 3; do cluster+="${cluster:+,}n$n=http://127.0.0.1:$((ports[n - 1] + 1))"; done
  for n in 1 2 3; do
    p=${ports[n - 1]}
    "$roster" serve --name "n$n" --data-dir "$dir/n$n.roster" \
      --listen-client-urls "http://127.0.0.1:$p" --listen-peer-urls "http://127.0.0.1:$((p + 1))" \
      --initial-cluster "$cluster" --initial-cluster-token roster-dev >"$dir/n$n.log" 2>&1 &
    roster_pids+=($!)
    echo $! >"$work/pids/$p.pid"
  done
  wait_ready "$R"
  alive "${roster_pids[@]}"
}

alive() { # PID...: fail if one exited (e.g. its port was taken: another
  # cluster would then answer in its place and be measured instead)
  local pid
  for pid in "$@"; do
    kill -0 "$pid" 2>/dev/null ||
      { echo "process $pid exited at start (logs in $work)" >&2; exit 1; }
  done
}

start_etcd() {
  local n
  rm -rf "$work/etcd"
  ETCD_PORT_PREFIX=$ep scripts/bench-etcd.sh "$work/etcd" >"$work/etcd.out" 2>&1 &
  etcd_script=$!
  for n in 1 2 3; do
    for _ in $(seq 100); do [[ -s $work/etcd/e$n.pid ]] && break; sleep 0.1; done
    cp "$work/etcd/e$n.pid" "$work/pids/${ep}${n}379.pid"
  done
  wait_ready "$E"
  alive $(cat "$work"/etcd/e?.pid)
}

stop_pids() { # PID...: SIGTERM, and SIGKILL to whatever still runs after 10 s
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$@" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$@" 2>/dev/null || true
  wait "$@" 2>/dev/null || true
}

stop_clusters() {
  stop_pids "${roster_pids[@]}"
  roster_pids=()
  if [[ -n $etcd_script ]]; then
    # The script stops its members on SIGTERM; any it missed go too.
    stop_pids "$etcd_script"
    stop_pids $(cat "$work"/etcd/e?.pid 2>/dev/null)
    etcd_script=
  fi
}
trap stop_clusters EXIT
# Fresh clusters for the next row that runs (none if no row of the group runs).
need_fresh=0
fresh_clusters() { need_fresh=1; }

# --- measuring --------------------------------------------------------------

headline() { # METRIC FILE: the figure the ratio compares
  case $1 in
    ops) grep -m1 -o '= [0-9.]* ops/s' "$2" | awk '{print $2}' ;;
    lateness) sed -n 's/.*lateness ms p50 [0-9.]* p99 \([0-9.]*\).*/\1/p' "$2" ;;
    clear) sed -n 's/.*last key gone \([0-9.]*\) s after the last deadline.*/\1/p' "$2" ;;
    back) sed -n 's/.*writes back after \([0-9.]*\) s.*/\1/p' "$2" ;;
    watchp99) sed -n 's/^watch x[0-9]* put-to-event:.* p99 \([0-9.]*\).*/\1/p' "$2" ;;
    rss) sed -n 's/.*VmRSS \([0-9]*\) kB.*/\1/p' "$2" | awk '{s += $1} END {if (NR) printf "%.0f", s / 1024}' ;;
  esac
}

what() { # METRIC: what the ratio is of
  case $1 in
    ops) echo "ops/s" ;;
    lateness) echo "expiry lateness p99" ;;
    clear) echo "time to clear the storm" ;;
    back) echo "time until writes work again" ;;
    watchp99) echo "put-to-event p99" ;;
    rss) echo "RSS of the 3 nodes (MB)" ;;
  esac
}

measure() { # NAME CLUSTER ENDPOINTS PIDS ARGS...: one run; the table cell
  local name=$1 cluster=$2 eps=$3 pids=$4 file=$work/out/$1.$2
  shift 4
  local args=("${@//@PIDS@/$pids}")
  echo "== $name on $cluster: roster bench --endpoints $eps ${args[*]}" >&2
  if "$roster" bench --endpoints "$eps" "${args[@]}" >"$file.txt" 2>"$file.err"; then
    cat "$file.txt" >&2
    awk '{printf "%s%s", (NR > 1 ? "<br>" : ""), $0}' "$file.txt"
  else
    cat "$file.txt" "$file.err" >&2
    echo "failed (see $file.err)"
  fi
}

shown() { # ARGS...: the command as the table shows it
  local a s="roster bench --endpoints \$EP"
  for a in "$@"; do
    case $a in *' '*) s+=" '$a'" ;; @PIDS@) s+=' $PIDS' ;; *) s+=" $a" ;; esac
  done
  echo "$s"
}

rows=()
row() { # NAME METRIC ARGS...: one workload on both clusters
  local name=$1 metric=$2 r e hr he ratio
  shift 2
  [[ -z $only || $name =~ $only ]] || return 0
  if ((need_fresh)); then
    stop_clusters
    start_roster
    start_etcd
    need_fresh=0
  fi
  r=$(measure "$name" roster "$R" "$(IFS=,; echo "${roster_pids[*]}")" "$@")
  e=$(measure "$name" etcd "$E" "$(cat "$work"/etcd/e?.pid | paste -sd,)" "$@")
  hr=$(headline "$metric" "$work/out/$name.roster.txt")
  he=$(headline "$metric" "$work/out/$name.etcd.txt")
  ratio=$(awk -v r="$hr" -v e="$he" 'BEGIN {if (r != "" && e != "" && e + 0 != 0) printf "%.2fx", r / e; else print "n/a"}')
  rows+=("| $name | \`$(shown "$@")\` | $r | $e | $ratio ($(what "$metric")) |")
}

# --- the workloads ----------------------------------------------------------

kill_cmd="kill -9 \$(cat $work/pids/\$LEADER_PORT.pid)"
if ((quick)); then
  c="--clients 16 --conns 6"
  fresh_clusters
  row put ops $c --total 2000 put
  row "watch, 1 watcher" watchp99 $c --total 1000 watch --watchers 1
  row "range (linearizable)" ops $c --total 2000 range --keys 1000
  row "range (serializable)" ops $c --total 2000 range --keys 1000 --serializable
  row lease-grant ops $c --total 1000 lease-grant --ttl 60
  row keepalive ops $c --total 5000 keepalive --leases 2000 --ttl 60
  row expiry lateness --conns 6 expiry --leases 200 --ttl 2
  fresh_clusters
  row storm clear $c storm --leases 2000 --ttl 4 --calm 1s
  fresh_clusters
  row failover back $c failover --holders 20 --ttl 2 --kill-after 2s --observe 5s --kill-cmd "$kill_cmd"
  fresh_clusters
  row scale rss $c scale --keys 10000 --leases 5000 --pids @PIDS@
else
  c="--clients 64 --conns 8"
  fresh_clusters
  row "put, 1 client" ops --clients 1 --conns 3 --total 3000 --duration 15s put
  row "put, 16 clients" ops --clients 16 --conns 8 --total 20000 --duration 15s put
  row "put, 64 clients" ops $c --total 40000 --duration 20s put
  row "put, 256 clients" ops --clients 256 --conns 8 --total 60000 --duration 20s put
  row "watch, 1 watcher" watchp99 --clients 16 --conns 8 --total 10000 --duration 15s watch --watchers 1
  row "watch, 1,000 watchers" watchp99 --clients 16 --conns 8 --total 10000 --duration 15s watch --watchers 1000
  row "range (linearizable)" ops $c --total 50000 --duration 20s range --keys 10000
  row "range (serializable)" ops $c --total 50000 --duration 20s range --keys 10000 --serializable
  row lease-grant ops $c --total 20000 --duration 20s lease-grant --ttl 60
  row "keepalive, 10k leases" ops $c --total 300000 --duration 15s keepalive --leases 10000 --ttl 600
  row "keepalive, 100k leases" ops $c --total 300000 --duration 15s keepalive --leases 100000 --ttl 600
  row expiry lateness --conns 8 expiry --leases 1000 --ttl 5
  fresh_clusters
  row storm clear --clients 16 --conns 8 storm --leases 100000 --ttl 120
  fresh_clusters
  row failover back --clients 16 --conns 8 failover --holders 100 --ttl 5 --kill-after 5s --observe 15s --kill-cmd "$kill_cmd"
  fresh_clusters
  row scale rss $c scale --keys 1000000 --leases 1000000 --pids @PIDS@
fi
stop_clusters

# --- the report -------------------------------------------------------------

mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mkdir -p "$(dirname "$out")"
{
  echo "# Roster vs etcd, \`roster bench\`$( ((quick)) && echo ' (--quick)')"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) CPUs ($cpu), $mem; clusters and load generator on the same machine"
  echo "- Roster: $("$roster" --version) ($(git describe --always --dirty 2>/dev/null || echo 'no git')), 3 nodes: EP=$R"
  echo "- etcd: $(etcd --version 2>/dev/null | head -1), 3 members (scripts/bench-etcd.sh): EP=$E"
  echo "- fresh clusters for: the rows up to expiry together, then storm, failover, scale each"
  echo
  echo "| workload | command | Roster | etcd | Roster / etcd |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee "$out"
echo "written to $out (raw outputs in $work/out)" >&2
