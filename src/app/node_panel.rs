//! The panel of the selected node: status, attempts, timings, cost and tokens, its output as
//! pretty JSON, a live tail of its log lines, and (for approvers) retry and re-run.

use leptos::prelude::*;

use super::live_run::LiveRun;
use super::stream::DagStream;
use crate::protocol::{ClientEvent, LogStream, NodeStatus, NodeView, RepairAction};

#[component]
pub fn NodePanel(
    live_run: LiveRun,
    selected: RwSignal<Option<String>>,
    stream: DagStream,
    may_steer: bool,
) -> impl IntoView {
    let node = move || selected.get().and_then(|id| live_run.node(&id));
    view! {
        {move || {
            node()
                .map(|view| {
                    view! {
                        <aside class="node-panel panel" data-testid="node-panel">
                            <header>
                                <h3>{move || view.with(|v| v.label.clone())}</h3>
                                <button class="link" data-testid="close-panel" on:click=move |_| selected.set(None)>
                                    "Close"
                                </button>
                            </header>
                            <dl class="facts">
                                <dt>"Status"</dt>
                                <dd data-testid="panel-status">{move || view.with(|v| v.status.as_str())}</dd>
                                <dt>"Kind"</dt>
                                <dd>{move || view.with(|v| v.kind.as_str())}</dd>
                                <dt>"Attempt"</dt>
                                <dd>{move || view.with(|v| v.metrics.attempt.map(|a| a.to_string()).unwrap_or_else(|| "–".into()))}</dd>
                                <dt>"Started"</dt>
                                <dd class="mono">{move || view.with(|v| time(v.metrics.started_at.as_deref()))}</dd>
                                <dt>"Finished"</dt>
                                <dd class="mono">{move || view.with(|v| time(v.metrics.finished_at.as_deref()))}</dd>
                                <dt>"Duration"</dt>
                                <dd class="mono">
                                    {move || view.with(|v| v.metrics.duration_ms.map(|ms| format!("{:.2} s", ms as f64 / 1000.0)).unwrap_or_else(|| "–".into()))}
                                </dd>
                                <dt>"Cost"</dt>
                                <dd class="mono">{move || view.with(|v| v.metrics.cost.map(|c| format!("${c:.4}")).unwrap_or_else(|| "–".into()))}</dd>
                                <dt>"Tokens"</dt>
                                <dd class="mono">{move || view.with(tokens)}</dd>
                                <dt>"Needs"</dt>
                                <dd>{move || view.with(|v| if v.needs.is_empty() { "–".to_owned() } else { v.needs.join(", ") })}</dd>
                            </dl>
                            {may_steer.then(|| view! { <Repair live_run selected stream/> })}
                            <h4>"Output"</h4>
                            <pre class="output" data-testid="panel-output">
                                {move || view.with(|v| v.output.as_ref().map(|o| serde_json::to_string_pretty(o).unwrap_or_default()).unwrap_or_else(|| "no output yet".into()))}
                            </pre>
                            <h4>"Log"</h4>
                            <ol class="log" data-testid="panel-log">
                                {move || {
                                    view.with(|v| {
                                        if v.log_tail.is_empty() {
                                            return view! { <li class="muted">"no log lines"</li> }.into_any();
                                        }
                                        v.log_tail
                                            .iter()
                                            .map(|line| {
                                                let class = match line.stream {
                                                    LogStream::Stdout => "out",
                                                    LogStream::Stderr => "err",
                                                };
                                                view! { <li class=class>{line.line.clone()}</li> }
                                            })
                                            .collect_view()
                                            .into_any()
                                    })
                                }}
                            </ol>
                        </aside>
                    }
                })
        }}
    }
}

/// Retry (a failed node) and re-run from here (a finished one), each enabled when the run takes
/// it, with what it would run again or why not. Both go over the run's stream like every
/// command; a refusal comes back as the page's notice.
#[component]
fn Repair(live_run: LiveRun, selected: RwSignal<Option<String>>, stream: DagStream) -> impl IntoView {
    move || {
        let node_id = selected.get()?;
        let status = live_run.node(&node_id)?.with(|v| v.status);
        if !status.is_terminal() {
            return None;
        }
        let retry = (status == NodeStatus::Failed).then(|| live_run.repair_plan(RepairAction::Retry, &node_id));
        let rerun = live_run.repair_plan(RepairAction::Rerun, &node_id);
        let what = match (&retry, &rerun) {
            (Some(Ok(plan)), _) | (None, Ok(plan)) => format!("Runs again: {}", plan.join(", ")),
            (Some(Err(reason)), _) | (None, Err(reason)) => reason.clone(),
        };
        let (retry_id, rerun_id) = (node_id.clone(), node_id);
        Some(view! {
            <div class="repair" data-testid="repair">
                {retry.as_ref().map(|plan| {
                    let refused = plan.is_err();
                    view! {
                        <button
                            class="primary"
                            data-testid="retry-node"
                            disabled=refused
                            on:click=move |_| stream.send(&ClientEvent::RetryNode { node_id: retry_id.clone() })
                        >
                            "Retry"
                        </button>
                    }
                })}
                <button
                    data-testid="rerun-node"
                    disabled=rerun.is_err()
                    on:click=move |_| stream.send(&ClientEvent::RerunNode { node_id: rerun_id.clone() })
                >
                    "Re-run from here"
                </button>
                <p class="muted small" data-testid="repair-plan">{what}</p>
            </div>
        })
    }
}

fn time(rfc3339: Option<&str>) -> String {
    rfc3339.and_then(|t| t.get(11..23)).unwrap_or("–").to_owned()
}

fn tokens(view: &NodeView) -> String {
    match (view.metrics.tokens_in, view.metrics.tokens_out) {
        (None, None) => "–".to_owned(),
        (tokens_in, tokens_out) => format!("{} in / {} out", tokens_in.unwrap_or(0), tokens_out.unwrap_or(0)),
    }
}
