//! The run list (`/`): every run with its state, progress and spend, and a way to start one.

use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_router::components::A;

use super::{StartExample, list_runs};
use crate::protocol::RunSummary;

#[component]
pub fn RunsPage() -> impl IntoView {
    let start = ServerAction::<StartExample>::new();
    let runs = Resource::new(move || start.version().get(), |_| list_runs());
    view! {
        <section class="page runs">
            <div class="page-head">
                <h1>"Runs"</h1>
                <div class="start-buttons">
                    {crate::examples::names()
                        .map(|name| {
                            view! {
                                <ActionForm action=start attr:class="start-form">
                                    <input type="hidden" name="name" value=name/>
                                    <button
                                        type="submit"
                                        class=if name == "demo" { "primary" } else { "" }
                                        data-testid=format!("start-{name}")
                                    >
                                        {format!("Start {name} run")}
                                    </button>
                                </ActionForm>
                            }
                        })
                        .collect_view()}
                </div>
            </div>
            {move || {
                start
                    .value()
                    .get()
                    .and_then(Result::err)
                    .map(|error| view! { <p class="notice error">{error.to_string()}</p> })
            }}
            <Suspense fallback=|| view! { <p class="empty">"Loading runs…"</p> }>
                {move || Suspend::new(async move {
                    match runs.await {
                        Ok(list) if list.is_empty() => {
                            view! { <p class="empty">"No runs yet. Start the demo to see one live."</p> }
                                .into_any()
                        }
                        Ok(list) => view! { <RunTable runs=list/> }.into_any(),
                        Err(error) => {
                            view! { <p class="notice error">"Could not load runs: " {error.to_string()}</p> }
                                .into_any()
                        }
                    }
                })}
            </Suspense>
        </section>
    }
}

#[component]
fn RunTable(runs: Vec<RunSummary>) -> impl IntoView {
    view! {
        <table class="run-table">
            <thead>
                <tr>
                    <th>"Run"</th>
                    <th>"State"</th>
                    <th>"Started"</th>
                    <th>"Progress"</th>
                    <th>"Spend"</th>
                    <th>"Gates"</th>
                </tr>
            </thead>
            <tbody>
                {runs
                    .into_iter()
                    .map(|run| {
                        let href = format!("/dags/{}", run.dag_id);
                        view! {
                            <tr data-testid="run-row" data-dag-id=run.dag_id.clone()>
                                <td>
                                    <A href=href>{run.name.clone()}</A>
                                    <span class="muted mono">" " {run.dag_id.clone()}</span>
                                </td>
                                <td>
                                    <span class=format!("badge phase-{}", run.state.as_str())>
                                        {run.state.as_str()}
                                    </span>
                                </td>
                                <td class="muted">{short_time(&run.started_at)}</td>
                                <td>{format!("{} / {}", run.nodes_done, run.nodes_total)}</td>
                                <td class="mono">
                                    {format!("${:.2} / ${:.2}", run.cost.spent, run.cost.budget)}
                                </td>
                                <td>
                                    {(run.gates_waiting > 0)
                                        .then(|| {
                                            view! {
                                                <span class="badge phase-paused">
                                                    {format!("{} waiting", run.gates_waiting)}
                                                </span>
                                            }
                                        })}
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
}

/// `2026-11-26T10:00:00.123Z` → `2026-11-26 10:00:00`.
fn short_time(rfc3339: &str) -> String {
    rfc3339.get(..19).map(|s| s.replace('T', " ")).unwrap_or_else(|| rfc3339.to_owned())
}
