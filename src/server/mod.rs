//! The HTTP side: the axum router with REST, the WebSocket stream, the Leptos pages and static
//! files, and the state every handler shares.

mod api;
mod error;
mod runs_feed;
mod stream;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use leptos::prelude::LeptosOptions;
use leptos_axum::{LeptosRoutes, generate_route_list};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

pub use error::AppError;
pub use stream::StreamConfig;

use crate::app::{App, shell};
use crate::runs::Runs;

/// What every handler, page and server function can reach.
#[derive(Clone)]
pub struct AppState {
    /// Every run of this server.
    pub runs: Arc<Runs>,
    /// Where the built site (wasm, JS, CSS) is, and the app's name in it.
    pub leptos_options: LeptosOptions,
    /// Becomes `true` when the server shuts down, so open streams close instead of holding
    /// the graceful shutdown open.
    pub shutdown: watch::Receiver<bool>,
    /// Ping interval and the like for stream connections.
    pub stream: StreamConfig,
    /// Open stream connections. Upgraded sockets outlive axum's own connection tracking, so
    /// shutdown waits on this to let every stream send its close frame.
    pub streams: TaskTracker,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
    }
}

/// The whole application as a router; tests serve it on port 0.
pub fn app(state: AppState) -> Router {
    let routes = generate_route_list(App);
    let options = state.leptos_options.clone();
    Router::new()
        .route("/healthz", get(api::health))
        .route("/api/dags", get(api::list_runs).post(api::start_run))
        .route("/api/dags/{dag_id}", get(api::get_run))
        .route("/api/dags/{dag_id}/events", get(api::events))
        .route("/api/dags/{dag_id}/decisions", get(api::decisions))
        .route("/api/dags/{dag_id}/stream", get(stream::handler))
        .route("/api/runs/stream", get(runs_feed::handler))
        .leptos_routes(&state, routes, move || shell(options.clone()))
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
