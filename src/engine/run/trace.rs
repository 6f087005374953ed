//! The run's trace: a `run` span from its start to its end, a `node` span per attempt of a work
//! node (its status, cost and tokens as attributes) and a `gate` span per wait of a gate, both
//! children of the run's. With `--otlp-endpoint` they are exported as OpenTelemetry spans
//! (`crate::telemetry`); without, they are only what the log lines say they were logged in.
//!
//! Spans follow the node states the coordinator publishes ([`Coordinator::trace_node`]): a
//! start opens one (closing an attempt that is being retried), an end or a reset closes it.

use std::cell::RefCell;
use std::collections::HashMap;

use tracing::Span;
use tracing::field::Empty;

use super::Coordinator;
use crate::hub::Room;
use crate::protocol::{NodeMetrics, NodeStatus};

/// The spans of one run. Owned by its coordinator (one task), hence a `RefCell`.
pub(super) struct Traces {
    /// The run's span; `Span::none()` once the run has ended (then it closes as its last child
    /// does).
    run: RefCell<Span>,
    /// The open attempt or wait of each node, with what the node had cost and used by then.
    open: RefCell<HashMap<usize, OpenSpan>>,
    dag_id: String,
    name: String,
}

struct OpenSpan {
    span: Span,
    cost_before: f64,
    tokens_before: (u64, u64),
}

impl Traces {
    /// The spans of a run (re)starting now; its room keeps the new trace's id for the lines
    /// logged about the run elsewhere.
    pub(super) fn new(dag_id: &str, name: &str, room: &Room) -> Self {
        Traces {
            run: RefCell::new(run_span(dag_id, name, room)),
            open: RefCell::new(HashMap::new()),
            dag_id: dag_id.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The run's span, to log in.
    pub(super) fn run(&self) -> Span {
        self.run.borrow().clone()
    }

    /// The run has ended as `state`: its span closes once its open children have.
    pub(super) fn end_run(&self, state: &str) {
        let run = self.run.replace(Span::none());
        run.record("state", state);
        tracing::info!(parent: &run, state, "run ended");
    }

    /// A repair reopened the run: a new run span (a new trace) from now on.
    pub(super) fn reopen_run(&self, room: &Room) {
        if self.run.borrow().is_none() {
            self.run.replace(run_span(&self.dag_id, &self.name, room));
        }
    }
}

fn run_span(dag_id: &str, name: &str, room: &Room) -> Span {
    let span = tracing::info_span!(parent: None, "run", dag_id, name, state = Empty, trace_id = Empty);
    let trace_id = crate::telemetry::trace_id(&span);
    if let Some(trace_id) = &trace_id {
        span.record("trace_id", trace_id.as_str());
    }
    room.set_trace_id(trace_id.map(std::sync::Arc::from));
    tracing::info!(parent: &span, "run started");
    span
}

impl Coordinator {
    /// Opens or closes node `node`'s span as it goes to `status` (with these `metrics`).
    pub(super) fn trace_node(&self, node: usize, status: NodeStatus, metrics: Option<&NodeMetrics>) {
        let starts = metrics.is_some_and(|m| m.started_at.is_some())
            && matches!(status, NodeStatus::Running | NodeStatus::Waiting);
        let ends = status.is_terminal() || status == NodeStatus::Pending;
        if !(starts || ends) {
            return;
        }
        let run = &self.runs[node];
        let mut open = self.traces.open.borrow_mut();
        if let Some(OpenSpan { span, cost_before, tokens_before }) = open.remove(&node) {
            // A new start of a node that had one open: that attempt is being retried (or the
            // gate sent its work back and waits anew).
            let outcome = match (starts, self.nodes[node].is_gate()) {
                (true, false) => "retried",
                (true, true) => "sent_back",
                (false, _) => status.as_str(),
            };
            span.record("status", outcome);
            span.record("cost", run.cost - cost_before);
            span.record("tokens_in", run.tokens_in - tokens_before.0);
            span.record("tokens_out", run.tokens_out - tokens_before.1);
        }
        if starts {
            let parent = self.traces.run.borrow();
            let node_id = self.nodes[node].id.as_str();
            let attempt = metrics.and_then(|m| m.attempt).unwrap_or(run.attempt);
            let span = if self.nodes[node].is_gate() {
                tracing::info_span!(parent: &*parent, "gate", node_id, wait = attempt, status = Empty, cost = Empty, tokens_in = Empty, tokens_out = Empty)
            } else {
                tracing::info_span!(parent: &*parent, "node", node_id, attempt, status = Empty, cost = Empty, tokens_in = Empty, tokens_out = Empty)
            };
            open.insert(node, OpenSpan { span, cost_before: run.cost, tokens_before: (run.tokens_in, run.tokens_out) });
        }
    }
}
