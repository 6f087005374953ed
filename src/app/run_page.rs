//! The run view (`/dags/{dag_id}`): nodes with live status, spend, progress, gate cards,
//! run controls, the connection indicator, and the history bar that shows the run as it stood
//! at any event of its log (`scrub`).

use leptos::prelude::*;

use super::clock::{format_elapsed, parse_ms, use_now};
use super::gantt::gantt_view;
use super::gate_card::GateCardView;
use super::get_run;
use super::graph::Graph;
use super::history::{Decisions, Notifications, Timeline};
use super::live_run::{LiveRun, NodeSignal, RunHead};
use super::node_panel::NodePanel;
use super::scrub::{History, HistoryBar};
use super::spend::{SpendPanel, budget_level, budget_used_percent, remaining_text};
use super::stream::{Connection, DagStream, use_dag_stream};
use crate::protocol::{ClientEvent, Decision, GateDecisionRecord, NodeStatus, Role, RunPhase};

/// Starts a new run of `dag_id`'s spec, as it was, and sends the browser to it.
#[server(endpoint = "run_again")]
pub async fn run_again(dag_id: String) -> Result<String, ServerFnError> {
    let again = super::service()?.run_again(&dag_id, &super::caller()?, None).await.map_err(super::server_error)?;
    leptos_axum::redirect(&format!("/dags/{again}"));
    Ok(again)
}

/// The run view of `dag_id`. Its code is split out of the main wasm (`cargo leptos build
/// --split`) and loaded before the page hydrates (see [`super::page`]); the run list does not
/// download it.
#[lazy]
pub fn run_page(dag_id: String) -> AnyView {
    view! { <RunPage dag_id/> }.into_any()
}

#[component]
fn RunPage(dag_id: String) -> impl IntoView {
    let run = Resource::new(move || dag_id.clone(), get_run);
    let user = expect_context::<super::SignedInUser>();
    view! {
        <Suspense fallback=|| view! { <p class="empty">"Loading run…"</p> }>
            {move || Suspend::new(async move {
                // Approvers and admins steer; viewers watch.
                let may_steer = user.has(Role::Approver).await;
                match run.await {
                    Ok(Some(head)) => view! { <RunView head may_steer/> }.into_any(),
                    Ok(None) => view! { <p class="notice error">"There is no such run."</p> }.into_any(),
                    Err(error) => {
                        view! { <p class="notice error">"Could not load the run: " {error.to_string()}</p> }
                            .into_any()
                    }
                }
            })}
        </Suspense>
    }
}

#[component]
fn RunView(head: RunHead, may_steer: bool) -> impl IntoView {
    let dag_id = head.state.dag_id.clone();
    let initial_seq = head.state.seq;
    // A small run's node list comes with the page; a large one's is built after hydration.
    let server_rendered_list = !head.partial;
    let live_run = LiveRun::from_head(head);
    let stream = use_dag_stream(dag_id.clone(), live_run);
    // The node whose panel is open.
    let selected = RwSignal::new(None::<String>);
    let stale = move || stream.connection.get() != Connection::Live;
    let history = History::new(live_run);
    // The Gantt view instead of the graph (`?view=gantt` opens the page with it).
    let gantt = RwSignal::new(super::page::query_param("view").as_deref() == Some("gantt"));
    // Keys: ← one event back in the run's history, → one on (past the newest: live again).
    #[cfg(feature = "hydrate")]
    {
        let handle = window_event_listener(leptos::ev::keydown, move |ev| {
            if !is_page_key(&ev) {
                return;
            }
            match ev.key().as_str() {
                "ArrowLeft" => history.step_back(),
                "ArrowRight" => history.step_on(),
                _ => return,
            }
            ev.prevent_default();
        });
        on_cleanup(move || handle.remove());
    }
    view! {
        <section class="page run" class:stale=stale data-testid="run-view">
            <div class="page-head">
                <div>
                    <h1>{live_run.name.get_value()}</h1>
                    <span class="muted mono">{dag_id}</span>
                </div>
                <ConnectionIndicator connection=stream.connection/>
            </div>
            // Not needed to go live: built after the first frame, its empty frame in its place.
            <AfterFirstFrame placeholder=|| view! { <div class="history-bar" data-testid="history-placeholder"></div> }>
                <HistoryBar history/>
            </AfterFirstFrame>
            {move || {
                // The run as it stood at the history bar's event, or the live run; nobody steers
                // the past.
                let (shown, may_steer) = match history.shown.get() {
                    Some(past) => (past, false),
                    None => (live_run, may_steer),
                };
                view! {
                    <div class="summary">
                        <RunStateBadge live_run=shown/>
                        <ProgressLine live_run=shown/>
                        <CostTicker live_run=shown/>
                        {may_steer.then(|| view! { <Controls live_run stream/> })}
                        {may_steer.then(|| view! { <RunAgainButton live_run/> })}
                    </div>
                    <Notices live_run stream/>
                    <GateCards live_run=shown stream may_steer/>
                    <div class="view-tabs" role="tablist">
                        <button role="tab" data-testid="show-graph" class:active=move || !gantt.get() on:click=move |_| gantt.set(false)>"Graph"</button>
                        <button role="tab" data-testid="show-gantt" class:active=move || gantt.get() on:click=move |_| gantt.set(true)>"Gantt"</button>
                    </div>
                    <div class="graph-row" class:with-panel=move || selected.with(Option::is_some)>
                        // The graph (or the Gantt view) is drawn in the browser only (the server
                        // cannot know the screen), so the page carries its empty frame and the
                        // browser builds it after hydrating: about half of the hydration's work
                        // was the graph's code starting up.
                        <AfterFirstFrame placeholder=|| view! { <section class="graph" data-testid="graph-placeholder"></section> }>
                            {move || if gantt.get() {
                                // Its code is a split file of its own, loaded when the tab is opened.
                                let view = Suspend::new(async move { gantt_view(shown, selected).await });
                                view! { <Suspense>{view}</Suspense> }.into_any()
                            } else {
                                view! { <Graph live_run=shown selected/> }.into_any()
                            }}
                        </AfterFirstFrame>
                        <NodePanel live_run=shown selected stream may_steer/>
                    </div>
                    {if server_rendered_list {
                        view! { <NodeList live_run=shown selected/> }.into_any()
                    } else {
                        view! { <AfterFirstFrame><NodeList live_run=shown selected/></AfterFirstFrame> }.into_any()
                    }}
                }
            }}
            <AfterFirstFrame>
                <div class="history">
                    <SpendPanel live_run/>
                    <Decisions live_run/>
                    <Notifications live_run/>
                </div>
                <Timeline live_run up_to=initial_seq/>
            </AfterFirstFrame>
        </section>
    }
}

/// Renders its children in the browser after the first frame that follows hydration (the server
/// sends only the `placeholder`, nothing by default). The graph, the history panels and a large
/// run's node list are built then, each in a task of its own, so hydrating stays a short task;
/// the panels sit below the fold on a laptop screen, the graph's placeholder has its size.
#[component]
fn AfterFirstFrame(children: ChildrenFn, #[prop(optional, into)] placeholder: ViewFn) -> impl IntoView {
    let ready = RwSignal::new(false);
    // After the next frame, in a task of its own (a timeout), not in that frame's callbacks.
    Effect::new(move |_| {
        request_animation_frame(move || set_timeout(move || ready.set(true), std::time::Duration::ZERO))
    });
    view! { <Show when=move || ready.get() fallback=placeholder>{children()}</Show> }
}

#[component]
fn ConnectionIndicator(connection: Signal<Connection>) -> impl IntoView {
    let state = move || match connection.get() {
        Connection::Connecting => "connecting",
        Connection::Live => "live",
        Connection::Reconnecting { .. } => "reconnecting",
        Connection::Offline => "offline",
    };
    let text = move || match connection.get() {
        Connection::Connecting => "Connecting…".to_owned(),
        Connection::Live => "Live".to_owned(),
        Connection::Reconnecting { attempt, in_secs: 0 } => format!("Reconnecting… (attempt {attempt})"),
        Connection::Reconnecting { attempt, in_secs } => {
            format!("Reconnecting in {in_secs} s (attempt {attempt})")
        }
        Connection::Offline => "Offline: the data shown may be stale".to_owned(),
    };
    view! {
        <span class=move || format!("connection {}", state()) data-testid="connection" data-state=state>
            <span class="dot"></span>
            {text}
        </span>
    }
}

#[component]
fn RunStateBadge(live_run: LiveRun) -> impl IntoView {
    let phase = move || live_run.phase.get().as_str();
    view! {
        <div class="stat">
            <span class="label">"Run"</span>
            <span class=move || format!("badge phase-{}", phase()) data-testid="run-state">{phase}</span>
        </div>
    }
}

#[component]
fn ProgressLine(live_run: LiveRun) -> impl IntoView {
    let progress = live_run.progress;
    let now = use_now();
    let started = parse_ms(&live_run.started_at());
    // Elapsed: until now while the run goes on, until its last activity once it ended.
    let elapsed = move || {
        let end = if live_run.phase.get().is_terminal() {
            live_run.seq.track();
            live_run.last_activity().as_deref().and_then(parse_ms)
        } else {
            Some(now.get())
        };
        match (started, end) {
            (Some(start), Some(end)) => format!("{} elapsed", format_elapsed(end - start)),
            _ => String::new(),
        }
    };
    let percent = move || {
        let p = progress.get();
        if p.total == 0 { 0.0 } else { 100.0 * p.done as f64 / p.total as f64 }
    };
    view! {
        <div class="stat">
            <span class="label">"Progress"</span>
            <span class="value" data-testid="progress">
                {move || {
                    let p = progress.get();
                    format!("{} / {} done", p.done, p.total)
                }}
            </span>
            <span class="muted small">
                {move || {
                    let p = progress.get();
                    format!("{} running · {} waiting · {} failed", p.running, p.waiting, p.failed)
                }}
            </span>
            <span class="muted small" data-testid="elapsed">{elapsed}</span>
            <div class="bar"><div class="fill" style:width=move || format!("{:.1}%", percent())></div></div>
        </div>
    }
}

#[component]
fn CostTicker(live_run: LiveRun) -> impl IntoView {
    let cost = live_run.cost;
    let level = move || budget_level(cost.get());
    view! {
        <div class="stat">
            <span class="label">"Spend"</span>
            <span class="value mono" data-testid="cost">
                {move || {
                    let c = cost.get();
                    if c.budget > 0.0 { format!("${:.2} / ${:.2}", c.spent, c.budget) } else { format!("${:.2}", c.spent) }
                }}
            </span>
            <span class="muted small mono" data-testid="remaining">
                {move || remaining_text(cost.get())}
            </span>
            <div class=move || format!("bar spend-{}", level())>
                <div
                    class="fill"
                    style:width=move || format!("{:.1}%", budget_used_percent(cost.get()))
                ></div>
            </div>
        </div>
    }
}

#[component]
fn Controls(live_run: LiveRun, stream: DagStream) -> impl IntoView {
    let phase = live_run.phase;
    let send = move |event: ClientEvent| stream.send(&event);
    // Cancel asks first: it stops every running command.
    let confirming = RwSignal::new(false);
    view! {
        <div class="controls">
            <Show when=move || confirming.get()>
                <div class="confirm" data-testid="cancel-confirm">
                    <span>"Cancel the run? Running commands are stopped."</span>
                    <button class="danger" data-testid="confirm-cancel" on:click=move |_| { confirming.set(false); send(ClientEvent::CancelExecution) }>"Yes, cancel"</button>
                    <button data-testid="keep-running" on:click=move |_| confirming.set(false)>"Keep running"</button>
                </div>
            </Show>
            <button
                data-testid="pause"
                disabled=move || phase.get() != RunPhase::Running
                on:click=move |_| send(ClientEvent::PauseExecution)
            >
                "Pause"
            </button>
            <button
                data-testid="resume"
                disabled=move || phase.get() != RunPhase::Paused
                on:click=move |_| send(ClientEvent::ResumeExecution)
            >
                "Resume"
            </button>
            <button
                class="danger"
                data-testid="cancel"
                disabled=move || !matches!(phase.get(), RunPhase::Running | RunPhase::Paused)
                on:click=move |_| confirming.set(true)
            >
                "Cancel"
            </button>
        </div>
    }
}

/// "Run again" once the run has ended: a new run of the same spec (the REST API also takes a
/// changed `env`).
#[component]
fn RunAgainButton(live_run: LiveRun) -> impl IntoView {
    let again = ServerAction::<RunAgain>::new();
    view! {
        <Show when=move || live_run.finished.get()>
            <leptos::form::ActionForm action=again attr:class="again-form">
                <input type="hidden" name="dag_id" value=live_run.dag_id.get_value()/>
                <button type="submit" data-testid="run-again">"Run again"</button>
            </leptos::form::ActionForm>
            {move || {
                again.value().get().and_then(Result::err).map(|error| view! { <p class="notice error">{error.to_string()}</p> })
            }}
        </Show>
    }
}

#[component]
fn Notices(live_run: LiveRun, stream: DagStream) -> impl IntoView {
    view! {
        {move || {
            stream
                .notice
                .get()
                .map(|message| {
                    view! {
                        <p class="notice error" data-testid="notice" role="alert">
                            {message}
                            <button class="link" on:click=move |_| stream.notice.set(None)>"Dismiss"</button>
                        </p>
                    }
                })
        }}
        {move || {
            live_run
                .last_run_error
                .get()
                .map(|message| view! { <p class="notice error" data-testid="run-error">{message}</p> })
        }}
        {move || {
            live_run
                .finished
                .get()
                .then(|| {
                    view! {
                        <p class="notice done" data-testid="finished">
                            {move || format!("Run {}.", live_run.phase.get().as_str())}
                        </p>
                    }
                })
        }}
    }
}

/// Whether a key press is meant for the page's own keys: not typed into a field, no modifier.
#[cfg(feature = "hydrate")]
fn is_page_key(ev: &web_sys::KeyboardEvent) -> bool {
    let typing = ev
        .target()
        .and_then(|t| wasm_bindgen::JsCast::dyn_into::<web_sys::Element>(t).ok())
        .is_some_and(|el| matches!(el.tag_name().as_str(), "TEXTAREA" | "INPUT" | "SELECT"));
    !(typing || ev.ctrl_key() || ev.meta_key() || ev.alt_key())
}

#[component]
fn GateCards(live_run: LiveRun, stream: DagStream, may_steer: bool) -> impl IntoView {
    // Keyboard: A approves, R rejects the first waiting gate; M goes to its feedback box.
    #[cfg(feature = "hydrate")]
    if may_steer {
        let handle = window_event_listener(leptos::ev::keydown, move |ev| {
            if !is_page_key(&ev) {
                return;
            }
            let Some(card) = live_run.gates.with_untracked(|g| g.first().cloned()) else { return };
            let decision = match ev.key().as_str() {
                "a" | "A" => Decision::Approve,
                "r" | "R" => Decision::Reject,
                "m" | "M" => {
                    if let Some(el) = document()
                        .query_selector(&format!("[data-testid=gate-{}] textarea", card.node_id))
                        .ok()
                        .flatten()
                        && let Ok(el) = wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlElement>(el)
                    {
                        let _ = el.focus();
                        ev.prevent_default();
                    }
                    return;
                }
                _ => return,
            };
            if card.presentation.options.contains(&decision) {
                stream.send(&ClientEvent::HumanDecision {
                    node_id: card.node_id,
                    decision,
                    feedback: None,
                    inputs: None,
                });
            }
        });
        on_cleanup(move || handle.remove());
    }
    // The newest decision per gate that no longer waits: who decided what, on every dashboard.
    let resolved = move || {
        let waiting: Vec<String> = live_run.gates.with(|g| g.iter().map(|c| c.node_id.clone()).collect());
        let mut latest: Vec<GateDecisionRecord> = Vec::new();
        for decision in live_run.decisions.get().into_iter().rev() {
            if !waiting.contains(&decision.node_id) && !latest.iter().any(|d| d.node_id == decision.node_id) {
                latest.push(decision);
            }
        }
        latest.truncate(3);
        latest
    };
    view! {
        <div class="gates">
            // A card is drawn anew when an approval counts (its quorum line changes).
            <For each=move || live_run.gates.get() key=|card| (card.node_id.clone(), card.approved_by.len()) let:card>
                <GateCardView card send=Callback::new(move |event| stream.send(&event)) may_steer keys=true/>
            </For>
            <For each=resolved key=|d| (d.node_id.clone(), d.seq) let:decision>
                <div class=format!("gate-resolved decision-{}", decision.decision.as_str()) data-testid=format!("resolved-{}", decision.node_id)>
                    <strong title=decision.node_id.clone()>{live_run.label(&decision.node_id)}</strong>
                    {format!(" {} by {}", past_tense(decision.decision), decision.decided_by)}
                    <span class="muted small mono">{format!(" at {}", decision.decided_at.get(11..19).unwrap_or(""))}</span>
                    {decision.feedback.clone().map(|f| view! { <q class="feedback-quote">{f}</q> })}
                </div>
            </For>
        </div>
    }
}

fn past_tense(decision: Decision) -> &'static str {
    match decision {
        Decision::Approve => "approved",
        Decision::Reject => "rejected",
        Decision::Modify => "sent back",
    }
}

/// Rows the node list shows before "show all" (the graph always shows every node).
const NODE_LIST_ROWS: usize = 50;

#[component]
fn NodeList(live_run: LiveRun, selected: RwSignal<Option<String>>) -> impl IntoView {
    let show_all = RwSignal::new(false);
    let total = move || live_run.nodes.with(Vec::len);
    view! {
        <ol class="nodes" data-testid="nodes">
            <For
                each=move || {
                    let limit = if show_all.get() { usize::MAX } else { NODE_LIST_ROWS };
                    live_run.nodes.with(|nodes| nodes.iter().take(limit).cloned().collect::<Vec<_>>())
                }
                key=|node| node.id.clone()
                let:node
            >
                <NodeRow node selected/>
            </For>
        </ol>
        <Show when=move || { !show_all.get() && total() > NODE_LIST_ROWS }>
            <button class="link show-all" on:click=move |_| show_all.set(true)>
                {move || format!("Show all {} nodes", total())}
            </button>
        </Show>
    }
}

#[component]
fn NodeRow(node: NodeSignal, selected: RwSignal<Option<String>>) -> impl IntoView {
    let view = node.view;
    let status = move || view.with(|v| v.status);
    let id = node.id.clone();
    view! {
        <li
            class=move || format!("node status-{}", status().as_str())
            data-testid=format!("node-{}", node.id)
            data-status=move || status().as_str()
            on:click=move |_| selected.set(Some(id.clone()))
        >
            <span class="dot"></span>
            <span class="node-label">{move || view.with(|v| v.label.clone())}</span>
            <span class="node-needs muted small">
                {move || view.with(|v| if v.needs.is_empty() { String::new() } else { format!("after {}", v.needs.join(", ")) })}
            </span>
            <span class="node-status">{move || status_text(status())}</span>
            <span class="node-figures muted mono small">
                {move || {
                    view.with(|v| {
                        let mut parts = Vec::new();
                        if let Some(ms) = v.metrics.duration_ms {
                            parts.push(format!("{:.1} s", ms as f64 / 1000.0));
                        }
                        if let Some(cost) = v.metrics.cost {
                            parts.push(format!("${cost:.2}"));
                        }
                        parts.join(" · ")
                    })
                }}
            </span>
        </li>
    }
}

fn status_text(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Pending => "pending",
        NodeStatus::Running => "running…",
        NodeStatus::Waiting => "waiting for a decision",
        NodeStatus::Completed => "completed",
        NodeStatus::Failed => "failed",
        NodeStatus::Skipped => "skipped",
        NodeStatus::Cancelled => "cancelled",
    }
}
