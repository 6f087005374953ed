#!/usr/bin/env bash
# The cluster's figures, in one invocation on a throwaway PostgreSQL and NATS:
#   1. fan-out: the same clients and events against one `serve` and against three `serve --nats`
#      instances (the engine publishes on the first, the clients are spread over all three);
#   2. takeover: the time from SIGKILL of a run's owner to another instance holding the run's
#      lease, median of ROUNDS, with a lease of TTL.
#
#   scripts/bench-cluster.sh BIN [CLIENTS] [EVENTS] [RATE] [ROUNDS] [TTL]
#   (defaults: 1000 200 20 10 2s)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export BENCH_BIN=${1:?usage: bench-cluster.sh BIN [CLIENTS] [EVENTS] [RATE] [ROUNDS] [TTL]}
export BENCH_CLIENTS=${2:-1000} BENCH_EVENTS=${3:-200} BENCH_RATE=${4:-20} BENCH_ROUNDS=${5:-10} BENCH_TTL=${6:-2s}

exec "$root/scripts/with-postgres.sh" "$root/scripts/with-nats.sh" bash -c '
set -euo pipefail
db_url() { echo "${DAGSTREAM_TEST_POSTGRES%/*}/$1"; }
psql -q "$DAGSTREAM_TEST_POSTGRES" -c "CREATE DATABASE bench_fanout" -c "CREATE DATABASE bench_takeover"
log=$(mktemp -d)
common=(bench fanout --clients "$BENCH_CLIENTS" --events "$BENCH_EVENTS" --rate "$BENCH_RATE")
echo "== one instance"
"$BENCH_BIN" "${common[@]}" | tee "$log/single"
echo "== three instances"
"$BENCH_BIN" "${common[@]}" --cluster --database "$(db_url bench_fanout)" --nats "$DAGSTREAM_TEST_NATS" | tee "$log/cluster"
# Throughput: as many events as the servers take, no rate.
burst=(bench fanout --clients "$BENCH_CLIENTS" --events 5000)
echo "== one instance, as fast as it takes them"
"$BENCH_BIN" "${burst[@]}" | tee "$log/single-burst"
echo "== three instances, as fast as they take them"
"$BENCH_BIN" "${burst[@]}" --cluster --database "$(db_url bench_fanout)" --nats "$DAGSTREAM_TEST_NATS" | tee "$log/cluster-burst"
p99() { sed -n "s/^publish→receive latency:.*p99 \([0-9.]*\) ms.*/\1/p" "$log/$1"; }
rate_of() { sed -n "s/.*: \([0-9]*\) messages\/s/\1/p" "$log/$1"; }
echo
printf "%-16s %14s %14s %22s\n" "" "p99 (ms)" "messages/s" "burst messages/s"
printf "%-16s %14s %14s %22s\n" "one instance" "$(p99 single)" "$(rate_of single)" "$(rate_of single-burst)"
printf "%-16s %14s %14s %22s\n" "three instances" "$(p99 cluster)" "$(rate_of cluster)" "$(rate_of cluster-burst)"
python3 -c "import sys; a, b = map(float, sys.argv[1:]); print(f\"cluster p99 / single p99: {b / a:.2f}x\")" "$(p99 single)" "$(p99 cluster)"

# Takeover: two instances; a run with a command of 20 s starts, its owner is killed, and the time
# until the other instance holds the lease is measured.
echo
echo "== takeover after SIGKILL (lease $BENCH_TTL), $BENCH_ROUNDS rounds"
export DAGSTREAM_TOKEN=bench-cluster-admin-token
site=$(mktemp -d); mkdir -p "$site/pkg"; echo "// no site" > "$site/pkg/dagstream.js"
url=$(db_url bench_takeover)
declare -A pid
start() {
  "$BENCH_BIN" serve --addr "127.0.0.1:$2" --data "$log/$1" --site-root "$site" --database "$url" \
    --nats "$DAGSTREAM_TEST_NATS" --instance-id "$1" --lease-ttl "$BENCH_TTL" >"$log/$1.log" 2>&1 &
  pid[$1]=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$2/healthz" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "instance $1 did not start" >&2; cat "$log/$1.log" >&2; exit 1
}
port_of() { if [ "$1" = a ]; then echo 3201; else echo 3202; fi; }
trap "kill \${pid[a]:-} \${pid[b]:-} 2>/dev/null; wait" EXIT
start a 3201; start b 3202
spec=$(printf "name = \"takeover\"\n[[nodes]]\nid = \"long\"\nkind = \"command\"\nrun = \"sleep 20\"\n")
times=()
for round in $(seq 1 "$BENCH_ROUNDS"); do
  dag=$(curl -sf -X POST -H "Authorization: Bearer $DAGSTREAM_TOKEN" -H "Content-Type: application/toml" \
    --data-binary "$spec" http://127.0.0.1:3201/api/dags | python3 -c "import json, sys; print(json.load(sys.stdin)[\"dag_id\"])")
  owner=""
  until [ -n "$owner" ]; do owner=$(psql -tAq "$url" -c "SELECT owner FROM runs WHERE dag_id = '\''$dag'\'' AND epoch > 0"); sleep 0.05; done
  sleep 1
  kill -9 "${pid[$owner]}"; t0=$(date +%s%N)
  wait "${pid[$owner]}" 2>/dev/null || true
  while :; do
    now=$(psql -tAq "$url" -c "SELECT owner FROM runs WHERE dag_id = '\''$dag'\''")
    [ "$now" != "$owner" ] && break
    sleep 0.02
  done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  times+=("$ms")
  echo "round $round: owner $owner killed, $now took over after $ms ms"
  start "$owner" "$(port_of "$owner")"
done
printf "%s\n" "${times[@]}" | sort -n | python3 -c "import statistics, sys; t = [int(l) for l in sys.stdin]; print(f\"takeover: median {statistics.median(t):.0f} ms, min {min(t)} ms, max {max(t)} ms over {len(t)} rounds\")"
'
