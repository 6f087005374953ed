//! A run's history on its page: the decisions taken on its gates and the timeline of its events
//! (the stored log up to the page's snapshot, then live events as they arrive).

use leptos::prelude::*;

use super::live_run::LiveRun;
use crate::protocol::{DagMutation, NotificationRecord, Seq, ServerEvent, ServerEventBody};

/// Live events the timeline keeps at most (the newest).
pub const TIMELINE_LENGTH: usize = 300;
/// Stored events the page loads with (the newest before its snapshot). Each is a hydrated row,
/// so this stays small: a page must become interactive quickly even on a long run; the whole log
/// is at `/api/dags/{dag_id}/events`.
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
pub const TIMELINE_LOADED: usize = 50;

/// The newest events of a run up to `up_to`, oldest first (at most [`TIMELINE_LOADED`]).
#[server(endpoint = "run_events", output = super::json_text::JsonText)]
pub async fn run_events(dag_id: String, up_to: Seq) -> Result<Vec<ServerEvent>, ServerFnError> {
    if up_to == 0 {
        return Ok(Vec::new());
    }
    let after = up_to.saturating_sub(TIMELINE_LOADED as Seq);
    let limit = usize::try_from(up_to - after).unwrap_or(TIMELINE_LOADED);
    let texts = super::service()?.events(&dag_id, after, limit).await.map_err(super::server_error)?;
    Ok(texts.iter().filter_map(|text| serde_json::from_str(text).ok()).collect())
}

/// Who the run's notifications went to, and how each delivery went.
#[server(endpoint = "run_notifications", output = super::json_text::JsonText)]
pub async fn run_notifications(dag_id: String) -> Result<Vec<NotificationRecord>, ServerFnError> {
    super::service()?.notifications(&dag_id).await.map_err(super::server_error)
}

/// One line of the timeline.
pub fn describe(body: &ServerEventBody) -> (&'static str, String) {
    match body {
        ServerEventBody::NodeState { node_id, status, metrics, .. } => {
            let attempt = metrics.as_ref().and_then(|m| m.attempt).filter(|a| *a > 1);
            let attempt = attempt.map(|a| format!(" (attempt {a})")).unwrap_or_default();
            ("node", format!("{node_id} {}{attempt}", status.as_str()))
        }
        ServerEventBody::EdgeActive { from, to } => ("edge", format!("{from} → {to}")),
        ServerEventBody::DagMutated { mutation } => (
            "graph",
            match mutation {
                DagMutation::AddNode { node, after, .. } if after.is_empty() => format!("added {}", node.id),
                DagMutation::AddNode { node, after, .. } => format!("added {} after {}", node.id, after.join(", ")),
                DagMutation::AddEdge { from, to } => format!("added edge {from} → {to}"),
                DagMutation::RemoveNode { node_id } => format!("removed {node_id}"),
                DagMutation::UpdateNode { node_id, .. } => format!("updated {node_id}"),
            },
        ),
        ServerEventBody::CostUpdate { spent, budget, .. } if *budget > 0.0 => {
            ("spend", format!("${spent:.2} of ${budget:.2}"))
        }
        ServerEventBody::CostUpdate { spent, .. } => ("spend", format!("${spent:.2}")),
        ServerEventBody::ExecutionComplete { results } => {
            ("done", format!("execution complete ({} results)", results.len()))
        }
        ServerEventBody::HumanGateWaiting { node_id, presentation } => {
            ("gate", format!("{node_id} waits: {}", presentation.title))
        }
        ServerEventBody::Error { node_id: Some(node_id), message } => ("error", format!("{node_id}: {message}")),
        ServerEventBody::Error { node_id: None, message } => ("error", message.clone()),
        ServerEventBody::Snapshot { .. } => ("snapshot", "snapshot".to_owned()),
        ServerEventBody::RunStateChanged { state } => ("run", format!("run {}", state.as_str())),
        ServerEventBody::GateResolved { node_id, decision, decided_by, .. } => {
            ("decision", format!("{decided_by}: {} {node_id}", decision.as_str()))
        }
        ServerEventBody::NodeLog { node_id, line, .. } => ("log", format!("{node_id} | {line}")),
        ServerEventBody::GateReminder { node_id, escalated_to } if escalated_to.is_empty() => {
            ("gate", format!("{node_id} still waits: reminded"))
        }
        ServerEventBody::GateReminder { node_id, escalated_to } => {
            ("gate", format!("{node_id} escalated to {}", escalated_to.join(", ")))
        }
        ServerEventBody::GateProgress { node_id, approved_by, remaining } => {
            ("decision", format!("{node_id}: approved by {}, {remaining} more needed", approved_by.join(", ")))
        }
        ServerEventBody::RunRepaired { action, node_id, reset, repaired_by, .. } => {
            ("repair", format!("{repaired_by}: {} {node_id} ({} node(s) run again)", action.as_str(), reset.len()))
        }
    }
}

#[component]
pub fn Decisions(live_run: LiveRun) -> impl IntoView {
    view! {
        <section class="panel" data-testid="decisions">
            <h3>"Decisions"</h3>
            <Show
                when=move || live_run.decisions.with(|d| !d.is_empty())
                fallback=|| view! { <p class="muted small">"No gate has been decided yet."</p> }
            >
                <ol class="decision-list">
                    {move || {
                        live_run
                            .decisions
                            .get()
                            .into_iter()
                            .map(|d| {
                                view! {
                                    <li data-testid="decision">
                                        <span class=format!("badge decision-{}", d.decision.as_str())>
                                            {d.decision.as_str()}
                                        </span>
                                        " " <strong title=d.node_id.clone()>{live_run.label(&d.node_id)}</strong> " by " {d.decided_by.clone()}
                                        <span class="muted small mono">" " {short_time(&d.decided_at)}</span>
                                        {d.feedback.clone().map(|f| view! { <q class="feedback-quote">{f}</q> })}
                                    </li>
                                }
                            })
                            .collect_view()
                    }}
                </ol>
            </Show>
        </section>
    }
}

/// The run's notifications: target, topic, outcome, and every attempt with its answer. Read
/// again when a gate is decided, when the run's state changes, and on request.
#[component]
pub fn Notifications(live_run: LiveRun) -> impl IntoView {
    let dag_id = live_run.dag_id.get_value();
    let asked = RwSignal::new(0u32);
    let listed = Resource::new(
        move || (dag_id.clone(), asked.get(), live_run.decisions.with(Vec::len), live_run.phase.get()),
        |(dag_id, ..)| run_notifications(dag_id),
    );
    let row = |n: NotificationRecord| {
        let answers = n
            .attempts
            .iter()
            .map(|a| match (a.status, &a.error) {
                (Some(status), _) => status.to_string(),
                (None, Some(error)) => error.clone(),
                (None, None) => "?".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let host = n.url.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or(&n.url).to_owned();
        view! {
            <li data-testid="notification" data-topic=n.topic.clone() data-outcome=n.outcome.clone()>
                <span class=format!("badge outcome-{}", n.outcome)>{n.outcome.clone()}</span>
                " " <strong>{n.topic.clone()}</strong> " → " <span class="mono">{host}</span>
                <span class="muted small mono">" " {short_time(&n.created_at)}</span>
                <span class="muted small" data-testid="attempts">
                    " · " {n.attempts.len()} " attempt(s): " {answers}
                </span>
            </li>
        }
    };
    view! {
        <section class="panel" data-testid="notifications">
            <h3>
                "Notifications "
                <button class="link small" data-testid="refresh-notifications" on:click=move |_| asked.update(|n| *n += 1)>
                    "refresh"
                </button>
            </h3>
            <Suspense fallback=|| view! { <p class="muted small">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match listed.await {
                        Ok(list) if list.is_empty() => {
                            view! { <p class="muted small">"No notification was sent for this run."</p> }.into_any()
                        }
                        Ok(list) => view! { <ol class="notification-list">{list.into_iter().map(row).collect_view()}</ol> }.into_any(),
                        Err(error) => view! { <p class="muted small">"Unavailable: " {error.to_string()}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

#[component]
pub fn Timeline(live_run: LiveRun, up_to: Seq) -> impl IntoView {
    let dag_id = live_run.dag_id.get_value();
    let stored = Resource::new(move || (dag_id.clone(), up_to), |(dag_id, up_to)| run_events(dag_id, up_to));
    let line = |event: &ServerEvent| {
        let (kind, text) = describe(&event.body);
        view! {
            <li class=format!("event kind-{kind}")>
                <span class="mono muted">{event.seq}</span>
                <span class="kind">{kind}</span>
                <span class="text">{text}</span>
            </li>
        }
    };
    view! {
        <section class="panel" data-testid="timeline">
            <h3>"Timeline"</h3>
            <ol class="timeline">
                <Suspense fallback=|| view! { <li class="muted">"Loading the log…"</li> }>
                    {move || Suspend::new(async move {
                        match stored.await {
                            Ok(events) => events.iter().map(line).collect_view().into_any(),
                            Err(error) => view! { <li class="muted">"Log unavailable: " {error.to_string()}</li> }.into_any(),
                        }
                    })}
                </Suspense>
                // Keyed: a new event adds one line instead of redrawing the list.
                <For
                    each=move || live_run.timeline.with(|events| events.iter().filter(|e| e.seq > up_to).cloned().collect::<Vec<_>>())
                    key=|event| event.seq
                    let:event
                >
                    {line(&event)}
                </For>
            </ol>
        </section>
    }
}

/// `2026-11-26T10:00:00.123Z` → `10:00:00`.
fn short_time(rfc3339: &str) -> String {
    rfc3339.get(11..19).unwrap_or(rfc3339).to_owned()
}
