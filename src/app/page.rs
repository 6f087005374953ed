//! Which page a path shows, and each page's code as a split point of its own.
//!
//! The dashboard has four pages (the run list, a run, the inbox, two runs compared), and each is a plain document:
//! the server renders the one the address names, the browser hydrates it, and a link to another
//! page loads that page. There is no client-side router: its code was about a third of the shared
//! wasm, for switching between pages that the server renders in a few milliseconds.
//!
//! Each page's view is a `#[lazy]` function, so `cargo leptos build --split` puts its code in a
//! wasm file of its own. The server names that file in `<head>` (a preload link) while it renders
//! the page, and the browser loads it before hydrating ([`load_code`]), so the page's view is at
//! hand, with nothing to wait for, when hydration reaches it.

use leptos::prelude::*;

/// A page of the dashboard, as its address names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Page {
    /// `/`: every run, and the ways to start one.
    Runs,
    /// `/dags/{dag_id}`: one run's control room.
    Run { dag_id: String },
    /// `/inbox`: every gate that waits for the signed-in person.
    Inbox,
    /// `/compare?a=…&b=…`: two runs side by side.
    Compare,
    /// Any other address.
    NotFound,
}

impl Page {
    /// The page `path` (an address's path, without query or fragment) names. A run id is
    /// percent-decoded, as the server's routes decode it.
    pub fn from_path(path: &str) -> Page {
        if path == "/" {
            return Page::Runs;
        }
        if path == "/inbox" {
            return Page::Inbox;
        }
        if path == "/compare" {
            return Page::Compare;
        }
        match path.strip_prefix("/dags/") {
            Some(segment) if !segment.is_empty() && !segment.contains('/') => {
                match percent_encoding::percent_decode_str(segment).decode_utf8() {
                    Ok(dag_id) => Page::Run { dag_id: dag_id.into_owned() },
                    Err(_) => Page::NotFound,
                }
            }
            Some(_) | None => Page::NotFound,
        }
    }

    /// The page being rendered: on the server, the request's; in the browser, the document's.
    pub fn current() -> Page {
        Page::from_path(&current_path())
    }

    /// The page's view. Its code arrives with [`load_code`] first, so in the browser this is ready
    /// at once and hydrates synchronously, as the server rendered it.
    pub fn view(self) -> impl IntoView {
        Suspend::new(async move {
            match self {
                Page::Runs => super::runs_page::runs_page().await,
                Page::Run { dag_id } => super::run_page::run_page(dag_id).await,
                Page::Inbox => super::inbox::inbox_page().await,
                Page::Compare => super::compare_page::compare_page().await,
                Page::NotFound => view! { <p class="empty">"Page not found."</p> }.into_any(),
            }
        })
    }
}

/// The path of the request being rendered (leptos_axum puts the request's parts in context while
/// it renders a page).
#[cfg(feature = "ssr")]
fn current_path() -> String {
    use_context::<axum::http::request::Parts>().map(|parts| parts.uri.path().to_owned()).unwrap_or_default()
}

/// The path of the document's address.
#[cfg(not(feature = "ssr"))]
fn current_path() -> String {
    window().location().pathname().unwrap_or_default()
}

/// The value of parameter `name` in the address's query (form-encoded), if it has one.
pub fn query_param(name: &str) -> Option<String> {
    let query = current_query();
    form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(feature = "ssr")]
fn current_query() -> String {
    use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.uri.query().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(not(feature = "ssr"))]
fn current_query() -> String {
    window().location().search().unwrap_or_default()
}

/// Fetches and instantiates the current page's split wasm file (the one its preload link named,
/// so usually already downloaded). Loading a split file that fails to arrive stops the wasm, as a
/// lazy route did.
#[cfg(feature = "hydrate")]
pub async fn load_code() {
    // `#[lazy]` generates `__preload_<name>` next to each split function: it loads the file
    // without calling the function (leptos_router's lazy routes call it the same way).
    match Page::current() {
        Page::Runs => super::runs_page::__preload_runs_page().await,
        Page::Run { .. } => super::run_page::__preload_run_page().await,
        Page::Inbox => super::inbox::__preload_inbox_page().await,
        Page::Compare => super::compare_page::__preload_compare_page().await,
        Page::NotFound => {}
    }
}

#[cfg(test)]
mod tests {
    use super::Page;

    #[test]
    fn the_root_is_the_run_list() {
        assert_eq!(Page::from_path("/"), Page::Runs);
        assert_eq!(Page::from_path("/inbox"), Page::Inbox);
        assert_eq!(Page::from_path("/compare"), Page::Compare);
    }

    #[test]
    fn a_run_address_names_its_run_percent_decoded() {
        assert_eq!(Page::from_path("/dags/abc123"), Page::Run { dag_id: "abc123".into() });
        assert_eq!(Page::from_path("/dags/nightly%20build"), Page::Run { dag_id: "nightly build".into() });
    }

    #[test]
    fn other_addresses_are_not_found() {
        for path in ["", "/dags", "/dags/", "/dags/a/b", "/runs", "//", "/dags/%FF", "/favicon"] {
            assert_eq!(Page::from_path(path), Page::NotFound, "{path:?}");
        }
    }
}
