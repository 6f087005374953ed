#!/usr/bin/env bash
# Fan-out side by side, in one invocation, with the same light clients and the same events:
# this machine's floor (no server), dagstream (`serve` started by the bench), and the seed's
# Node `ws` broadcast server (bench/peers/seed-server.mjs). The three run in turn, ROUNDS times
# (so a drift in the machine's load touches all three alike); prints each report, then a table
# with each round's p99 against that round's floor and the median of the rounds.
#
#   scripts/bench-fanout.sh BIN [CLIENTS] [EVENTS] [RATE] [ROUNDS]   (defaults: 1000 200 20 3)
set -euo pipefail
bin=${1:?usage: bench-fanout.sh BIN [CLIENTS] [EVENTS] [RATE] [ROUNDS]}
clients=${2:-1000}
events=${3:-200}
rate=${4:-20}
rounds=${5:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$root/bench/peers/node_modules/ws" ]; then
  (cd "$root/bench/peers" && npm ci --no-audit --no-fund --silent)
fi
log=$(mktemp)
node "$root/bench/peers/seed-server.mjs" 0 >"$log" &
peer=$!
trap 'kill $peer 2>/dev/null || true; rm -f "$log" "$log".*' EXIT
for _ in $(seq 1 50); do grep -q listening "$log" && break; sleep 0.1; done
port=$(awk '/listening on/ {print $3}' "$log")
[ -n "$port" ] || { echo "the Node peer did not start" >&2; exit 1; }

common=(bench fanout --clients "$clients" --events "$events" --rate "$rate")
run() {
  local name=$1 round=$2; shift 2
  echo "== $name, round $round"
  "$bin" "${common[@]}" "$@" | tee "$log.$name.$round"
}
for round in $(seq 1 "$rounds"); do
  run floor "$round" --floor
  run dagstream "$round"
  run node-ws "$round" --url "ws://127.0.0.1:$port/api/dags/bench/stream" \
    --publish-url "ws://127.0.0.1:$port/api/dags/bench/publish"
done

p99() { sed -n 's/^publish→receive latency:.*p99 \([0-9.]*\) ms.*/\1/p' "$log.$1.$2"; }
rate_of() { sed -n 's/.*: \([0-9]*\) messages\/s/\1/p' "$log.$1.$2"; }
missed() { sed -n 's/.*dropped: \([0-9]*\)/\1/p' "$log.$1.$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
printf '%-10s %6s %12s %14s %12s %8s\n' server round 'p99 (ms)' 'p99 / floor' 'messages/s' missed
for name in floor dagstream node-ws; do
  for round in $(seq 1 "$rounds"); do
    printf '%-10s %6s %12s %14s %12s %8s\n' "$name" "$round" "$(p99 "$name" "$round")" \
      "$(ratio "$(p99 "$name" "$round")" "$(p99 floor "$round")")" \
      "$(rate_of "$name" "$round")" "$(missed "$name" "$round")"
  done
done
echo
printf '%-10s %20s %26s\n' server 'median p99 (ms)' 'median of p99 / floor'
for name in floor dagstream node-ws; do
  printf '%-10s %20s %26s\n' "$name" \
    "$(for r in $(seq 1 "$rounds"); do p99 "$name" "$r"; done | median)" \
    "$(for r in $(seq 1 "$rounds"); do ratio "$(p99 "$name" "$r")" "$(p99 floor "$r")"; echo; done | median)"
done
