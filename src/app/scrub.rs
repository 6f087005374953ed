//! Scrubbing a run's history on its page: a slider (and the arrow keys) moves through the run's
//! event log, and the graph, spend, gates and node panel show the run as it stood at that event.
//! That picture is folded by the one reducer ([`RunState::apply`]) from the run before its first
//! event and its stored log; the server keeps nothing new for it. *Live* returns to the present
//! (the live run never stopped following the stream meanwhile).

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use super::history::describe;
use super::live_run::LiveRun;
use crate::protocol::{RunState, Seq, ServerEvent, ServerEventBody};

/// One page of a run's log, for scrubbing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LogPage {
    /// The run before its first event; sent with the first page (`after` = 0).
    pub start: Option<RunState>,
    /// The events after `after`, oldest first (at most [`crate::service::MAX_EVENTS_PER_READ`]).
    pub events: Vec<ServerEvent>,
}

/// The events of run `dag_id` after `after`, and with the first page the run before them.
#[server(endpoint = "run_log", output = super::json_text::JsonText)]
pub async fn run_log(dag_id: String, after: Seq) -> Result<LogPage, ServerFnError> {
    use crate::service::{MAX_EVENTS_PER_READ, ServiceError};
    let service = super::service()?;
    let start = match after {
        0 => Some(service.initial_state(&dag_id).await.map_err(super::server_error)?),
        _ => None,
    };
    let texts = service.events(&dag_id, after, MAX_EVENTS_PER_READ).await.map_err(super::server_error)?;
    let events = texts
        .iter()
        .map(|text| serde_json::from_str(text))
        .collect::<Result<Vec<ServerEvent>, _>>()
        .map_err(|e| super::server_error(ServiceError::Internal(format!("run {dag_id}: a stored event: {e}"))))?;
    Ok(LogPage { start, events })
}

/// The run as it stood after event `seq`: `start` with the first `seq` events of `log` folded in
/// (`log[i]` is event `i + 1`).
pub fn state_at(start: &RunState, log: &[ServerEvent], seq: Seq) -> RunState {
    let mut state = start.clone();
    for event in log.iter().take(usize::try_from(seq).unwrap_or(usize::MAX)) {
        state.apply(event);
    }
    state
}

/// Where the page is in the run's history. `Copy`: every field is a handle.
#[derive(Clone, Copy)]
pub struct History {
    /// The event whose moment the page shows; `None`: the present.
    pub at: RwSignal<Option<Seq>>,
    /// The run as it stood at `at`, once the log up to it is loaded; the page shows it instead
    /// of the live run.
    pub shown: RwSignal<Option<LiveRun>>,
    /// Why the log could not be loaded.
    pub problem: RwSignal<Option<String>>,
    live: LiveRun,
    start: StoredValue<Option<RunState>>,
    /// The log loaded so far, from event 1 on.
    log: StoredValue<Vec<ServerEvent>>,
    loading: StoredValue<bool>,
}

impl History {
    pub fn new(live: LiveRun) -> Self {
        History {
            at: RwSignal::new(None),
            shown: RwSignal::new(None),
            problem: RwSignal::new(None),
            live,
            start: StoredValue::new(None),
            log: StoredValue::new(Vec::new()),
            loading: StoredValue::new(false),
        }
    }

    /// Shows the run as it stood after event `seq` (0: before the first).
    pub fn go_to(self, seq: Seq) {
        self.at.set(Some(seq.min(self.live.seq.get_untracked())));
        self.show();
    }

    /// Back to the present.
    pub fn go_live(self) {
        self.at.set(None);
        self.shown.set(None);
    }

    /// One event back (from the present: the newest event's moment before it).
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))] // the keys are the browser's
    pub fn step_back(self) {
        let now = self.at.get_untracked().unwrap_or_else(|| self.live.seq.get_untracked());
        self.go_to(now.saturating_sub(1));
    }

    /// One event on; past the newest, the present.
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    pub fn step_on(self) {
        let Some(now) = self.at.get_untracked() else { return };
        if now + 1 >= self.live.seq.get_untracked() {
            self.go_live();
        } else {
            self.go_to(now + 1);
        }
    }

    /// The event the page is at, and what it was, for the bar's label.
    pub fn label(self) -> String {
        let newest = self.live.seq.get();
        // Re-read once the log has loaded and the page moved there.
        if let Some(past) = self.shown.get() {
            past.seq.track();
        }
        match self.at.get() {
            None => format!("live · event {newest}"),
            Some(0) => format!("before the first event (of {newest})"),
            Some(seq) => {
                let what = self.log.with_value(|log| log.get(seq as usize - 1).map(|event| describe(&event.body).1));
                match what {
                    Some(what) => format!("event {seq} of {newest}: {what}"),
                    None => format!("event {seq} of {newest}: loading…"),
                }
            }
        }
    }

    /// Folds the run to `at` if the log up to it is here; otherwise loads it first.
    fn show(self) {
        let Some(target) = self.at.get_untracked() else { return };
        let loaded = self.start.with_value(Option::is_some) && self.log.with_value(|log| log.len() as Seq >= target);
        if loaded {
            self.fold_to(target);
        } else if !self.loading.get_value() {
            self.loading.set_value(true);
            leptos::task::spawn_local(async move {
                self.load(target).await;
                self.loading.set_value(false);
                // Where the person is now, which may have moved while the log loaded.
                let loaded = self.log.with_value(|log| log.len() as Seq);
                if self.problem.with_untracked(Option::is_none)
                    && let Some(now) = self.at.get_untracked()
                {
                    if now <= loaded { self.fold_to(now) } else { self.show() }
                }
            });
        }
    }

    /// Loads the start and the log up to event `target`, a page at a time.
    async fn load(self, target: Seq) {
        let dag_id = self.live.dag_id.get_value();
        while self.start.with_value(Option::is_none) || self.log.with_value(|log| (log.len() as Seq) < target) {
            let after = self.log.with_value(|log| log.len() as Seq);
            let page = match run_log(dag_id.clone(), after).await {
                Ok(page) => page,
                Err(error) => {
                    self.problem.set(Some(format!("The run's log could not be loaded: {error}")));
                    return;
                }
            };
            if let Some(start) = page.start {
                self.start.set_value(Some(start));
            }
            let follows = page.events.iter().zip(after + 1..).all(|(event, seq)| event.seq == seq);
            if !follows {
                self.problem.set(Some("The run's log has a gap: reload the page.".into()));
                return;
            }
            if page.events.is_empty() && self.start.with_value(Option::is_some) {
                return;
            }
            self.log.update_value(|log| log.extend(page.events));
        }
    }

    /// Shows the run after event `target`: on from where the page is if that is before it (the
    /// events are applied one by one), otherwise folded anew from the start.
    fn fold_to(self, target: Seq) {
        // Folded anew from the start (cloned only then: a large run's start is large).
        let from_start = || {
            self.start
                .with_value(|start| self.log.with_value(|log| start.as_ref().map(|start| state_at(start, log, target))))
        };
        match self.shown.get_untracked() {
            Some(past) if past.seq.get_untracked() <= target => {
                let from = past.seq.get_untracked() as usize;
                self.log.with_value(|log| {
                    for event in log.iter().take(target as usize).skip(from) {
                        past.apply(event);
                    }
                });
            }
            Some(past) => {
                if let Some(state) = from_start() {
                    past.apply_owned(ServerEvent {
                        seq: state.seq,
                        body: ServerEventBody::Snapshot { run: Box::new(state) },
                    });
                }
            }
            None => {
                if let Some(state) = from_start() {
                    self.shown.set(Some(LiveRun::new(state)));
                }
            }
        }
    }
}

/// The history bar: the slider over the run's events, where it is, and *Live*.
#[component]
pub fn HistoryBar(history: History) -> impl IntoView {
    let live = history.live;
    let value = move || history.at.get().unwrap_or_else(|| live.seq.get());
    view! {
        <div class="history-bar" class:scrubbing=move || history.at.with(Option::is_some) data-testid="history-bar">
            <label class="muted small" for="scrubber">"History"</label>
            <input
                id="scrubber"
                type="range"
                data-testid="scrubber"
                min="0"
                step="1"
                max=move || live.seq.get().to_string()
                prop:value=move || value().to_string()
                on:input=move |ev| {
                    if let Ok(seq) = event_target_value(&ev).parse::<Seq>() {
                        history.go_to(seq);
                    }
                }
            />
            <span class="mono small" data-testid="history-at">{move || history.label()}</span>
            <button data-testid="go-live" disabled=move || history.at.with(Option::is_none) on:click=move |_| history.go_live()>
                "Live"
            </button>
            {move || history.problem.get().map(|problem| view! { <span class="notice error small">{problem}</span> })}
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{GraphNode, NodeKind, NodeStatus};

    /// Folding the first k events of a log gives the run as it stood then: at each k the same
    /// state as applying the events one by one, and the gate waiting exactly between its wait
    /// and its decision.
    #[test]
    fn the_state_at_an_event_is_the_log_folded_up_to_it() {
        let gate = GraphNode { id: "g".into(), label: "G".into(), kind: NodeKind::Gate };
        let start = RunState::new("r", "t", "now", 0.0, [(gate, vec![])]);
        let body = |status| ServerEventBody::NodeState { node_id: "g".into(), status, output: None, metrics: None };
        let log: Vec<ServerEvent> = [body(NodeStatus::Running), body(NodeStatus::Waiting), body(NodeStatus::Completed)]
            .into_iter()
            .zip(1..)
            .map(|(body, seq)| ServerEvent { seq, body })
            .collect();
        let mut stepped = start.clone();
        for k in 0..=3 {
            if k > 0 {
                stepped.apply(&log[k as usize - 1]);
            }
            assert_eq!(state_at(&start, &log, k), stepped, "after {k} events");
        }
        assert_eq!(state_at(&start, &log, 2).nodes["g"].status, NodeStatus::Waiting);
        assert_eq!(state_at(&start, &log, 0), start);
        assert_eq!(state_at(&start, &log, 99), stepped, "past the end: the whole log");
    }
}
