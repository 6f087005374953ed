//! The Leptos app, rendered on the server and hydrated in the browser: the run list (`/`), the
//! run view (`/dags/{dag_id}`), the live run (`live_run`) and the stream hook.
//!
//! Each page is a document of its own ([`page`]): in the browser its code is a wasm file of its
//! own, which the server names in `<head>` and the browser loads before it hydrates.
//!
//! Server functions have fixed endpoints (`/api/<name>`). The default URL ends in a hash of the
//! crate's directory, so a server and a wasm built from two checkouts that share a target
//! directory (CI does) would miss each other.

pub mod clock;
mod compare_page;
mod gantt;
mod gate_card;
mod graph;
mod history;
pub mod inbox;
mod json_text;
pub mod layout;
pub mod live_run;
mod node_panel;
pub mod page;
mod run_page;
pub mod runs_feed;
mod runs_page;
mod scrub;
pub mod socket;
pub mod spend;
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

/// The page: the top bar, then the page its address names. The browser hydrates the two parts
/// one after the other ([`hydrate`]), so the parts here and there must stay these two.
#[component]
pub fn App() -> impl IntoView {
    provide_signed_in_user();
    inbox::provide_inbox();
    view! {
        <header class="topbar"><TopBar/></header>
        <main><PageView/></main>
    }
}

/// Loads who is signed in, for the top bar and the page. Called first, by the server and the
/// browser alike: serialized resources are matched up by the order they are created in.
fn provide_signed_in_user() {
    provide_context(SignedInUser(Resource::new(|| (), |_| current_user())));
}

/// The top bar's contents.
#[component]
fn TopBar() -> impl IntoView {
    view! {
        <a href="/" class="brand">"dagstream"</a>
        <span class="tagline">"control room"</span>
        <inbox::InboxCount/>
        <SignedInAs/>
    }
}

/// The contents of `<main>`: the page the address names.
#[component]
fn PageView() -> impl IntoView {
    page::Page::current().view()
}

/// Hydrates the server-rendered [`App`] in two tasks: the top bar in this one, the page in the
/// next. Both parts share one reactive root and its hydration context, as one pass would; the
/// split keeps each task short while V8 compiles the wasm functions each part runs for the first
/// time (hydrating a run view in one pass took 20-55 ms, most of it that compiling).
#[cfg(feature = "hydrate")]
pub fn hydrate() {
    use std::sync::Arc;

    use hydration_context::HydrateSharedContext;
    use leptos::tachys::hydration::Cursor;
    use leptos::tachys::view::{PositionState, RenderHtml};

    let parts = ["body > header.topbar", "body > main"].map(|selector| document().query_selector(selector));
    let [Ok(Some(top_bar)), Ok(Some(main))] = parts else {
        leptos::logging::error!("dagstream: the page has no top bar or no <main>: it stays as the server sent it");
        return;
    };
    // Effects and resources run on Leptos's executor. An `Err` only says it was started before.
    _ = any_spawner::Executor::init_wasm_bindgen();
    let owner = Owner::new_root(Some(Arc::new(HydrateSharedContext::new())));
    owner.with(|| {
        provide_signed_in_user();
        inbox::provide_inbox();
        // The views hydrated here live as long as the page: their state is never dropped.
        std::mem::forget(view! { <TopBar/> }.hydrate::<true>(&Cursor::new(top_bar), &PositionState::default()));
    });
    set_timeout(
        move || {
            owner.with(|| {
                std::mem::forget(view! { <PageView/> }.hydrate::<true>(&Cursor::new(main), &PositionState::default()));
                if let Some(context) = Owner::current_shared_context() {
                    context.hydration_complete();
                }
            });
            // The root lives as long as the page.
            std::mem::forget(owner);
        },
        std::time::Duration::ZERO,
    );
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
    Ok(service()?.list())
}

/// One run as its page starts (see [`live_run::RunHead`]), or `None` if there is no such run.
#[server(endpoint = "get_run", output = json_text::JsonText)]
pub async fn get_run(dag_id: String) -> Result<Option<live_run::RunHead>, ServerFnError> {
    use crate::service::ServiceError;
    match service()?.state(&dag_id).await {
        Ok(state) => Ok(Some(live_run::RunHead::new(state))),
        // The page says so itself (with a 404 status for the document).
        Err(ServiceError::NotFound(_)) => Ok(None),
        Err(error) => Err(server_error(error)),
    }
}

/// Who is signed in (every page request is signed in; the login middleware sees to it).
#[server(endpoint = "current_user", output = json_text::JsonText)]
pub async fn current_user() -> Result<Option<SignedIn>, ServerFnError> {
    Ok(caller().ok())
}

/// Starts the bundled example `name` and sends the browser to its run view.
#[server(endpoint = "start_example")]
pub async fn start_example(name: String) -> Result<String, ServerFnError> {
    use crate::service::StartRequest;
    let dag_id = service()?.start(&caller()?, StartRequest::Example(name)).await.map_err(server_error)?;
    leptos_axum::redirect(&format!("/dags/{dag_id}"));
    Ok(dag_id)
}

// ---- what server functions share: thin adapters over crate::service ------------------------

/// The operations, from the server function's context (the server provides it).
#[cfg(feature = "ssr")]
fn service() -> Result<crate::service::Service, ServerFnError> {
    use_context::<crate::service::Service>().ok_or_else(|| {
        server_error(crate::service::ServiceError::Internal(
            "the service is not in the server function's context".into(),
        ))
    })
}

/// The signed-in user of the request being served (the login middleware lets no other through).
#[cfg(feature = "ssr")]
fn caller() -> Result<SignedIn, ServerFnError> {
    use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<SignedIn>().cloned())
        .ok_or_else(|| server_error(crate::service::ServiceError::Forbidden("sign in first".into())))
}

/// A service error as a server function's error: the response gets the error's status (a
/// client's mistake is a 4xx, never a 500) and the message; our own faults are logged and
/// reach the browser only as "internal error".
#[cfg(feature = "ssr")]
fn server_error(error: crate::service::ServiceError) -> ServerFnError {
    if let crate::service::ServiceError::Internal(detail) = &error {
        tracing::error!(%detail, "server function failed");
    }
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(error.http_status());
    }
    ServerFnError::new(error.to_string())
}
