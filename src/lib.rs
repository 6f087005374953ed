//! dagstream: a DAG execution engine with a live control room in the browser.
//!
//! One crate, built twice: with `ssr` it is the server (engine, event hub, HTTP and WebSocket,
//! server-side rendering); with `hydrate` it is the WebAssembly that takes over the rendered
//! page in the browser. Both share the wire protocol, the reducer and the Leptos app.
//!
//! # Layout
//!
//! - [`protocol`] (both): `ServerEvent` / `ClientEvent`, payload types, and `RunState::apply`,
//!   the one reducer that folds events into the state of a run. The contract is
//!   `docs/protocol.md`, its JSON Schema `schema/protocol.schema.json`.
//! - [`app`] (both): the Leptos pages (the run list, a run with its graph, Gantt view and history
//!   bar, the inbox, two runs compared), the live run
//!   (`app::live_run`), the stream hook, and the gate card (`app::gate_card`).
//! - [`examples`] (both): the bundled example specs, by name.
//! - `engine` (ssr): specs (`spec`), the pure scheduler (`schedule`), rules (`policy`) and gate
//!   forecasts (`forecast`), the coordinator task of each run (`run`), node tasks (`node`) and
//!   command processes (`process`).
//! - `compare` (ssr): two runs side by side, node by node, outputs diffed (the compare page).
//! - `external` (ssr): runs an outside engine drives: definition, event checks, command link.
//! - `hub` (ssr): one room per run: sequenced log, folded state, fan-out to subscribers; the
//!   writer that stores events before anyone sees them (`hub::writer`).
//! - `store` (ssr): the database, a leaf behind the `Store` trait; one file per backend
//!   (`store::sqlite`, `store::postgres`), chosen by the `--database` URL. The database keeps
//!   one decision per gate round (`Store::claim_decision`).
//! - `migrate` (ssr): `dagstream migrate`, copying every run from one database to another.
//! - `notify` (ssr): webhook notifications (gates waiting and decided, spend, run ends): which
//!   events notify (`notify::notice`), signed bodies (`notify::payload`), the outbox and its
//!   delivery loop (`notify::outbox`).
//! - `links` (ssr): approval links, `/gates/{token}`: one per person who may decide a waiting
//!   gate, sent in its notification, usable once while the gate waits.
//! - `metrics` (ssr): `GET /metrics` for Prometheus, and the names of what is recorded.
//! - `telemetry` (ssr): OpenTelemetry traces over OTLP (`--otlp-endpoint`), off by default.
//! - `runs` (ssr): the registry of runs; loads and resumes them from the store at start.
//! - `cluster` (ssr): one instance of a cluster on PostgreSQL and NATS (`serve --nats`): run
//!   leases with fencing, events relayed to every instance, commands forwarded to the owner.
//!   The design is `docs/cluster.md`.
//! - `jobs` (ssr): command nodes on remote workers (`dagstream worker`), through JetStream.
//! - `service` (ssr): every operation a user can ask for (start, list, read, command), once;
//!   REST, the sockets and the server functions are thin adapters over it.
//! - `server` (ssr): the axum router, REST, the WebSocket streams (dashboards and engines),
//!   sign-in and roles.
//! - `cli` (ssr): the `dagstream` command line (its subcommands are listed there).
//! - `bench` (ssr): on-demand benchmarks (`dagstream bench ...`).
//! - `terminal` (ssr): `dagstream run`, one run with a live terminal view.
//!
//! # Words
//!
//! - **store**: the database (`store::Store`); what the browser holds of a run is the *live run*.
//! - **command**: what a client asks of a run (`ClientEvent`: a decision, pause, resume,
//!   cancel); a *command node* runs a shell command, whose *process* `engine::process` manages.
//! - **examples**: the bundled example specs (`examples/*.toml`, [`examples`]).
//!
//! The `Node*` types, from the wire inwards:
//!
//! | type | where | what |
//! |---|---|---|
//! | `NodeStatus`, `NodeKind`, `NodeMetrics` | `protocol` | a node's status, kind and figures on the wire |
//! | `GraphNode` | `protocol` | a node as the graph knows it (id, label, kind), in `dag_mutated` |
//! | `NodeView` | `protocol` | a node in `RunState`: everything the run has told about it |
//! | `NodeFile` | `engine::spec` | a node as a spec file writes it (TOML/JSON) |
//! | `NodeSpec`, `NodeWork` | `engine::spec` | a node validated and ready to run; what work it does |
//! | `NodeRun` | `engine::run` | the coordinator's bookkeeping of one node (attempt, spend, feedback) |
//! | `NodeJob`, `NodeMsg` | `engine::node` | what a node task is given; what it reports back |
//! | `NodeSignal` | `app::live_run` | a node's fine-grained signals in the browser |
//!
//! Modules are folders with a `mod.rs` when they have parts, single files otherwise.

#![recursion_limit = "256"]

pub mod app;
pub mod examples;
pub mod protocol;

#[cfg(feature = "ssr")]
pub mod bench;
#[cfg(feature = "ssr")]
pub mod cli;
#[cfg(feature = "ssr")]
pub mod cluster;
#[cfg(feature = "ssr")]
pub mod compare;
#[cfg(feature = "ssr")]
pub mod engine;
#[cfg(feature = "ssr")]
pub mod external;
#[cfg(feature = "ssr")]
pub mod hub;
#[cfg(feature = "ssr")]
pub mod jobs;
#[cfg(feature = "ssr")]
pub mod links;
#[cfg(feature = "ssr")]
pub mod metrics;
#[cfg(feature = "ssr")]
pub mod migrate;
#[cfg(feature = "ssr")]
pub mod notify;
#[cfg(feature = "ssr")]
pub mod runs;
#[cfg(feature = "ssr")]
pub mod server;
#[cfg(feature = "ssr")]
pub mod service;
#[cfg(feature = "ssr")]
pub mod store;
#[cfg(feature = "ssr")]
pub mod telemetry;
#[cfg(feature = "ssr")]
pub mod terminal;

/// Entry point of the WebAssembly build: hydrates the server-rendered page.
///
/// The page's own code is a split wasm file ([`app::page`]); it is loaded first, then the page
/// hydrates ([`app::hydrate`]) in tasks of its own rather than the one that compiled and
/// instantiated the main module, so none blocks the page for long.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    // A build whose panics abort at once (the release wasm, see the Makefile) never runs a hook.
    #[cfg(not(panic = "immediate-abort"))]
    console_error_panic_hook::set_once();
    reserve_heap();
    wasm_bindgen_futures::spawn_local(async {
        app::page::load_code().await;
        // A task of its own: the split file's load resolves in a microtask, which would otherwise
        // run the hydration in the task that instantiated the main module.
        leptos::prelude::set_timeout(app::hydrate, std::time::Duration::ZERO);
    });
}

/// What the run view of a large run holds at its peak (about 10 MB for 1 000 nodes), reserved
/// once at start.
#[cfg(feature = "hydrate")]
const HEAP_RESERVE: usize = 12 << 20;

/// Grows the wasm memory once, at start, by [`HEAP_RESERVE`]: the allocator keeps the block once
/// freed and serves later allocations from it. Otherwise it grows the memory in 64 KB steps as
/// the page needs them, about 150 times for a large run, most of them while the first snapshot is
/// read (a few milliseconds of that task).
#[cfg(feature = "hydrate")]
fn reserve_heap() {
    drop(std::hint::black_box(Vec::<u8>::with_capacity(HEAP_RESERVE)));
}
