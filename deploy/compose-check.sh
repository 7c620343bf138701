#!/usr/bin/env bash
# Starts deploy/docker-compose.yml and checks it as an operator would:
# the three members elect a leader and take writes; with one member killed
# the other two go on serving; started again, the killed member catches up.
#   deploy/compose-check.sh [BINARY]
# BINARY (default target/release/roster) goes into a fresh image; the
# project, its containers and volumes are removed at the end, passed or not.
# Needs docker, docker-compose (v1) and etcdctl.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/roster}
project=rostercheck$$
export ROSTER_IMAGE=roster-check:$$
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export N1_PORT=$(free_port) N2_PORT=$(free_port) N3_PORT=$(free_port)
compose() { docker-compose -p "$project" -f deploy/docker-compose.yml "$@"; }
ctl() { local port=$1; shift; ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$port" --command-timeout=5s "$@"; }
cleanup() {
    local status=$?
    if [[ $status -ne 0 ]]; then
        echo "compose-check: FAILED; the members' logs:" >&2
        compose logs --no-color --tail=40 >&2 || true
    fi
    compose down -v --timeout 5 >/dev/null 2>&1 || true
    docker rmi "$ROSTER_IMAGE" >/dev/null 2>&1 || true
    exit $status
}
trap cleanup EXIT
# Polls "$@" every 0.5 s for up to $1 seconds.
within() {
    local seconds=$1; shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "compose-check: not within ${seconds}s: $*" >&2
            return 1
        fi
        sleep 0.5
    done
}
has_value() { local port=$1 key=$2 value=$3; [[ $(ctl "$port" get "$key" --print-value-only --consistency=s) == "$value" ]]; }

deploy/build-image.sh "$binary" "$ROSTER_IMAGE"
compose up -d
for port in $N1_PORT $N2_PORT $N3_PORT; do
    within 60 ctl "$port" endpoint health
done
ctl "$N1_PORT" put before-kill 1
echo "compose-check: 3 members up, a write taken"

compose kill n2
within 30 ctl "$N3_PORT" put during-kill 2
within 10 has_value "$N1_PORT" during-kill 2
echo "compose-check: n2 killed, n1 and n3 serve"

compose start n2
within 60 ctl "$N2_PORT" endpoint health
within 30 has_value "$N2_PORT" during-kill 2
within 10 has_value "$N2_PORT" before-kill 1
echo "compose-check: n2 back and caught up"
echo "compose-check: passed"
