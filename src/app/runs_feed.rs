//! `use_runs_feed`: keeps the run list live from `/api/runs/stream` (on the page's one kind of
//! reconnecting socket, [`super::socket`]).
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
    //! The browser side: a [`Reconnecting`] socket whose messages update the list.

    use leptos::prelude::*;
    use send_wrapper::SendWrapper;

    use super::apply;
    use crate::app::socket::{Handlers, Reconnecting};
    use crate::protocol::{RunSummary, RunsFeedEvent};

    pub(super) fn start(runs: RwSignal<Vec<RunSummary>>, live: RwSignal<bool>) {
        let socket = Reconnecting::open(Handlers {
            path: Box::new(|| "/api/runs/stream".to_owned()),
            on_open: Box::new(|| {}),
            on_text: Box::new(move |text| {
                if let Ok(event) = serde_json::from_str::<RunsFeedEvent>(text) {
                    runs.update(|list| apply(list, event));
                    if !live.get_untracked() {
                        live.set(true);
                    }
                }
            }),
            on_retry: Box::new(move |_, _| live.set(false)),
        });
        // The browser has one thread, so the wrapper's "same thread" check always holds.
        let socket = SendWrapper::new(socket);
        on_cleanup(move || socket.take().close());
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
