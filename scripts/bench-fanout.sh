#!/usr/bin/env bash
# Fan-out side by side, in one invocation, with the same light clients and the same events:
# this machine's floor (no server), dagstream (`serve` started by the bench), and the seed's
# Node `ws` broadcast server (bench/peers/seed-server.mjs). Prints each report, then one table
# with p99 against the floor.
#
#   scripts/bench-fanout.sh BIN [CLIENTS] [EVENTS] [RATE]     (defaults: 1000 200 20)
set -euo pipefail
bin=${1:?usage: bench-fanout.sh BIN [CLIENTS] [EVENTS] [RATE]}
clients=${2:-1000}
events=${3:-200}
rate=${4:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$root/bench/peers/node_modules/ws" ]; then
  (cd "$root/bench/peers" && npm ci --no-audit --no-fund --silent)
fi
log=$(mktemp)
node "$root/bench/peers/seed-server.mjs" 0 >"$log" &
peer=$!
trap 'kill $peer 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 50); do grep -q listening "$log" && break; sleep 0.1; done
port=$(awk '/listening on/ {print $3}' "$log")
[ -n "$port" ] || { echo "the Node peer did not start" >&2; exit 1; }

common=(bench fanout --clients "$clients" --events "$events" --rate "$rate")
run() {
  local name=$1; shift
  echo "== $name"
  "$bin" "${common[@]}" "$@" | tee "$log.$name"
}
run floor --floor
run dagstream
run node-ws --url "ws://127.0.0.1:$port/api/dags/bench/stream" --publish-url "ws://127.0.0.1:$port/api/dags/bench/publish"

p99() { sed -n 's/^publish→receive latency:.*p99 \([0-9.]*\) ms.*/\1/p' "$log.$1"; }
rate_of() { sed -n 's/.*: \([0-9]*\) messages\/s/\1/p' "$log.$1"; }
missed() { sed -n 's/.*dropped: \([0-9]*\)/\1/p' "$log.$1"; }
floor=$(p99 floor)
echo
printf '%-10s %12s %14s %12s %8s\n' server 'p99 (ms)' 'p99 / floor' 'messages/s' missed
for name in floor dagstream node-ws; do
  printf '%-10s %12s %14s %12s %8s\n' "$name" "$(p99 $name)" \
    "$(awk -v a="$(p99 $name)" -v b="$floor" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')" \
    "$(rate_of $name)" "$(missed $name)"
done
rm -f "$log".*
