#!/usr/bin/env bash
# The store benchmarks on both databases, side by side: events persisted per second through the
# group-commit writer, and the engine with every event stored, on a SQLite file and on a
# throwaway PostgreSQL (scripts/with-postgres.sh starts and stops it).
#
#   scripts/bench-store.sh BIN [EVENTS]     (default: 100000)
set -euo pipefail
bin=${1:?usage: bench-store.sh BIN [EVENTS]}
events=${2:-100000}
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/scripts/with-postgres.sh" bash -c '
  set -euo pipefail
  bin=$1; events=$2
  echo "== bench store: SQLite file, then PostgreSQL"
  "$bin" bench store --events "$events"
  "$bin" bench store --events "$events" --database "$DAGSTREAM_TEST_POSTGRES"
  echo "== bench engine with every event stored (median of 5): SQLite, then PostgreSQL"
  "$bin" bench engine --store --repeat 5
  "$bin" bench engine --database "$DAGSTREAM_TEST_POSTGRES" --repeat 5
' bench-store "$bin" "$events"
