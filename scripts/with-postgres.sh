#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL server: `scripts/with-postgres.sh cargo test`.
# The server is Debian's `postgresql` package (installed when missing), a new cluster in a temp
# dir on a free loopback port, trust auth, no fsync; its admin URL is exported as
# DAGSTREAM_TEST_POSTGRES. It is stopped and deleted when the command ends, however it ends.
set -euo pipefail

say() { printf '\033[1;34m[postgres]\033[0m %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

if [ -z "$(bindir)" ] || [ ! -x "$(bindir)/pg_ctl" ]; then
  say "installing Debian's postgresql package"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
fi
BIN=$(bindir)

# initdb refuses to run as root: as root, the cluster belongs to the `postgres` user.
run_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

TMP=$(mktemp -d /tmp/dagstream-pg.XXXXXX)
chmod 755 "$TMP"
[ "$(id -u)" -eq 0 ] && chown postgres "$TMP"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

stop() {
  run_pg "$BIN/pg_ctl" -D "$TMP/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap stop EXIT

run_pg "$BIN/initdb" -D "$TMP/data" -U postgres -A trust --no-sync >"$TMP/initdb.log" 2>&1 \
  || { cat "$TMP/initdb.log" >&2; exit 1; }
run_pg "$BIN/pg_ctl" -D "$TMP/data" -l "$TMP/server.log" -t 30 \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $TMP -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
  -w start >/dev/null || { cat "$TMP/server.log" >&2; exit 1; }
export DAGSTREAM_TEST_POSTGRES="postgres://postgres@127.0.0.1:$PORT/postgres"
say "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT ($DAGSTREAM_TEST_POSTGRES)"

set +e
"$@"
status=$?
exit $status
