#!/usr/bin/env bash
# `make cluster`: a whole cluster on this machine in one command. A throwaway PostgreSQL
# (scripts/with-postgres.sh), a NATS server with JetStream (scripts/with-nats.sh), three
# `dagstream serve --nats` instances on 127.0.0.1:3001-3003, each printing its sign-in link, and
# two `dagstream worker`s of pool "batch" (command nodes with `pool = "batch"` run there).
# Ctrl-C stops the instances (each hands its runs over), then NATS and PostgreSQL, and deletes
# their data.
#
#   scripts/cluster.sh BIN SITE_ROOT
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export DAGSTREAM_BIN=${1:-$ROOT/target/release/dagstream}
export DAGSTREAM_SITE=${2:-$ROOT/target/site}
export DAGSTREAM_CLUSTER_DATA=${DATA:-$ROOT/data}/cluster
export DAGSTREAM_TOKEN=${DAGSTREAM_TOKEN:-$(python3 -c 'import secrets; print(secrets.token_hex(16))')}

# Ctrl-C reaches every process of the terminal's group; a SIGINT or SIGTERM sent to this script
# alone is passed on to the whole group the same way, so nothing is left running.
trap 'trap - INT TERM; kill -INT 0 2>/dev/null; wait' INT TERM
"$ROOT/scripts/with-postgres.sh" "$ROOT/scripts/with-nats.sh" bash -c '
  set -euo pipefail
  pids=()
  stop() {
    trap - INT TERM EXIT
    [ ${#pids[@]} -gt 0 ] || return 0
    kill -INT "${pids[@]}" 2>/dev/null
    # Each instance hands its runs over and each worker finishes its jobs; whatever is still
    # running after 15 s is killed.
    for _ in $(seq 1 150); do
      alive=0
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null
    wait
  }
  trap stop INT TERM EXIT
  for n in 1 2 3; do
    mkdir -p "$DAGSTREAM_CLUSTER_DATA/instance-$n"
    "$DAGSTREAM_BIN" serve --addr "127.0.0.1:300$n" --data "$DAGSTREAM_CLUSTER_DATA/instance-$n" \
      --site-root "$DAGSTREAM_SITE" --database "$DAGSTREAM_TEST_POSTGRES" --nats "$DAGSTREAM_TEST_NATS" \
      --instance-id "instance-$n" >"$DAGSTREAM_CLUSTER_DATA/instance-$n.log" 2>&1 &
    pids+=($!)
  done
  for n in 1 2; do
    "$DAGSTREAM_BIN" worker --nats "$DAGSTREAM_TEST_NATS" --pool batch --id "worker-$n" \
      --work "$DAGSTREAM_CLUSTER_DATA/worker-$n" >"$DAGSTREAM_CLUSTER_DATA/worker-$n.log" 2>&1 &
    pids+=($!)
  done
  for n in 1 2 3; do
    for _ in $(seq 1 100); do
      curl -sf "http://127.0.0.1:300$n/healthz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -sf "http://127.0.0.1:300$n/healthz" >/dev/null \
      || { echo "instance $n did not start:"; cat "$DAGSTREAM_CLUSTER_DATA/instance-$n.log"; exit 1; }
    echo "dagstream instance-$n: sign in at http://127.0.0.1:300$n/login?token=$DAGSTREAM_TOKEN"
  done
  echo "two workers of pool \"batch\" run the command nodes with pool = \"batch\""
  echo "logs in $DAGSTREAM_CLUSTER_DATA/{instance,worker}-N.log; Ctrl-C stops the cluster"
  wait
' &
wait
