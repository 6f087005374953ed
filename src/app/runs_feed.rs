//! `use_runs_feed`: keeps the run list live from `/api/runs/stream`, reconnecting with backoff.
//! Same signature on both targets; on the server it only holds the list it was given.

use leptos::prelude::*;

use crate::protocol::RunSummary;

/// The run list, newest first, starting from `initial` and kept current in the browser; and
/// whether the feed is live (its first message arrived, so no later change can be missed).
pub fn use_runs_feed(initial: Vec<RunSummary>) -> (RwSignal<Vec<RunSummary>>, ReadSignal<bool>) {
    let runs = RwSignal::new(initial);
    let live = RwSignal::new(false);
    #[cfg(feature = "hydrate")]
    browser::start(runs, live);
    (runs, live.read_only())
}

/// Applies one feed message to the list, newest first.
pub fn apply(list: &mut Vec<RunSummary>, event: crate::protocol::RunsFeedEvent) {
    use crate::protocol::RunsFeedEvent;
    match event {
        RunsFeedEvent::Runs { runs } => *list = runs,
        RunsFeedEvent::Run { run } => match list.iter_mut().find(|r| r.dag_id == run.dag_id) {
            Some(line) => *line = run,
            None => list.push(run),
        },
    }
    list.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.dag_id.cmp(&b.dag_id)));
}

#[cfg(feature = "hydrate")]
mod browser {
    //! The browser side: one WebSocket, reconnected with the same backoff as the run stream.

    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::Duration;

    use leptos::prelude::*;
    use send_wrapper::SendWrapper;
    use wasm_bindgen::JsCast;
    use wasm_bindgen::prelude::Closure;
    use web_sys::{CloseEvent, MessageEvent, WebSocket};

    use super::apply;
    use crate::app::stream::backoff_delay_ms;
    use crate::protocol::{RunSummary, RunsFeedEvent};

    /// An open socket and the handlers it points at (they must live as long as it does).
    type FeedSocket =
        (WebSocket, Closure<dyn FnMut(MessageEvent)>, Closure<dyn FnMut(CloseEvent)>, Closure<dyn FnMut()>);

    struct Feed {
        /// The list the page shows.
        runs: RwSignal<Vec<RunSummary>>,
        /// True from the first message of a connection until it closes.
        live: RwSignal<bool>,
        /// Reconnect attempts since the last open connection.
        attempt: Cell<u32>,
        socket: RefCell<Option<FeedSocket>>,
        /// Set when the page is gone: nothing reconnects any more.
        disposed: Cell<bool>,
    }

    pub(super) fn start(runs: RwSignal<Vec<RunSummary>>, live: RwSignal<bool>) {
        let feed =
            Rc::new(Feed { runs, live, attempt: Cell::new(0), socket: RefCell::new(None), disposed: Cell::new(false) });
        connect(&feed);
        let guard = SendWrapper::new(feed);
        on_cleanup(move || {
            let feed = guard.take();
            feed.disposed.set(true);
            if let Some((ws, ..)) = feed.socket.borrow_mut().take() {
                ws.set_onmessage(None);
                ws.set_onclose(None);
                ws.set_onopen(None);
                let _ = ws.close();
            }
        });
    }

    fn connect(feed: &Rc<Feed>) {
        if feed.disposed.get() {
            return;
        }
        let location = window().location();
        let scheme = if location.protocol().as_deref() == Ok("https:") { "wss" } else { "ws" };
        let url = format!("{scheme}://{}/api/runs/stream", location.host().unwrap_or_default());
        let Ok(ws) = WebSocket::new(&url) else { return retry(feed) };
        let on_message = {
            let feed = Rc::downgrade(feed);
            Closure::<dyn FnMut(MessageEvent)>::new(move |message: MessageEvent| {
                let (Some(feed), Some(text)) = (feed.upgrade(), message.data().as_string()) else { return };
                if let Ok(event) = serde_json::from_str::<RunsFeedEvent>(&text) {
                    feed.runs.update(|list| apply(list, event));
                    if !feed.live.get_untracked() {
                        feed.live.set(true);
                    }
                }
            })
        };
        let on_open = {
            let feed = Rc::downgrade(feed);
            Closure::<dyn FnMut()>::new(move || {
                if let Some(feed) = feed.upgrade() {
                    feed.attempt.set(0);
                }
            })
        };
        let on_close = {
            let feed = Rc::downgrade(feed);
            Closure::<dyn FnMut(CloseEvent)>::new(move |_: CloseEvent| {
                if let Some(feed) = feed.upgrade() {
                    feed.live.set(false);
                    retry(&feed);
                }
            })
        };
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        // The previous socket (closed) is dropped here, outside its own handlers.
        if let Some((old, ..)) = feed.socket.replace(Some((ws, on_message, on_close, on_open))) {
            old.set_onmessage(None);
            old.set_onclose(None);
            old.set_onopen(None);
        }
    }

    fn retry(feed: &Rc<Feed>) {
        if feed.disposed.get() {
            return;
        }
        let attempt = feed.attempt.get();
        feed.attempt.set(attempt + 1);
        let delay = backoff_delay_ms(attempt, js_sys::Math::random());
        let feed = Rc::downgrade(feed);
        let _ = set_timeout_with_handle(
            move || {
                if let Some(feed) = feed.upgrade() {
                    connect(&feed);
                }
            },
            Duration::from_millis(u64::from(delay)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::apply;
    use crate::protocol::{Cost, RunPhase, RunSummary, RunsFeedEvent};

    fn line(id: &str, started: &str, state: RunPhase) -> RunSummary {
        RunSummary {
            dag_id: id.into(),
            name: "t".into(),
            state,
            started_at: started.into(),
            ended_at: None,
            nodes_done: 0,
            nodes_total: 1,
            gates_waiting: 0,
            cost: Cost::default(),
        }
    }

    #[test]
    fn feed_messages_replace_update_and_add_lines_newest_first() {
        let mut list = Vec::new();
        apply(&mut list, RunsFeedEvent::Runs { runs: vec![line("a", "1", RunPhase::Running)] });
        apply(&mut list, RunsFeedEvent::Run { run: line("b", "2", RunPhase::Running) });
        apply(&mut list, RunsFeedEvent::Run { run: line("a", "1", RunPhase::Completed) });
        let ids: Vec<&str> = list.iter().map(|r| r.dag_id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(list[1].state, RunPhase::Completed);
    }
}
