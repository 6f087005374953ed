//! The spend panel: spent / budget / remaining with a bar that turns amber at 80 % and red at
//! 100 %, spend over the run as a sparkline, and which nodes ate the budget.

use leptos::prelude::*;

use super::live_run::{LiveRun, NodeSignal};
use crate::protocol::Cost;

/// How full the budget is: `ok`, `near` (80 % and more) or `over` (100 % and more).
pub fn budget_level(cost: Cost) -> &'static str {
    if cost.budget <= 0.0 {
        return "ok";
    }
    let used = cost.spent / cost.budget;
    if used >= 1.0 {
        "over"
    } else if used >= 0.8 {
        "near"
    } else {
        "ok"
    }
}

/// `$1.75 remaining`, `$0.15 over budget`, or `no budget`.
pub fn remaining_text(cost: Cost) -> String {
    match cost.budget > 0.0 {
        false => "no budget".to_owned(),
        true if cost.remaining < 0.0 => format!("${:.2} over budget", -cost.remaining),
        true => format!("${:.2} remaining", cost.remaining),
    }
}

/// How much of the budget is spent, in percent, at most 100 (0 without a budget).
pub fn budget_used_percent(cost: Cost) -> f64 {
    if cost.budget > 0.0 { (100.0 * cost.spent / cost.budget).min(100.0) } else { 0.0 }
}

/// The points of a sparkline through `values` in a `width` × `height` box (SVG `points`).
pub fn sparkline_points(values: &[(u64, f64)], width: f64, height: f64) -> String {
    let (Some(first), Some(last)) = (values.first(), values.last()) else { return String::new() };
    let span = (last.0.saturating_sub(first.0)).max(1) as f64;
    let top = values.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(f64::EPSILON);
    values
        .iter()
        .map(|(x, v)| {
            let px = (x.saturating_sub(first.0)) as f64 / span * width;
            let py = height - v / top * height;
            format!("{px:.1},{py:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[component]
pub fn SpendPanel(live_run: LiveRun) -> impl IntoView {
    let cost = live_run.cost;
    // The eight costliest nodes. Recomputed when the spend changes (a node's cost is recorded
    // with it) or the graph does, not on every node event: in a 1 000-node run that was a scan
    // and a sort per event.
    let per_node = Memo::new(move |_| {
        cost.track();
        live_run.nodes.with(|nodes| {
            let mut costed: Vec<(f64, &NodeSignal)> = nodes
                .iter()
                .filter_map(|n| n.view.with_untracked(|v| v.metrics.cost).filter(|c| *c > 0.0).map(|c| (c, n)))
                .collect();
            costed.sort_by(|a, b| b.0.total_cmp(&a.0));
            costed.into_iter().take(8).map(|(c, n)| (n.view.with_untracked(|v| v.label.clone()), c)).collect::<Vec<_>>()
        })
    });
    view! {
        <section class="panel spend" data-testid="spend-panel">
            <h3>"Spend"</h3>
            <div class="spend-figures mono">
                <span data-testid="spend-spent">{move || format!("${:.2} spent", cost.get().spent)}</span>
                <span>
                    {move || {
                        let c = cost.get();
                        if c.budget > 0.0 { format!("of ${:.2} budget", c.budget) } else { "no budget".to_owned() }
                    }}
                </span>
                <span class="muted" data-testid="spend-remaining">
                    {move || { let c = cost.get(); if c.budget > 0.0 { remaining_text(c) } else { String::new() } }}
                </span>
            </div>
            <div class=move || format!("bar big spend-{}", budget_level(cost.get())) data-testid="spend-bar" data-level=move || budget_level(cost.get())>
                <div
                    class="fill"
                    style:width=move || format!("{:.1}%", budget_used_percent(cost.get()))
                ></div>
            </div>
            <svg class="sparkline" viewBox="0 0 300 48" preserveAspectRatio="none" data-testid="sparkline">
                <polyline points=move || live_run.spend_series.with(|s| sparkline_points(s, 300.0, 44.0))></polyline>
            </svg>
            <h4>"Cost per node"</h4>
            <ol class="per-node" data-testid="cost-per-node">
                {move || {
                    let nodes = per_node.get();
                    let top = nodes.first().map(|(_, c)| *c).unwrap_or(1.0);
                    if nodes.is_empty() {
                        return view! { <li class="muted small">"Nothing spent yet."</li> }.into_any();
                    }
                    nodes
                        .into_iter()
                        .map(|(label, c)| {
                            view! {
                                <li>
                                    <span class="per-node-label">{label}</span>
                                    <span class="per-node-bar"><span style:width=format!("{:.0}%", 100.0 * c / top)></span></span>
                                    <span class="mono small">{format!("${c:.2}")}</span>
                                </li>
                            }
                        })
                        .collect_view()
                        .into_any()
                }}
            </ol>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_turns_amber_at_80_and_red_at_100_percent() {
        let at = |spent: f64| budget_level(Cost { spent, budget: 10.0, remaining: 10.0 - spent });
        assert_eq!((at(7.9), at(8.0), at(9.99), at(10.0), at(12.0)), ("ok", "near", "near", "over", "over"));
        assert_eq!(budget_level(Cost { spent: 5.0, budget: 0.0, remaining: 0.0 }), "ok", "no budget, no alarm");
    }

    #[test]
    fn remaining_reads_as_over_budget_once_spent() {
        assert_eq!(remaining_text(Cost { spent: 0.25, budget: 2.0, remaining: 1.75 }), "$1.75 remaining");
        assert_eq!(remaining_text(Cost { spent: 1.15, budget: 1.0, remaining: -0.15 }), "$0.15 over budget");
        assert_eq!(remaining_text(Cost { spent: 1.0, budget: 0.0, remaining: 0.0 }), "no budget");
    }

    #[test]
    fn the_sparkline_spans_its_box() {
        let points = sparkline_points(&[(10, 0.0), (20, 1.0), (30, 2.0)], 300.0, 40.0);
        assert_eq!(points, "0.0,40.0 150.0,20.0 300.0,0.0");
        assert_eq!(sparkline_points(&[], 300.0, 40.0), "");
    }
}
