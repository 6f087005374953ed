//! The Leptos app, rendered on the server and hydrated in the browser: the run list (`/`), the
//! run view (`/dags/{dag_id}`), the client store and the stream hook.
//!
//! Each page is a document of its own ([`page`]): in the browser its code is a wasm file of its
//! own, which the server names in `<head>` and the browser loads before it hydrates.
//!
//! Server functions have fixed endpoints (`/api/<name>`). The default URL ends in a hash of the
//! crate's directory, so a server and a wasm built from two checkouts that share a target
//! directory (CI does) would miss each other.

pub mod clock;
mod graph;
mod history;
mod json_text;
pub mod layout;
mod node_panel;
pub mod page;
mod run_page;
pub mod runs_feed;
mod runs_page;
pub mod spend;
pub mod store;
pub mod stream;

use leptos::prelude::*;
use leptos_meta::{MetaTags, provide_meta_context};

use crate::protocol::{Role, RunSummary, SignedIn};

/// The HTML document around the app (rendered on the server only). The meta context carries the
/// preload links of the page's split wasm files into `<head>` (`MetaTags`); the app itself sets
/// no meta tags, so the browser's code has no meta context.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    provide_meta_context();
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <title>"dagstream"</title>
                <link rel="icon" href="/favicon.ico"/>
                // `id="leptos"`: the stylesheet `cargo leptos watch` swaps when the CSS changes.
                <link rel="stylesheet" id="leptos" href="/pkg/dagstream.css"/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_context(SignedInUser(Resource::new(|| (), |_| current_user())));
    view! {
        <header class="topbar">
            <a href="/" class="brand">"dagstream"</a>
            <span class="tagline">"control room"</span>
            <SignedInAs/>
        </header>
        <main>{page::Page::current().view()}</main>
    }
}

/// The signed-in user, loaded once per page load and shared by the header and the pages.
#[derive(Clone, Copy)]
pub struct SignedInUser(Resource<Result<Option<SignedIn>, ServerFnError>>);

impl SignedInUser {
    /// Whether the signed-in user has at least `role`.
    pub async fn has(self, role: Role) -> bool {
        self.0.await.ok().flatten().is_some_and(|user| user.role.allows(role))
    }
}

/// Who is signed in, with their role, and the sign-out button.
#[component]
fn SignedInAs() -> impl IntoView {
    let user = expect_context::<SignedInUser>().0;
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                user.await.ok().flatten().map(|user| {
                    view! {
                        <form class="signed-in" method="post" action="/logout">
                            <span data-testid="signed-in">{user.name}</span>
                            <span class="badge role">{user.role.as_str()}</span>
                            <button type="submit" class="link" data-testid="sign-out">"Sign out"</button>
                        </form>
                    }
                })
            })}
        </Suspense>
    }
}

/// Every run, newest first.
#[server(endpoint = "list_runs", output = json_text::JsonText)]
pub async fn list_runs() -> Result<Vec<RunSummary>, ServerFnError> {
    Ok(server_state()?.runs.list())
}

/// One run as its page starts (see [`store::RunHead`]), or `None` if there is no such run.
#[server(endpoint = "get_run", output = json_text::JsonText)]
pub async fn get_run(dag_id: String) -> Result<Option<store::RunHead>, ServerFnError> {
    Ok(server_state()?.runs.get(&dag_id).map(|run| store::RunHead::new(run.room.snapshot())))
}

/// Who is signed in (every page request is signed in; the login middleware sees to it).
#[server(endpoint = "current_user", output = json_text::JsonText)]
pub async fn current_user() -> Result<Option<SignedIn>, ServerFnError> {
    Ok(identity().map(|identity| identity.signed_in()))
}

/// Starts the bundled example `name` and sends the browser to its run view.
#[server(endpoint = "start_example")]
pub async fn start_example(name: String) -> Result<String, ServerFnError> {
    require(crate::protocol::Role::Admin, "start runs")?;
    let spec = crate::engine::examples::by_name(&name)
        .ok_or_else(|| ServerFnError::new(format!("no example called {name:?}")))?
        .map_err(|e| ServerFnError::new(format!("example {name}: {e}")))?;
    let dag_id = server_state()?.runs.start(spec).await.map_err(|e| ServerFnError::new(e.to_string()))?;
    leptos_axum::redirect(&format!("/dags/{dag_id}"));
    Ok(dag_id)
}

#[cfg(feature = "ssr")]
fn server_state() -> Result<crate::server::AppState, ServerFnError> {
    use_context::<crate::server::AppState>().ok_or_else(|| ServerFnError::new("server state is missing"))
}

/// The signed-in user of the request being served.
#[cfg(feature = "ssr")]
fn identity() -> Option<crate::server::Identity> {
    use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<crate::server::Identity>().cloned())
}

/// `Err` unless the signed-in user has at least `role`.
#[cfg(feature = "ssr")]
pub fn require(role: crate::protocol::Role, to: &str) -> Result<(), ServerFnError> {
    let identity = identity().ok_or_else(|| ServerFnError::new("sign in first"))?;
    identity.require(role, to).map_err(ServerFnError::new)
}
