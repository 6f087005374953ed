//! The compare page (`/compare?a=…&b=…`): two runs side by side. Per node its status, attempts,
//! duration, cost and tokens in each run with the difference, and what changed in its output;
//! nodes that only one run has are marked; totals first. Built by the server
//! (`crate::compare`), read here.

use leptos::prelude::*;

use super::clock::format_elapsed;
use super::page::query_param;
use crate::protocol::{ComparedRun, NodeComparison, NodeFigures, OutputChange, RunComparison};

/// Runs `a` and `b` side by side.
#[server(endpoint = "compare_runs", output = super::json_text::JsonText)]
pub async fn compare_runs(a: String, b: String) -> Result<RunComparison, ServerFnError> {
    super::service()?.compare(&a, &b).await.map_err(super::server_error)
}

/// The compare page. Its code is split out of the main wasm (see [`super::page`]).
#[lazy]
pub fn compare_page() -> AnyView {
    view! { <ComparePage/> }.into_any()
}

#[component]
fn ComparePage() -> impl IntoView {
    let (a, b) = (query_param("a"), query_param("b"));
    let Some((a, b)) = a.zip(b) else {
        return view! {
            <section class="page compare">
                <h1>"Compare runs"</h1>
                <p class="empty">"Tick two runs in the " <a href="/">"run list"</a> " to compare them."</p>
            </section>
        }
        .into_any();
    };
    let comparison = Resource::new(move || (a.clone(), b.clone()), |(a, b)| compare_runs(a, b));
    view! {
        <section class="page compare" data-testid="compare">
            <div class="page-head">
                <h1>"Compare runs"</h1>
            </div>
            <Suspense fallback=|| view! { <p class="empty">"Loading both runs…"</p> }>
                {move || Suspend::new(async move {
                    match comparison.await {
                        Ok(comparison) => view! { <Comparison comparison/> }.into_any(),
                        Err(error) => view! { <p class="notice error">{error.to_string()}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
    .into_any()
}

#[component]
fn Comparison(comparison: RunComparison) -> impl IntoView {
    let RunComparison { a, b, nodes } = comparison;
    let totals = totals_rows(&a, &b);
    view! {
        <table class="compare-table totals" data-testid="compare-totals">
            <thead>
                <tr>
                    <th></th>
                    <th>"A"</th>
                    <th>"B"</th>
                    <th>"B − A"</th>
                </tr>
            </thead>
            <tbody>
                <tr>
                    <th>"Run"</th>
                    <td><RunLink run=a.clone()/></td>
                    <td><RunLink run=b.clone()/></td>
                    <td></td>
                </tr>
                {totals}
            </tbody>
        </table>
        <table class="compare-table nodes" data-testid="compare-nodes">
            <thead>
                <tr>
                    <th>"Node"</th>
                    <th>"Status"</th>
                    <th>"Attempts"</th>
                    <th>"Duration"</th>
                    <th>"Cost"</th>
                    <th>"Tokens"</th>
                    <th>"Output"</th>
                </tr>
            </thead>
            <tbody>{nodes.into_iter().map(|node| view! { <NodeRow node/> }).collect_view()}</tbody>
        </table>
    }
}

#[component]
fn RunLink(run: ComparedRun) -> impl IntoView {
    let summary = run.run;
    view! {
        <a href=format!("/dags/{}", summary.dag_id)>{summary.name}</a>
        <span class="muted mono small">" " {summary.dag_id}</span>
        " "
        <span class=format!("badge phase-{}", summary.state.as_str())>{summary.state.as_str()}</span>
    }
}

/// The totals: spend, duration, tokens, attempts, failures, each with B − A.
fn totals_rows(a: &ComparedRun, b: &ComparedRun) -> impl IntoView + use<> {
    let row = |what: &'static str, a: String, b: String, diff: String| {
        view! {
            <tr data-testid=format!("total-{}", what.to_lowercase())>
                <th>{what}</th>
                <td class="mono">{a}</td>
                <td class="mono">{b}</td>
                <td class="mono diff">{diff}</td>
            </tr>
        }
    };
    let duration = |d: Option<u64>| d.map(|ms| elapsed(ms as f64)).unwrap_or_else(|| "running".into());
    vec![
        row(
            "Spend",
            money(Some(a.run.cost.spent)),
            money(Some(b.run.cost.spent)),
            money_diff(Some(a.run.cost.spent), Some(b.run.cost.spent)),
        ),
        row("Duration", duration(a.duration_ms), duration(b.duration_ms), duration_diff(a.duration_ms, b.duration_ms)),
        row("Tokens", a.tokens.to_string(), b.tokens.to_string(), count_diff(Some(a.tokens), Some(b.tokens))),
        row(
            "Attempts",
            a.attempts.to_string(),
            b.attempts.to_string(),
            count_diff(Some(a.attempts.into()), Some(b.attempts.into())),
        ),
        row(
            "Failed",
            a.nodes_failed.to_string(),
            b.nodes_failed.to_string(),
            count_diff(Some(a.nodes_failed as u64), Some(b.nodes_failed as u64)),
        ),
    ]
}

#[component]
fn NodeRow(node: NodeComparison) -> impl IntoView {
    let NodeComparison { id, label, a, b, output_changes } = node;
    let presence = match (&a, &b) {
        (Some(_), None) => "only-a",
        (None, Some(_)) => "only-b",
        (Some(_), Some(_)) | (None, None) => "both",
    };
    let only = match presence {
        "only-a" => Some("only in A"),
        "only-b" => Some("only in B"),
        _ => None,
    };
    let pair = |f: fn(&NodeFigures) -> String| {
        let side = |figures: &Option<NodeFigures>| figures.as_ref().map(f).unwrap_or_else(|| "–".into());
        (side(&a), side(&b))
    };
    let (status_a, status_b) = pair(|f| f.status.as_str().to_owned());
    let (attempts_a, attempts_b) = pair(|f| f.attempts.to_string());
    let (duration_a, duration_b) = pair(|f| f.duration_ms.map(|ms| elapsed(ms as f64)).unwrap_or_else(|| "–".into()));
    let (cost_a, cost_b) = pair(|f| money(f.cost));
    let (tokens_a, tokens_b) = pair(|f| f.tokens.map(|t| t.to_string()).unwrap_or_else(|| "–".into()));
    let figure = |f: fn(&NodeFigures) -> Option<u64>| (a.as_ref().and_then(f), b.as_ref().and_then(f));
    let (da, db) = figure(|f| f.duration_ms);
    let duration_delta = duration_diff(da, db);
    let cost_delta = money_diff(a.as_ref().and_then(|f| f.cost), b.as_ref().and_then(|f| f.cost));
    let (ta, tb) = figure(|f| f.tokens);
    let tokens_delta = count_diff(ta, tb);
    let same_output = presence == "both" && output_changes.is_empty();
    view! {
        <tr class=format!("compare-node {presence}") data-testid=format!("compare-{id}") data-presence=presence>
            <th>
                {label}
                {only.map(|only| view! { <span class="badge phase-paused small" data-testid="only">{only}</span> })}
            </th>
            <td><Pair a=status_a b=status_b/></td>
            <td class="mono"><Pair a=attempts_a b=attempts_b/></td>
            <td class="mono"><Pair a=duration_a b=duration_b/><span class="diff">{duration_delta}</span></td>
            <td class="mono"><Pair a=cost_a b=cost_b/><span class="diff">{cost_delta}</span></td>
            <td class="mono"><Pair a=tokens_a b=tokens_b/><span class="diff">{tokens_delta}</span></td>
            <td class="output-diff" data-testid="output-diff">
                {if same_output {
                    view! { <span class="muted small">"same"</span> }.into_any()
                } else {
                    view! { <ul>{output_changes.into_iter().map(|change| view! { <Change change/> }).collect_view()}</ul> }.into_any()
                }}
            </td>
        </tr>
    }
}

#[component]
fn Pair(a: String, b: String) -> impl IntoView {
    let changed = a != b;
    view! {
        <span class="pair" class:changed=changed>
            <span class="side-a">{a}</span>
            " → "
            <span class="side-b">{b}</span>
        </span>
    }
}

#[component]
fn Change(change: OutputChange) -> impl IntoView {
    let text = |value: &Option<serde_json::Value>| value.as_ref().map(|v| v.to_string()).unwrap_or_default();
    let path = if change.path.is_empty() { "(output)".to_owned() } else { change.path.clone() };
    let (before, after) = (text(&change.a), text(&change.b));
    view! {
        <li class=format!("change op-{}", change.op) data-testid="output-change">
            <span class="mono">{path}</span>
            " "
            {(!before.is_empty()).then(|| view! { <del class="mono">{before}</del> })}
            {(!after.is_empty()).then(|| view! { <ins class="mono">{after}</ins> })}
        </li>
    }
}

fn money(amount: Option<f64>) -> String {
    amount.map(|a| format!("${a:.2}")).unwrap_or_else(|| "–".into())
}

fn money_diff(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if (b - a).abs() >= 0.005 => {
            format!("{}${:.2}", if b > a { "+" } else { "−" }, (b - a).abs())
        }
        (Some(_), Some(_)) => "±0".into(),
        _ => String::new(),
    }
}

fn count_diff(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > a => format!("+{}", b - a),
        (Some(a), Some(b)) if a > b => format!("−{}", a - b),
        (Some(_), Some(_)) => "±0".into(),
        _ => String::new(),
    }
}

/// Differences under 10 ms are noise and shown as none.
fn duration_diff(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b >= a + 10 => format!("+{}", elapsed((b - a) as f64)),
        (Some(a), Some(b)) if a >= b + 10 => format!("−{}", elapsed((a - b) as f64)),
        (Some(_), Some(_)) => "±0".into(),
        _ => String::new(),
    }
}

/// A duration: to the hundredth of a second under a minute (node steps are often short).
fn elapsed(ms: f64) -> String {
    if ms < 60_000.0 { format!("{:.2} s", ms / 1000.0) } else { format_elapsed(ms) }
}
