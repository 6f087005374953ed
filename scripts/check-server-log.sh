#!/usr/bin/env bash
# Fails when the server logged an ERROR line (a 5xx answer is logged at ERROR by the request
# trace layer, `tower_http::trace::on_failure`, as is any failure of our own) in the output of an
# end-to-end run: a client's mistake must be a 4xx, and nothing in the suite asks for a server
# error. Usage: scripts/check-server-log.sh LOG
set -euo pipefail
log=${1:?usage: check-server-log.sh LOG}
# tracing's lines: a timestamp, the level, the target; colours stripped first.
errors=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z +ERROR ' || true)
if [ -n "$errors" ]; then
  echo "[e2e] the server logged errors during the suite (a 5xx or a failure no test asked for):" >&2
  echo "$errors" >&2
  exit 1
fi
echo "[e2e] the server logged no error"
