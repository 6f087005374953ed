//! The HTTP side: the axum router with REST, the WebSocket stream, the Leptos pages and static
//! files, and the state every handler shares.

mod api;
pub mod auth;
mod engine_socket;
mod error;
mod feeds;
mod gate_page;
pub mod listen;
mod login;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::{HeaderValue, StatusCode, header};
use axum::routing::{get, post};
use leptos::prelude::{LeptosOptions, provide_context};
use leptos_axum::LeptosRoutes;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::{SetResponseHeader, SetResponseHeaderLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use auth::{Auth, AuthSettings, Identity};
pub use error::AppError;
pub use stream::StreamConfig;

use crate::app::shell;
use crate::service::Service;

/// What every handler, page and server function can reach.
#[derive(Clone)]
pub struct AppState {
    /// Every operation on the runs of this server (and the registry behind them).
    pub service: Service,
    /// Who may sign in, their sessions and roles.
    pub auth: Arc<Auth>,
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
    /// How long a request may take to be answered ([`REQUEST_TIMEOUT`] when serving); 408 after.
    pub request_timeout: Duration,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
    }
}

/// Largest request body (a spec); bigger ones get 413.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long a request may take to be answered (a WebSocket is answered by its upgrade), unless
/// [`AppState::request_timeout`] says otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The whole application as a router; tests serve it on port 0.
pub fn app(state: AppState) -> Router {
    // Counters and histograms count from here.
    crate::metrics::install();
    let options = state.leptos_options.clone();
    let site_shell = {
        let options = options.clone();
        move || shell(options.clone())
    };
    // The pages, rendered in order: the HTML is complete (no fallback swapped in by script), so a
    // page reads right before, and without, any JS. The app picks the page from the path
    // (`app::page`); any other path gets the not-found page from the fallback, with a 404.
    let page = leptos_axum::render_app_to_stream_in_order_with_context(
        {
            let service = state.service.clone();
            move || provide_context(service.clone())
        },
        site_shell.clone(),
    );
    let site_pkg_dir = std::path::Path::new(&*options.site_root).join(&*options.site_pkg_dir);
    Router::new()
        .route("/healthz", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/login", get(login::page).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/api/me", get(api::me))
        .route("/api/dags", get(api::list_runs).post(api::start_run))
        .route("/api/dags/{dag_id}", get(api::get_run))
        .route("/api/dags/{dag_id}/events", get(api::events))
        .route("/api/dags/{dag_id}/decisions", get(api::decisions))
        .route("/api/dags/{dag_id}/notifications", get(api::notifications))
        .route("/api/dags/{dag_id}/nodes/{node_id}/retry", post(api::retry_node))
        .route("/api/dags/{dag_id}/nodes/{node_id}/rerun", post(api::rerun_node))
        .route("/api/dags/{dag_id}/again", post(api::run_again))
        .route("/api/compare", get(api::compare))
        .route("/api/dags/{dag_id}/stream", get(stream::handler))
        .route("/api/dags/{dag_id}/engine", get(engine_socket::handler))
        .route("/api/runs/stream", get(feeds::runs_handler))
        .route("/api/inbox/stream", get(feeds::inbox_handler))
        .route("/gates/{token}", get(gate_page::page).post(gate_page::decide))
        .route("/", get(page.clone()))
        .route("/dags/{dag_id}", get(page.clone()))
        .route("/inbox", get(page.clone()))
        .route("/compare", get(page))
        .nest_service("/pkg", site_files(site_pkg_dir))
        // No Leptos routes (the app has no router): this registers the server functions, which
        // find the service in their context (and who is signed in among the request's parts).
        .leptos_routes_with_context(
            &state,
            Vec::new(),
            {
                let service = state.service.clone();
                move || provide_context(service.clone())
            },
            site_shell,
        )
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(axum::middleware::from_fn_with_state(state.clone(), login::require_login))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, state.request_timeout))
        .layer(CompressionLayer::new())
        // Logs the method and path only: query strings (a login token), headers (a bearer
        // token, a session cookie) and approval links' tokens never reach the log.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            tracing::debug_span!("request", method = %request.method(), path = %loggable_path(request.uri().path()))
        }))
        .with_state(state)
}

/// A request's path as the log shows it: an approval link's token is its credential.
fn loggable_path(path: &str) -> &str {
    if path.starts_with("/gates/") { "/gates/…" } else { path }
}

/// The built code and styles (`/pkg/…`): the precompressed files of `make build` when the browser
/// takes them, and `no-cache`, so every page load revalidates them (a conditional request,
/// answered 304 while unchanged). The main wasm, its per-page split files and the JS that loads
/// them must come from one build; without the header a browser may reuse a file it fetched before
/// an upgrade next to new ones. One URL has several encodings, so caches key on the encoding.
fn site_files(pkg_dir: std::path::PathBuf) -> SetResponseHeader<SetResponseHeader<ServeDir, HeaderValue>, HeaderValue> {
    ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .layer(SetResponseHeaderLayer::overriding(header::VARY, HeaderValue::from_static("accept-encoding")))
        .service(ServeDir::new(pkg_dir).precompressed_br().precompressed_gzip())
}

/// Lets a WebSocket upgrade through: the page must be of this site (or an allowed origin) and
/// the user below their connection cap. The slot is held for as long as the socket is open.
fn admit_socket(
    state: &AppState,
    identity: &Identity,
    headers: &axum::http::HeaderMap,
) -> Result<auth::ConnectionSlot, AppError> {
    state.auth.check_origin(headers, identity).map_err(AppError::Forbidden)?;
    state.auth.open_connection(&identity.name).ok_or_else(|| {
        AppError::TooManyRequests(format!("{} has too many open connections: close some first", identity.name))
    })
}
