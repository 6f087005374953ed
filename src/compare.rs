//! Comparing two runs (`/compare?a=…&b=…`, `GET /api/compare?a=…&b=…`): a pure function of
//! their states, [`compare`]. Works for runs of different versions of a spec: a node only one
//! run has is listed with the other side empty.

use json_patch::PatchOperation;
use serde_json::Value;

use crate::protocol::{ComparedRun, NodeComparison, NodeFigures, NodeView, OutputChange, RunComparison, RunState};

/// Runs `a` and `b` side by side: every node of `a` in its order, then those only `b` has.
pub fn compare(a: &RunState, b: &RunState) -> RunComparison {
    let mut nodes: Vec<NodeComparison> = a
        .nodes
        .values()
        .map(|node| {
            let other = b.nodes.get(&node.id);
            NodeComparison {
                id: node.id.clone(),
                label: node.label.clone(),
                a: Some(figures(node)),
                b: other.map(figures),
                output_changes: other
                    .map(|other| output_changes(node.output.as_ref(), other.output.as_ref()))
                    .unwrap_or_default(),
            }
        })
        .collect();
    nodes.extend(b.nodes.values().filter(|node| !a.nodes.contains_key(&node.id)).map(|node| NodeComparison {
        id: node.id.clone(),
        label: node.label.clone(),
        a: None,
        b: Some(figures(node)),
        output_changes: Vec::new(),
    }));
    RunComparison { a: totals(a), b: totals(b), nodes }
}

fn figures(node: &NodeView) -> NodeFigures {
    let metrics = &node.metrics;
    let tokens = (metrics.tokens_in.is_some() || metrics.tokens_out.is_some())
        .then(|| metrics.tokens_in.unwrap_or(0) + metrics.tokens_out.unwrap_or(0));
    NodeFigures {
        status: node.status,
        attempts: metrics.attempt.unwrap_or(0),
        duration_ms: metrics.duration_ms,
        cost: metrics.cost,
        tokens,
        output: node.output.clone(),
    }
}

fn totals(state: &RunState) -> ComparedRun {
    let run = state.summary();
    let instant = |at: &str| humantime::parse_rfc3339_weak(at).ok();
    let duration_ms = run
        .ended_at
        .as_deref()
        .and_then(instant)
        .zip(instant(&run.started_at))
        .and_then(|(end, start)| end.duration_since(start).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let tokens =
        state.nodes.values().map(|n| n.metrics.tokens_in.unwrap_or(0) + n.metrics.tokens_out.unwrap_or(0)).sum();
    let attempts = state.nodes.values().map(|n| n.metrics.attempt.unwrap_or(0)).sum();
    ComparedRun { duration_ms, tokens, attempts, nodes_failed: state.progress().failed, run }
}

/// What changed from output `a` to output `b`, each change with the value on both sides.
fn output_changes(a: Option<&Value>, b: Option<&Value>) -> Vec<OutputChange> {
    let change =
        |op: &str, path: String, a: Option<Value>, b: Option<Value>| OutputChange { op: op.into(), path, a, b };
    match (a, b) {
        (None, None) => Vec::new(),
        (Some(a), None) => vec![change("remove", String::new(), Some(a.clone()), None)],
        (None, Some(b)) => vec![change("add", String::new(), None, Some(b.clone()))],
        (Some(a), Some(b)) => json_patch::diff(a, b)
            .0
            .into_iter()
            .map(|operation| {
                let path = operation.path().to_string();
                let before = || a.pointer(&path).cloned();
                match operation {
                    PatchOperation::Add(add) => change("add", path, None, Some(add.value)),
                    PatchOperation::Remove(_) => change("remove", path.clone(), before(), None),
                    PatchOperation::Replace(replace) => change("replace", path.clone(), before(), Some(replace.value)),
                    // A diff is made of the three above; these would say where a value went.
                    PatchOperation::Move(_) => change("move", path, None, None),
                    PatchOperation::Copy(_) => change("copy", path, None, None),
                    PatchOperation::Test(test) => change("test", path, None, Some(test.value)),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::{GraphNode, NodeKind, NodeStatus, RunPhase, ServerEvent, ServerEventBody};

    fn run(id: &str, nodes: &[&str], events: Vec<ServerEventBody>) -> RunState {
        let graph = nodes
            .iter()
            .map(|n| (GraphNode { id: (*n).into(), label: n.to_uppercase(), kind: NodeKind::Simulate }, vec![]));
        let mut state = RunState::new(id, "spec", "2026-11-26T10:00:00Z", 0.0, graph);
        for (seq, body) in events.into_iter().enumerate() {
            state.apply(&ServerEvent { seq: seq as u64 + 1, body });
        }
        state
    }

    fn done(id: &str, output: Value, cost: f64, attempt: u32, finished: &str) -> ServerEventBody {
        ServerEventBody::NodeState {
            node_id: id.into(),
            status: NodeStatus::Completed,
            output: Some(output),
            metrics: Some(crate::protocol::NodeMetrics {
                cost: Some(cost),
                attempt: Some(attempt),
                duration_ms: Some(1000),
                tokens_in: Some(10),
                tokens_out: Some(5),
                finished_at: Some(finished.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn two_versions_of_a_spec_side_by_side() {
        let ended = ServerEventBody::RunStateChanged { state: RunPhase::Completed };
        let a = run(
            "a",
            &["fetch", "draft", "old"],
            vec![
                done("fetch", json!({"rows": 10, "source": "x"}), 0.5, 1, "2026-11-26T10:00:05Z"),
                done("draft", json!({"text": "hi", "tags": ["a"]}), 1.0, 1, "2026-11-26T10:00:09Z"),
                ended.clone(),
            ],
        );
        let b = run(
            "b",
            &["fetch", "draft", "new"],
            vec![
                done("fetch", json!({"rows": 10, "source": "x"}), 0.5, 1, "2026-11-26T10:00:03Z"),
                done("draft", json!({"text": "hello", "lang": "en", "tags": ["a"]}), 1.5, 2, "2026-11-26T10:00:20Z"),
                ended,
            ],
        );
        let comparison = compare(&a, &b);
        let ids: Vec<&str> = comparison.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["fetch", "draft", "old", "new"], "a's nodes in order, then b's own");
        let node = |id: &str| comparison.nodes.iter().find(|n| n.id == id).expect("listed");
        assert!(node("fetch").output_changes.is_empty(), "the same output has no changes");
        assert_eq!(
            node("draft").output_changes,
            [
                OutputChange { op: "add".into(), path: "/lang".into(), a: None, b: Some(json!("en")) },
                OutputChange {
                    op: "replace".into(),
                    path: "/text".into(),
                    a: Some(json!("hi")),
                    b: Some(json!("hello"))
                },
            ]
        );
        assert_eq!(node("draft").b.as_ref().map(|f| (f.attempts, f.cost, f.tokens)), Some((2, Some(1.5), Some(15))));
        assert!(node("old").b.is_none() && node("old").a.is_some(), "only in a");
        assert!(node("new").a.is_none() && node("new").b.is_some(), "only in b");
        assert_eq!(comparison.a.duration_ms, Some(9_000));
        assert_eq!(comparison.b.duration_ms, Some(20_000));
        assert_eq!((comparison.a.tokens, comparison.b.tokens), (30, 30));
        assert_eq!((comparison.a.attempts, comparison.b.attempts), (2, 3));
    }

    #[test]
    fn outputs_present_on_one_side_only() {
        let x = json!({"k": 1});
        // (output a, output b, the changes as (op, path))
        type Case<'a> = (Option<&'a Value>, Option<&'a Value>, Vec<(&'a str, &'a str)>);
        let cases: [Case; 4] = [
            (None, None, vec![]),
            (Some(&x), None, vec![("remove", "")]),
            (None, Some(&x), vec![("add", "")]),
            (Some(&x), Some(&x), vec![]),
        ];
        for (a, b, expected) in cases {
            let got: Vec<(String, String)> = output_changes(a, b).into_iter().map(|c| (c.op, c.path)).collect();
            let expected: Vec<(String, String)> = expected.into_iter().map(|(o, p)| (o.into(), p.into())).collect();
            assert_eq!(got, expected, "{a:?} → {b:?}");
        }
        let removed = output_changes(Some(&json!({"k": 1, "gone": [1, 2]})), Some(&x));
        assert_eq!(
            removed,
            [OutputChange { op: "remove".into(), path: "/gone".into(), a: Some(json!([1, 2])), b: None }]
        );
    }
}
