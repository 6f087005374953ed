//! The run list (`/`): every run with its state, start, duration, progress, spend and waiting
//! gates, live from the run list feed; and the ways to start one: a bundled example, or a spec
//! pasted or uploaded (refused inline, with the reason, when it is not valid).

use leptos::form::ActionForm;
use leptos::prelude::*;

use super::clock::{format_elapsed, parse_ms, use_now};
use super::runs_feed::use_runs_feed;
use super::{StartExample, list_runs};
use crate::protocol::{RunPhase, RunSummary};

/// Starts a run from spec text (`format`: `toml` or `json`) and sends the browser to it. An
/// invalid spec is an error naming the node and field; nothing starts.
#[server(endpoint = "start_spec")]
pub async fn start_spec(text: String, format: String) -> Result<String, ServerFnError> {
    use crate::engine::SpecFormat;
    use crate::service::StartRequest;
    let format = match format.as_str() {
        "json" => SpecFormat::Json,
        _ => SpecFormat::Toml,
    };
    let request = StartRequest::Spec { text, format };
    let dag_id = super::service()?.start(&super::caller()?, request).await.map_err(super::server_error)?;
    leptos_axum::redirect(&format!("/dags/{dag_id}"));
    Ok(dag_id)
}

/// The run list. Its code is split out of the main wasm (`cargo leptos build --split`) and
/// loaded before the page hydrates (see [`super::page`]); the run view does not download it.
#[lazy]
pub fn runs_page() -> AnyView {
    view! { <RunsPage/> }.into_any()
}

#[component]
fn RunsPage() -> impl IntoView {
    let runs = Resource::new(|| (), |_| list_runs());
    let user = expect_context::<super::SignedInUser>();
    view! {
        <section class="page runs">
            <div class="page-head">
                <h1>"Runs"</h1>
            </div>
            <Suspense fallback=|| view! { <p class="empty">"Loading runs…"</p> }>
                {move || Suspend::new(async move {
                    // Only admins start runs: a spec may run commands.
                    let may_start = user.has(crate::protocol::Role::Admin).await;
                    match runs.await {
                        Ok(list) => view! { {may_start.then(|| view! { <StartPanel/> })} <RunTable initial=list/> }.into_any(),
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
fn StartPanel() -> impl IntoView {
    let start = ServerAction::<StartExample>::new();
    let start_spec = ServerAction::<StartSpec>::new();
    let text = RwSignal::new(String::new());
    let format = RwSignal::new("toml".to_owned());
    // "true" once the browser has hydrated the panel (effects run only there). Before that the
    // forms post without the app, and hydration resets a textarea typed into; tests wait for it.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    view! {
        <div class="start panel" data-testid="start-panel" data-hydrated=move || hydrated.get().to_string()>
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
            {move || {
                start.value().get().and_then(Result::err).map(|error| view! { <p class="notice error">{error.to_string()}</p> })
            }}
            <div class="spec-form">
                <h3>"Or run your own spec"</h3>
                <ActionForm action=start_spec attr:class="spec">
                    <textarea
                        name="text"
                        data-testid="spec-text"
                        rows="6"
                        spellcheck="false"
                        placeholder="name = \"my-dag\"\n\n[[nodes]]\nid = \"hello\"\nkind = \"command\"\nrun = \"echo hello\""
                        prop:value=move || text.get()
                        on:input=move |ev| text.set(event_target_value(&ev))
                    ></textarea>
                    <div class="spec-actions">
                        <select name="format" data-testid="spec-format" on:change=move |ev| format.set(event_target_value(&ev))>
                            <option value="toml" selected=move || format.get() == "toml">"TOML"</option>
                            <option value="json" selected=move || format.get() == "json">"JSON"</option>
                        </select>
                        <label class="upload">
                            "Upload a file… "
                            <input type="file" accept=".toml,.json,text/plain,application/json" data-testid="spec-file" on:change=move |ev| read_file(ev, text, format)/>
                        </label>
                        <button type="submit" class="primary" data-testid="start-spec">"Validate and start"</button>
                    </div>
                    {move || {
                        start_spec
                            .value()
                            .get()
                            .and_then(Result::err)
                            .map(|error| {
                                let message = error.to_string();
                                let message = message.strip_prefix("error running server function: ").unwrap_or(&message).to_owned();
                                view! { <p class="notice error" data-testid="spec-error">{message}</p> }
                            })
                    }}
                </ActionForm>
            </div>
        </div>
    }
}

/// Puts an uploaded file's text in the spec box and picks the format by its name.
fn read_file(ev: leptos::ev::Event, text: RwSignal<String>, format: RwSignal<String>) {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsCast;
        let Some(input) = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok()) else { return };
        let Some(file) = input.files().and_then(|files| files.get(0)) else { return };
        if file.name().to_ascii_lowercase().ends_with(".json") {
            format.set("json".into());
        } else {
            format.set("toml".into());
        }
        leptos::task::spawn_local(async move {
            if let Ok(content) = wasm_bindgen_futures::JsFuture::from(file.text()).await {
                text.set(content.as_string().unwrap_or_default());
            }
        });
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (ev, text, format);
}

#[component]
fn RunTable(initial: Vec<RunSummary>) -> impl IntoView {
    let (runs, live) = use_runs_feed(initial);
    let now = use_now();
    // The runs ticked for comparing, in the order they were ticked (the first is `a`).
    let picked = RwSignal::new(Vec::<String>::new());
    view! {
        // "live" once the feed's first message arrived: from then on no change is missed.
        <div class="run-list" data-testid="run-list" data-feed=move || if live.get() { "live" } else { "connecting" }>
        <Show
            when=move || runs.with(|r| !r.is_empty())
            fallback=|| view! { <p class="empty">"No runs yet. Start the demo to see one live."</p> }
        >
            <div class="compare-bar">
                {move || match picked.get().as_slice() {
                    [a, b] => view! {
                        <a class="button" data-testid="compare-picked" href=format!("/compare?a={a}&b={b}")>"Compare the two runs"</a>
                    }
                    .into_any(),
                    _ => view! { <span class="muted small" data-testid="compare-hint">"Tick two runs to compare them."</span> }.into_any(),
                }}
            </div>
            <table class="run-table" data-testid="run-table">
                <thead>
                    <tr>
                        <th><span class="sr-only">"Compare"</span></th>
                        <th>"Run"</th>
                        <th>"State"</th>
                        <th>"Started"</th>
                        <th>"Duration"</th>
                        <th>"Progress"</th>
                        <th>"Spend"</th>
                        <th>"Gates"</th>
                    </tr>
                </thead>
                <tbody>
                    <For each=move || runs.get() key=|run| (run.dag_id.clone(), run.state, run.nodes_done, run.gates_waiting, run.cost.spent.to_bits(), run.nodes_total) let:run>
                        <RunRow run now picked/>
                    </For>
                </tbody>
            </table>
        </Show>
        </div>
    }
}

#[component]
fn RunRow(run: RunSummary, now: ReadSignal<f64>, picked: RwSignal<Vec<String>>) -> impl IntoView {
    let href = format!("/dags/{}", run.dag_id);
    let started = parse_ms(&run.started_at);
    let ended = run.ended_at.as_deref().and_then(parse_ms);
    let running = !run.state.is_terminal();
    let duration = move || match (started, ended, running) {
        (Some(start), _, true) => format_elapsed(now.get() - start),
        (Some(start), Some(end), false) => format_elapsed(end - start),
        (Some(_), None, false) | (None, _, _) => "–".to_owned(),
    };
    let spend = if run.cost.budget > 0.0 {
        format!("${:.2} / ${:.2}", run.cost.spent, run.cost.budget)
    } else {
        format!("${:.2}", run.cost.spent)
    };
    view! {
        <tr data-testid="run-row" data-dag-id=run.dag_id.clone() data-state=run.state.as_str()>
            <td>
                <input
                    type="checkbox"
                    data-testid="compare-pick"
                    title="Compare this run"
                    prop:checked={
                        let dag_id = run.dag_id.clone();
                        move || picked.with(|p| p.contains(&dag_id))
                    }
                    on:change={
                        let dag_id = run.dag_id.clone();
                        move |_| {
                            picked.update(|p| {
                                if let Some(at) = p.iter().position(|id| *id == dag_id) {
                                    p.remove(at);
                                } else {
                                    // Two at most: ticking a third lets go of the oldest.
                                    p.push(dag_id.clone());
                                    if p.len() > 2 {
                                        p.remove(0);
                                    }
                                }
                            })
                        }
                    }
                />
            </td>
            <td>
                <a href=href>{run.name.clone()}</a>
                <span class="muted mono">" " {run.dag_id.clone()}</span>
            </td>
            <td>
                <span class=format!("badge phase-{}", run.state.as_str())>{run.state.as_str()}</span>
            </td>
            <td class="muted">{short_time(&run.started_at)}</td>
            <td class="mono">{duration}</td>
            <td>{format!("{} / {}", run.nodes_done, run.nodes_total)}</td>
            <td class="mono">{spend}</td>
            <td>
                {(run.gates_waiting > 0)
                    .then(|| {
                        view! {
                            <span class="badge phase-paused" data-testid="gates-waiting">
                                {format!("{} waiting", run.gates_waiting)}
                            </span>
                        }
                    })}
                {(run.state == RunPhase::Paused).then(|| view! { <span class="muted small">" paused"</span> })}
            </td>
        </tr>
    }
}

/// `2026-11-26T10:00:00.123Z` → `2026-11-26 10:00:00`.
fn short_time(rfc3339: &str) -> String {
    rfc3339.get(..19).map(|s| s.replace('T', " ")).unwrap_or_else(|| rfc3339.to_owned())
}
