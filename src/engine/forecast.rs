//! What approving a gate will cost: the expected spend of what runs after the gate and of the
//! rest of the run, from each node's cost hint in the spec where it has one, and otherwise from
//! what the node cost in past runs of the same spec (mean and 90th percentile per node id).
//! Pure: the coordinator gives the nodes and the history; table tests below.
//!
//! The p90 of a group of nodes is the sum of their p90s: a cautious figure (the nodes rarely all
//! cost their most at once), which is what a person approving spend wants to see.

use std::collections::HashMap;

use crate::protocol::{CostEstimate, Forecast};

/// What the nodes of a spec cost in its past runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CostHistory {
    /// Past runs of the spec the figures come from.
    pub runs: u32,
    /// Each node id's cost in each past run where it ran.
    pub per_node: HashMap<String, Vec<f64>>,
}

/// Runs of the same spec a history draws on at most (the newest).
pub const HISTORY_RUNS: usize = 20;

/// One node as the forecast sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Priced<'a> {
    pub id: &'a str,
    /// The spec's own figure for it (a simulate node's `cost`, a command node's `cost` hint).
    pub hint: Option<f64>,
}

/// The expected cost of one node: its hint, else its history; `None` when neither says.
pub fn node_estimate(node: Priced<'_>, history: &CostHistory) -> Option<CostEstimate> {
    if let Some(hint) = node.hint {
        return Some(CostEstimate { mean: hint, p90: hint });
    }
    let costs = history.per_node.get(node.id).filter(|costs| !costs.is_empty())?;
    let mean = costs.iter().sum::<f64>() / costs.len() as f64;
    let mut sorted = costs.clone();
    sorted.sort_by(f64::total_cmp);
    // The nearest-rank 90th percentile.
    let rank = ((0.9 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(CostEstimate { mean, p90: sorted[rank - 1] })
}

/// The sum of the estimates of `nodes`, and how many had none.
fn total(nodes: &[Priced<'_>], history: &CostHistory) -> (CostEstimate, u32) {
    let mut sum = CostEstimate { mean: 0.0, p90: 0.0 };
    let mut unknown = 0;
    for node in nodes {
        match node_estimate(*node, history) {
            Some(estimate) => {
                sum.mean += estimate.mean;
                sum.p90 += estimate.p90;
            }
            None => unknown += 1,
        }
    }
    (sum, unknown)
}

/// The forecast of a gate: `after` are the unfinished nodes that wait for it (directly or not),
/// `rest` every unfinished node of the run; `approving_adds` is a budget gate's step.
pub fn forecast(
    after: &[Priced<'_>],
    rest: &[Priced<'_>],
    history: &CostHistory,
    approving_adds: Option<f64>,
) -> Forecast {
    let (after_gate, _) = total(after, history);
    let (rest_of_run, unknown) = total(rest, history);
    let from_history = rest.iter().any(|node| node.hint.is_none() && history.per_node.contains_key(node.id));
    Forecast {
        after_gate,
        rest_of_run,
        based_on_runs: if from_history { history.runs } else { 0 },
        unpriced: unknown,
        approving_adds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> CostHistory {
        let mut per_node = HashMap::new();
        per_node.insert("fetch".to_owned(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]);
        per_node.insert("write".to_owned(), vec![0.5]);
        CostHistory { runs: 10, per_node }
    }

    fn priced(id: &str, hint: Option<f64>) -> Priced<'_> {
        Priced { id, hint }
    }

    #[test]
    fn a_node_is_priced_by_its_hint_else_by_its_past_runs() {
        let table = [
            (priced("fetch", Some(2.0)), Some((2.0, 2.0)), "the hint wins"),
            (priced("fetch", None), Some((5.5, 9.0)), "mean and nearest-rank p90 of ten runs"),
            (priced("write", None), Some((0.5, 0.5)), "one past run"),
            (priced("new", None), None, "never ran, no hint"),
            (priced("free", Some(0.0)), Some((0.0, 0.0)), "a hint of 0 is a figure too"),
        ];
        for (node, expected, why) in table {
            assert_eq!(node_estimate(node, &history()).map(|e| (e.mean, e.p90)), expected, "{why}");
        }
    }

    #[test]
    fn a_gate_forecast_sums_what_follows_it_and_the_rest_of_the_run() {
        let after = [priced("fetch", None), priced("write", Some(0.25))];
        let rest =
            [priced("fetch", None), priced("write", Some(0.25)), priced("new", None), priced("other", Some(1.0))];
        let forecast = forecast(&after, &rest, &history(), Some(5.0));
        assert_eq!((forecast.after_gate.mean, forecast.after_gate.p90), (5.75, 9.25));
        assert_eq!((forecast.rest_of_run.mean, forecast.rest_of_run.p90), (6.75, 10.25));
        assert_eq!(forecast.based_on_runs, 10);
        assert_eq!(forecast.unpriced, 1, "\"new\" has no figure");
        assert_eq!(forecast.approving_adds, Some(5.0));
        // Hints only: no past run is drawn on.
        let hinted = super::forecast(&[priced("write", Some(0.25))], &[priced("write", Some(0.25))], &history(), None);
        assert_eq!(hinted.based_on_runs, 0);
        assert_eq!(super::forecast(&[], &[], &CostHistory::default(), None).rest_of_run.mean, 0.0);
    }
}
