//! The run view (`/dags/{dag_id}`): nodes with live status, spend, progress, gate cards,
//! run controls and the connection indicator.

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

use super::get_run;
use super::graph::Graph;
use super::history::{Decisions, Timeline};
use super::node_panel::NodePanel;
use super::store::{GateCard, NodeSignal, RunStore};
use super::stream::{Connection, DagStream, use_dag_stream};
use crate::protocol::{ClientEvent, Decision, NodeStatus, RunPhase, RunState};

#[component]
pub fn RunPage() -> impl IntoView {
    let params = use_params_map();
    let dag_id = move || params.read().get("dag_id").unwrap_or_default();
    let run = Resource::new(dag_id, get_run);
    view! {
        <Suspense fallback=|| view! { <p class="empty">"Loading run…"</p> }>
            {move || Suspend::new(async move {
                match run.await {
                    Ok(Some(state)) => view! { <RunView initial=state/> }.into_any(),
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
fn RunView(initial: RunState) -> impl IntoView {
    let dag_id = initial.dag_id.clone();
    let initial_seq = initial.seq;
    let store = RunStore::new(initial);
    let stream = use_dag_stream(dag_id.clone(), store);
    // The node whose panel is open.
    let selected = RwSignal::new(None::<String>);
    let stale = move || stream.connection.get() != Connection::Live;
    view! {
        <section class="page run" class:stale=stale data-testid="run-view">
            <div class="page-head">
                <div>
                    <h1>{store.name.get_value()}</h1>
                    <span class="muted mono">{dag_id}</span>
                </div>
                <ConnectionIndicator connection=stream.connection/>
            </div>
            <div class="summary">
                <RunStateBadge store/>
                <ProgressLine store/>
                <CostTicker store/>
                <Controls store stream/>
            </div>
            <Notices store stream/>
            <GateCards store stream/>
            <div class="graph-row" class:with-panel=move || selected.with(Option::is_some)>
                <Graph store selected/>
                <NodePanel store selected/>
            </div>
            <NodeList store selected/>
            <div class="history">
                <Decisions store/>
                <Timeline store up_to=initial_seq/>
            </div>
        </section>
    }
}

#[component]
fn ConnectionIndicator(connection: Signal<Connection>) -> impl IntoView {
    let state = move || match connection.get() {
        Connection::Connecting => "connecting",
        Connection::Live => "live",
        Connection::Reconnecting { .. } => "reconnecting",
    };
    let text = move || match connection.get() {
        Connection::Connecting => "Connecting…".to_owned(),
        Connection::Live => "Live".to_owned(),
        Connection::Reconnecting { attempt, in_secs: 0 } => format!("Reconnecting… (attempt {attempt})"),
        Connection::Reconnecting { attempt, in_secs } => {
            format!("Reconnecting in {in_secs} s (attempt {attempt})")
        }
    };
    view! {
        <span class=move || format!("connection {}", state()) data-testid="connection" data-state=state>
            <span class="dot"></span>
            {text}
        </span>
    }
}

#[component]
fn RunStateBadge(store: RunStore) -> impl IntoView {
    let phase = move || store.phase.get().as_str();
    view! {
        <div class="stat">
            <span class="label">"Run"</span>
            <span class=move || format!("badge phase-{}", phase()) data-testid="run-state">{phase}</span>
        </div>
    }
}

#[component]
fn ProgressLine(store: RunStore) -> impl IntoView {
    let progress = store.progress;
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
            <div class="bar"><div class="fill" style:width=move || format!("{:.1}%", percent())></div></div>
        </div>
    }
}

#[component]
fn CostTicker(store: RunStore) -> impl IntoView {
    let cost = store.cost;
    let level = move || {
        let c = cost.get();
        let used = if c.budget > 0.0 { c.spent / c.budget } else { 0.0 };
        if used >= 1.0 {
            "over"
        } else if used >= 0.8 {
            "near"
        } else {
            "ok"
        }
    };
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
                {move || {
                    let c = cost.get();
                    if c.budget > 0.0 { format!("${:.2} remaining", c.remaining) } else { "no budget".to_owned() }
                }}
            </span>
            <div class=move || format!("bar spend-{}", level())>
                <div
                    class="fill"
                    style:width=move || {
                        let c = cost.get();
                        let used = if c.budget > 0.0 { (c.spent / c.budget).min(1.0) } else { 0.0 };
                        format!("{:.1}%", 100.0 * used)
                    }
                ></div>
            </div>
        </div>
    }
}

#[component]
fn Controls(store: RunStore, stream: DagStream) -> impl IntoView {
    let phase = store.phase;
    let send = move |event: ClientEvent| stream.send(&event);
    view! {
        <div class="controls">
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
                on:click=move |_| send(ClientEvent::CancelExecution)
            >
                "Cancel"
            </button>
        </div>
    }
}

#[component]
fn Notices(store: RunStore, stream: DagStream) -> impl IntoView {
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
            store
                .last_run_error
                .get()
                .map(|message| view! { <p class="notice error" data-testid="run-error">{message}</p> })
        }}
        {move || {
            store
                .finished
                .get()
                .then(|| {
                    view! {
                        <p class="notice done" data-testid="finished">
                            {move || format!("Run {}.", store.phase.get().as_str())}
                        </p>
                    }
                })
        }}
    }
}

#[component]
fn GateCards(store: RunStore, stream: DagStream) -> impl IntoView {
    view! {
        <div class="gates">
            <For each=move || store.gates.get() key=|card| card.node_id.clone() let:card>
                <GateCardView card stream/>
            </For>
        </div>
    }
}

#[component]
fn GateCardView(card: GateCard, stream: DagStream) -> impl IntoView {
    let GateCard { node_id, label, presentation } = card;
    let feedback = RwSignal::new(String::new());
    let offers_modify = presentation.options.contains(&Decision::Modify);
    let buttons = presentation
        .options
        .iter()
        .map(|&decision| {
            let node_id = node_id.clone();
            let (class, text) = match decision {
                Decision::Approve => ("primary", "Approve"),
                Decision::Reject => ("danger", "Reject"),
                Decision::Modify => ("", "Send back with feedback"),
            };
            // Modify means "redo it like this": it is only sent with feedback.
            let disabled = move || decision == Decision::Modify && feedback.with(|f| f.trim().is_empty());
            view! {
                <button
                    class=class
                    data-testid=decision.as_str()
                    disabled=disabled
                    on:click=move |_| {
                        let text = feedback.get_untracked();
                        let feedback = (!text.trim().is_empty()).then_some(text);
                        stream.send(&ClientEvent::HumanDecision { node_id: node_id.clone(), decision, feedback })
                    }
                >
                    {text}
                </button>
            }
        })
        .collect_view();
    view! {
        <article class="gate-card" data-testid=format!("gate-{node_id}")>
            <header>
                <span class="badge phase-paused">"Waiting for you"</span>
                <span class="muted">{label}</span>
            </header>
            <h2>{presentation.title.clone()}</h2>
            <p>{presentation.prompt.clone()}</p>
            {presentation
                .cost_so_far
                .map(|spent| view! { <p class="muted small mono">{format!("Spent so far: ${spent:.2}")}</p> })}
            {offers_modify
                .then(|| {
                    view! {
                        <textarea
                            class="feedback"
                            data-testid="feedback"
                            placeholder="Feedback (needed to send the work back)"
                            prop:value=move || feedback.get()
                            on:input=move |ev| feedback.set(event_target_value(&ev))
                        ></textarea>
                    }
                })}
            <div class="gate-actions">{buttons}</div>
        </article>
    }
}

#[component]
fn NodeList(store: RunStore, selected: RwSignal<Option<String>>) -> impl IntoView {
    view! {
        <ol class="nodes" data-testid="nodes">
            <For each=move || store.nodes.get() key=|node| node.id.clone() let:node>
                <NodeRow node selected/>
            </For>
        </ol>
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
