# dagstream: the two commands a newcomer needs are `make run` and `make test`.
# Both install whatever is missing first (scripts/setup.sh), so a fresh machine with only the
# Rust toolchain, Node/npm and Python is enough.

SHELL := /bin/bash
CARGO_BIN := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin
export PATH := $(CARGO_BIN):$(CURDIR)/end2end/node_modules/.bin:$(PATH)
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
ADDR ?= 127.0.0.1:3000
DATA ?= ./data
# The admin token of the servers the end-to-end suite starts (a test token, not a secret).
E2E_TOKEN := e2e-admin-token-not-a-secret

.PHONY: cluster run test build setup setup-test unit e2e check fmt bench bench-dashboard fuzz

## Build the release site and serve the dashboard on http://$(ADDR)
run: build
	$(TARGET_DIR)/release/dagstream serve --addr $(ADDR) --data $(DATA) --site-root target/site

## A cluster on this machine: a throwaway PostgreSQL, NATS, and three instances on
## 127.0.0.1:3001-3003 sharing every run (docs/cluster.md); Ctrl-C stops it all
cluster: build
	scripts/cluster.sh $(TARGET_DIR)/release/dagstream target/site

## Run every test: Rust unit and integration tests (the store's on SQLite and on a throwaway
## PostgreSQL that scripts/with-postgres.sh starts and stops; the cluster's with a NATS server
## scripts/with-nats.sh starts and stops), then Playwright in Chromium
test: setup-test
	DAGSTREAM_PYTHON=$(CURDIR)/end2end/.venv/bin/python scripts/with-postgres.sh scripts/with-nats.sh cargo test --features ssr
	$(E2E)

# The end-to-end suite, with the server's log kept: a server ERROR line (a 5xx included) that no
# test asked for fails the run (scripts/check-server-log.sh).
E2E_LOG := target/e2e-server.log
define E2E
	mkdir -p target
	set -o pipefail; DAGSTREAM_TOKEN=$(E2E_TOKEN) DAGSTREAM_BIN=$(TARGET_DIR)/debug/dagstream \
	  cargo leptos end-to-end --split 2>&1 | tee $(E2E_LOG)
	scripts/check-server-log.sh $(E2E_LOG)
endef

# Release builds erase component types (smaller wasm); debug builds and `cargo test` keep them, so
# lifetime errors that erasure would hide still show up there. `--split` (here and in the
# end-to-end run) puts each page's code in a wasm file of its own, loaded with that page.
#
# The release wasm also gets a standard library built for size (`-Zbuild-std`, its
# `optimize_for_size` feature), panics that stop the wasm at once (no panic messages, hook or
# source locations in it) and derived `Debug` output cut to the type or variant name
# (`-Zfmt-debug=shallow`; no page text uses it): about 35 KB brotli less per page. These options
# are unstable; the stable toolchain takes them with RUSTC_BOOTSTRAP=1, for the wasm only (the
# server keeps its panics and messages), and they need the `rust-src` component, which setup
# adds. Without it the build uses the shipped standard library and says so. A panic in the
# browser then shows as "unreachable executed" in the console; debug builds (`make e2e`) keep
# the messages.
ERASE := --cfg erase_components
WASM_SIZE_FLAGS := -Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none -Zfmt-debug=shallow
WASM_SIZE_ARGS := --lib-cargo-args=-Zbuild-std=std,panic_abort --lib-cargo-args=-Zbuild-std-features=optimize_for_size
build: setup
	@if [ -d "$$(rustc --print sysroot)/lib/rustlib/src/rust/library/std" ]; then \
	  set -x; env -u RUSTFLAGS RUSTC_BOOTSTRAP=1 CARGO_BUILD_RUSTFLAGS="$(ERASE)" \
	    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$(ERASE) $(WASM_SIZE_FLAGS)" \
	    cargo leptos build --release --split --precompress $(WASM_SIZE_ARGS); \
	else \
	  echo "[build] no rust-src component: the wasm is built with the shipped standard library (larger)"; \
	  set -x; RUSTFLAGS="$(RUSTFLAGS) $(ERASE)" cargo leptos build --release --split --precompress; \
	fi

setup:
	scripts/setup.sh build

setup-test:
	scripts/setup.sh test

unit:
	DAGSTREAM_PYTHON=$(CURDIR)/end2end/.venv/bin/python scripts/with-postgres.sh scripts/with-nats.sh cargo test --features ssr

e2e: setup-test
	$(E2E)

## Benchmarks, on demand (figures, not pass/fail)
bench: build
	$(TARGET_DIR)/release/dagstream bench engine
	$(TARGET_DIR)/release/dagstream bench engine --store --subscriber
	# Events stored per second and the engine with a store, on SQLite and on PostgreSQL.
	scripts/bench-store.sh $(TARGET_DIR)/release/dagstream
	$(TARGET_DIR)/release/dagstream bench fanout --clients 1000 --events 20000
	$(TARGET_DIR)/release/dagstream bench fanout --clients 10000 --events 0
	# Latency at 1 000 subscribers x 20 events/s: the machine's floor, dagstream and the seed's
	# Node ws server, side by side on the same clients.
	scripts/bench-fanout.sh $(TARGET_DIR)/release/dagstream 1000 200 20
	# The cluster: fan-out over three instances against one, and the takeover time after a
	# SIGKILL of a run's owner (median of 10), on a throwaway PostgreSQL and NATS.
	scripts/bench-cluster.sh $(TARGET_DIR)/release/dagstream 1000 200 20 10 2s

bench-dashboard: build setup-test
	cd end2end && DAGSTREAM_TOKEN=$(E2E_TOKEN) DAGSTREAM_BIN=$(TARGET_DIR)/release/dagstream node bench/dashboard.mjs
	scripts/wasm-size.py target/site/pkg

## Fuzz the client-event and spec parsers longer than `make test` does
fuzz:
	PROPTEST_CASES=$(or $(CASES),50000) cargo test --release --features ssr --test fuzz

## Type-check both targets as the release build sees them
check:
	cargo check --features ssr --all-targets
	cargo check --lib --target wasm32-unknown-unknown --no-default-features --features hydrate

fmt:
	cargo fmt
