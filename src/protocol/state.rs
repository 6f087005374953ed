//! The state of one run and the one reducer, [`RunState::apply`], that folds events into it.
//!
//! The server folds every event it publishes into a `RunState` and sends it as a `snapshot`;
//! after a restart it replays the log through the same reducer; the dashboard's store mirrors
//! it. Two parties that fold the same events therefore agree on the picture.

use std::collections::VecDeque;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    Cost, DagMutation, Decision, GatePresentation, GraphNode, LogStream, NodeKind, NodeMetrics, NodeStatus,
    RepairAction, RunPhase, RunSummary, Seq, ServerEvent, ServerEventBody,
};

/// How many `node_log` lines each node keeps in the state (the full log stays in the event log).
pub const LOG_TAIL_LINES: usize = 200;

/// Points of its spend curve a run keeps at most ([`RunState::spend_history`]). One more, and
/// every other point is dropped (the first and the newest stay): a long run's curve keeps its
/// shape, and a snapshot stays small.
pub const SPEND_POINTS: usize = 128;

/// Everything a dashboard needs to draw one run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct RunState {
    pub dag_id: String,
    /// Name of the DAG this run executes.
    pub name: String,
    /// `seq` of the last event folded in; 0 before the first.
    pub seq: Seq,
    pub state: RunPhase,
    /// RFC 3339.
    pub started_at: String,
    /// Nodes by id, in the order they were defined or added (a stable order for drawing).
    pub nodes: IndexMap<String, NodeView>,
    pub cost: Cost,
    /// Every gate decision of the run, oldest first.
    #[serde(default)]
    pub decisions: Vec<GateDecisionRecord>,
    /// The outputs of the completed nodes, once `execution_complete` was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Map<String, Value>>,
    /// Every `error` event of the run, oldest first.
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
    /// Every repair of the run (`run_repaired`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<RepairRecord>,
    /// The spend after each `cost_update`, oldest first, thinned to at most [`SPEND_POINTS`]:
    /// a dashboard that opens the run late (or reconnects to a snapshot) still draws spend over
    /// the whole run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spend_history: Vec<SpendPoint>,
}

/// The run's spend as of one event: a point of its spend curve.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct SpendPoint {
    /// The `cost_update` that reported it.
    pub seq: Seq,
    pub spent: f64,
}

/// One node with everything the run has told about it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct NodeView {
    pub id: String,
    pub label: String,
    pub kind: NodeKind,
    /// Ids of the nodes this one depends on: the graph's edges, drawn `need → id`.
    #[serde(default)]
    pub needs: Vec<String>,
    pub status: NodeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default)]
    pub metrics: NodeMetrics,
    /// What the gate card shows, while this node is a gate that waits for a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GatePresentation>,
    /// Who approved the waiting gate so far, when it needs several approvals (`gate_progress`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
    /// Upstream ids whose edge into this node carried data (`edge_active`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_inputs: Vec<String>,
    /// The last [`LOG_TAIL_LINES`] lines of output.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub log_tail: VecDeque<LogLine>,
    /// The attempts (or gate waits) before the current one, oldest first: what the Gantt view
    /// draws as separate segments. The current one is in `metrics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past_attempts: Vec<AttemptSpan>,
}

/// One earlier attempt of a node (or wait of a gate).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct AttemptSpan {
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339: when it finished, or (for an attempt that failed and was retried) when the
    /// next one started.
    pub ended_at: String,
    /// Where it stood when it ended: `running` for an attempt that did not complete (it failed
    /// and was retried, or the server restarted), `waiting` for a gate that sent work back.
    pub status: NodeStatus,
}

/// One line of a node's output.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct LogLine {
    pub stream: LogStream,
    pub line: String,
}

/// A decision that was applied to a gate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct GateDecisionRecord {
    pub seq: Seq,
    pub node_id: String,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    pub decided_by: String,
    pub decided_at: String,
    /// The values of the gate's form that came with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Map<String, Value>>,
}

/// A repair that was applied to the run: who asked for what, from which node, and which nodes
/// it reset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct RepairRecord {
    pub seq: Seq,
    pub action: RepairAction,
    pub node_id: String,
    pub reset: Vec<String>,
    pub repaired_by: String,
    pub repaired_at: String,
}

/// An `error` event that was part of the run's log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct ErrorEntry {
    pub seq: Seq,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub message: String,
}

/// Adds `point` to a spend curve, and thins the curve when it grows past [`SPEND_POINTS`].
fn record_spend(history: &mut Vec<SpendPoint>, point: SpendPoint) {
    history.push(point);
    if history.len() > SPEND_POINTS {
        let newest = history.len() - 1;
        let mut index = 0;
        history.retain(|_| {
            let keep = index % 2 == 0 || index == newest;
            index += 1;
            keep
        });
    }
}

/// What [`RunState::apply`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The event was the next one (or a snapshot) and is now part of the state.
    Folded,
    /// The event's `seq` is not newer than the state's: a duplicate, or a private reply that
    /// concerns one client only. The state is unchanged.
    Stale,
    /// Events are missing between the state and this one; the state is unchanged and the
    /// caller must resync from `since = state.seq`.
    Gap { expected: Seq },
}

/// Counts of nodes by where they are; what a progress bar shows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct Progress {
    pub total: usize,
    /// Nodes in a terminal state.
    pub done: usize,
    pub running: usize,
    pub waiting: usize,
    pub failed: usize,
}

impl RunState {
    /// A run that has not had any event yet; every node pending.
    pub fn new(
        dag_id: impl Into<String>,
        name: impl Into<String>,
        started_at: impl Into<String>,
        budget: f64,
        nodes: impl IntoIterator<Item = (GraphNode, Vec<String>)>,
    ) -> Self {
        let nodes = nodes.into_iter().map(|(node, needs)| (node.id.clone(), NodeView::pending(node, needs))).collect();
        RunState {
            dag_id: dag_id.into(),
            name: name.into(),
            seq: 0,
            state: RunPhase::Running,
            started_at: started_at.into(),
            nodes,
            cost: Cost { spent: 0.0, budget, remaining: budget },
            decisions: Vec::new(),
            results: None,
            errors: Vec::new(),
            repairs: Vec::new(),
            spend_history: Vec::new(),
        }
    }

    /// [`RunState::apply`] for an event the caller gives away: a snapshot's state is moved in
    /// rather than copied (a large run's snapshot is its biggest message).
    pub fn apply_owned(&mut self, event: ServerEvent) -> Applied {
        match event.body {
            ServerEventBody::Snapshot { run } => {
                *self = *run;
                Applied::Folded
            }
            body => self.apply(&ServerEvent { seq: event.seq, body }),
        }
    }

    /// Folds one event into the state. A snapshot replaces the state; any other event is folded
    /// only if its `seq` is exactly the next one (see [`Applied`]).
    pub fn apply(&mut self, event: &ServerEvent) -> Applied {
        if let ServerEventBody::Snapshot { run } = &event.body {
            self.clone_from(run);
            return Applied::Folded;
        }
        if event.seq <= self.seq {
            return Applied::Stale;
        }
        if event.seq != self.seq + 1 {
            return Applied::Gap { expected: self.seq + 1 };
        }
        self.seq = event.seq;
        match &event.body {
            ServerEventBody::NodeState { node_id, status, output, metrics } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    if let Some(started_at) = metrics.as_ref().and_then(|m| m.started_at.as_ref()) {
                        node.begin_attempt(started_at);
                    }
                    node.status = *status;
                    if output.is_some() {
                        node.output.clone_from(output);
                    }
                    if let Some(metrics) = metrics {
                        node.metrics.merge(metrics);
                    }
                    if *status != NodeStatus::Waiting {
                        node.gate = None;
                        node.approved_by.clear();
                    }
                }
            }
            ServerEventBody::EdgeActive { from, to } => {
                if let Some(node) = self.nodes.get_mut(to)
                    && !node.active_inputs.contains(from)
                {
                    node.active_inputs.push(from.clone());
                }
            }
            ServerEventBody::DagMutated { mutation } => self.mutate(mutation),
            ServerEventBody::CostUpdate { spent, budget, remaining } => {
                self.cost = Cost { spent: *spent, budget: *budget, remaining: *remaining };
                record_spend(&mut self.spend_history, SpendPoint { seq: event.seq, spent: *spent });
            }
            ServerEventBody::ExecutionComplete { results } => {
                self.results = Some(results.clone());
            }
            ServerEventBody::HumanGateWaiting { node_id, presentation } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.status = NodeStatus::Waiting;
                    node.gate = Some(presentation.clone());
                    node.approved_by.clear();
                }
            }
            ServerEventBody::Error { node_id, message } => {
                self.errors.push(ErrorEntry { seq: event.seq, node_id: node_id.clone(), message: message.clone() })
            }
            ServerEventBody::Snapshot { .. } => {
                // Handled above, before the sequence check: a snapshot replaces everything.
            }
            ServerEventBody::RunStateChanged { state } => self.state = *state,
            ServerEventBody::GateResolved { node_id, decision, feedback, decided_by, decided_at, inputs } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.gate = None;
                    node.approved_by.clear();
                }
                self.decisions.push(GateDecisionRecord {
                    seq: event.seq,
                    node_id: node_id.clone(),
                    decision: *decision,
                    feedback: feedback.clone(),
                    decided_by: decided_by.clone(),
                    decided_at: decided_at.clone(),
                    inputs: inputs.clone(),
                });
            }
            ServerEventBody::GateReminder { node_id, escalated_to } => {
                // Escalated: they may decide too, as the card shows.
                if let Some(approvers) = self.nodes.get_mut(node_id).and_then(|n| n.gate.as_mut()?.approvers.as_mut()) {
                    for person in escalated_to {
                        if !approvers.contains(person) {
                            approvers.push(person.clone());
                        }
                    }
                }
            }
            ServerEventBody::GateProgress { node_id, approved_by, .. } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.approved_by.clone_from(approved_by);
                }
            }
            ServerEventBody::RunRepaired { action, node_id, reset, repaired_by, repaired_at } => {
                for id in reset {
                    if let Some(node) = self.nodes.get_mut(id) {
                        node.start_over();
                    }
                }
                // The run's end is no longer its end: a new `execution_complete` will come.
                self.results = None;
                self.repairs.push(RepairRecord {
                    seq: event.seq,
                    action: *action,
                    node_id: node_id.clone(),
                    reset: reset.clone(),
                    repaired_by: repaired_by.clone(),
                    repaired_at: repaired_at.clone(),
                });
            }
            ServerEventBody::NodeLog { node_id, stream, line } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    if node.log_tail.len() == LOG_TAIL_LINES {
                        node.log_tail.pop_front();
                    }
                    node.log_tail.push_back(LogLine { stream: *stream, line: line.clone() });
                }
            }
        }
        Applied::Folded
    }

    fn mutate(&mut self, mutation: &DagMutation) {
        match mutation {
            DagMutation::AddNode { node, after, .. } => {
                if !self.nodes.contains_key(&node.id) {
                    self.nodes.insert(node.id.clone(), NodeView::pending(node.clone(), after.clone()));
                }
            }
            DagMutation::AddEdge { from, to } => {
                if let Some(node) = self.nodes.get_mut(to)
                    && !node.needs.contains(from)
                {
                    node.needs.push(from.clone());
                }
            }
            DagMutation::RemoveNode { node_id } => {
                self.nodes.shift_remove(node_id);
                for node in self.nodes.values_mut() {
                    node.needs.retain(|need| need != node_id);
                    node.active_inputs.retain(|input| input != node_id);
                }
            }
            DagMutation::UpdateNode { node_id, label } => {
                if let (Some(node), Some(label)) = (self.nodes.get_mut(node_id), label) {
                    node.label.clone_from(label);
                }
            }
        }
    }

    /// The nodes a repair from `node_id` resets (that node and everything downstream of it, in
    /// node order), or why the run does not take that repair now, in words for the person who
    /// asked. One rule for the engine's runs, external runs and the dashboard's buttons:
    /// - a cancelled run is not repaired (run it again instead);
    /// - `retry` takes a failed node; `rerun` any finished one (completed, failed, skipped, cancelled);
    /// - every node it needs has completed (its inputs are there);
    /// - nothing downstream of it is running or waiting at a gate.
    pub fn repair_plan(&self, action: RepairAction, node_id: &str) -> Result<Vec<String>, String> {
        match self.state {
            RunPhase::Cancelling | RunPhase::Cancelled => {
                return Err("the run was cancelled: run it again instead".into());
            }
            RunPhase::Running | RunPhase::Paused | RunPhase::Completed | RunPhase::Failed => {}
        }
        let node = self.nodes.get(node_id).ok_or_else(|| format!("no node {node_id:?} in this run"))?;
        let status = node.status;
        match (action, status) {
            (RepairAction::Retry, NodeStatus::Failed) => {}
            (RepairAction::Retry, NodeStatus::Completed) => {
                return Err(format!(
                    "node {node_id:?} completed: only a failed node is retried; re-run from it instead"
                ));
            }
            (RepairAction::Retry, _) => {
                return Err(format!("node {node_id:?} is {}: only a failed node is retried", status.as_str()));
            }
            (RepairAction::Rerun, _) if status.is_terminal() => {}
            (RepairAction::Rerun, _) => {
                return Err(format!("node {node_id:?} is {}: it can be re-run once it has finished", status.as_str()));
            }
        }
        let unmet = node.needs.iter().find_map(|need| {
            let upstream = self.nodes.get(need)?;
            (upstream.status != NodeStatus::Completed).then_some((need, upstream.status))
        });
        if let Some((need, need_status)) = unmet {
            let hint =
                if need_status == NodeStatus::Failed { format!(": retry {need:?} instead") } else { String::new() };
            return Err(format!("node {node_id:?} needs {need:?}, which is {}{hint}", need_status.as_str()));
        }
        let reset = self.downstream_of(node_id);
        let busy = reset
            .iter()
            .filter_map(|id| self.nodes.get(id))
            .find(|n| n.id != node_id && matches!(n.status, NodeStatus::Running | NodeStatus::Waiting));
        if let Some(busy) = busy {
            return Err(format!(
                "node {:?}, downstream of {node_id:?}, is {}: wait for it to finish, or cancel the run",
                busy.id,
                busy.status.as_str()
            ));
        }
        Ok(reset)
    }

    /// `node_id` and every node that needs it, directly or not, in node order.
    fn downstream_of(&self, node_id: &str) -> Vec<String> {
        let mut dependents: std::collections::HashMap<&str, Vec<&str>> = std::collections::HashMap::new();
        for node in self.nodes.values() {
            for need in &node.needs {
                dependents.entry(need.as_str()).or_default().push(node.id.as_str());
            }
        }
        let mut reached = std::collections::HashSet::new();
        let mut stack = vec![node_id];
        while let Some(next) = stack.pop() {
            if reached.insert(next) {
                stack.extend(dependents.get(next).into_iter().flatten().copied());
            }
        }
        self.nodes.keys().filter(|id| reached.contains(id.as_str())).cloned().collect()
    }

    /// Node counts for a progress display.
    pub fn progress(&self) -> Progress {
        let mut progress = Progress { total: self.nodes.len(), ..Progress::default() };
        for node in self.nodes.values() {
            match node.status {
                NodeStatus::Running => progress.running += 1,
                NodeStatus::Waiting => progress.waiting += 1,
                NodeStatus::Failed => progress.failed += 1,
                NodeStatus::Pending | NodeStatus::Completed | NodeStatus::Skipped | NodeStatus::Cancelled => {}
            }
            if node.status.is_terminal() {
                progress.done += 1;
            }
        }
        progress
    }

    /// Gates that wait for a decision, in node order.
    pub fn waiting_gates(&self) -> impl Iterator<Item = (&NodeView, &GatePresentation)> {
        self.nodes.values().filter_map(|node| node.gate.as_ref().map(|gate| (node, gate)))
    }

    /// The gates of this run that wait for `person`, in node order ([`GatePresentation::waits_for`]).
    pub fn inbox(&self, person: &super::SignedIn) -> Vec<super::InboxGate> {
        self.waiting_gates()
            .filter(|(node, gate)| gate.waits_for(person, &node.approved_by))
            .map(|(node, gate)| super::InboxGate {
                dag_id: self.dag_id.clone(),
                run_name: self.name.clone(),
                node_id: node.id.clone(),
                label: node.label.clone(),
                presentation: gate.clone(),
                approved_by: node.approved_by.clone(),
                waiting_since: node.metrics.started_at.clone(),
                cost: self.cost,
            })
            .collect()
    }

    /// The latest moment the log records: a node finishing or a gate being decided.
    pub fn last_activity(&self) -> Option<String> {
        let finished = self.nodes.values().filter_map(|n| n.metrics.finished_at.as_ref());
        let decided = self.decisions.iter().map(|d| &d.decided_at);
        finished.chain(decided).max().cloned()
    }

    /// The line of this run in the run list.
    pub fn summary(&self) -> RunSummary {
        let progress = self.progress();
        RunSummary {
            dag_id: self.dag_id.clone(),
            name: self.name.clone(),
            state: self.state,
            started_at: self.started_at.clone(),
            ended_at: self.state.is_terminal().then(|| self.last_activity()).flatten(),
            nodes_done: progress.done,
            nodes_total: progress.total,
            gates_waiting: self.waiting_gates().count(),
            cost: self.cost,
        }
    }
}

impl NodeView {
    /// Back to pending for a repair: no output, no card, no inputs yet; what it cost and how
    /// many attempts it made stay (they happened), its last attempt becomes a past one.
    fn start_over(&mut self) {
        self.close_attempt(None);
        self.status = NodeStatus::Pending;
        self.output = None;
        self.gate = None;
        self.approved_by.clear();
        self.active_inputs.clear();
    }

    /// A new attempt (or gate wait) starts at `started_at`: the one before it, if any, becomes a
    /// past attempt, and the finish of that one is no longer the node's.
    fn begin_attempt(&mut self, started_at: &str) {
        if self.metrics.started_at.as_deref().is_some_and(|current| current != started_at) {
            self.close_attempt(Some(started_at));
        }
    }

    /// Moves the current attempt to `past_attempts`, ended when it finished, else at `next`
    /// (the start of the attempt after it); clears its times.
    fn close_attempt(&mut self, next: Option<&str>) {
        let started_at = self.metrics.started_at.take();
        let ended_at = self.metrics.finished_at.take().or_else(|| next.map(str::to_owned));
        self.metrics.duration_ms = None;
        if let (Some(started_at), Some(ended_at)) = (started_at, ended_at) {
            self.past_attempts.push(AttemptSpan { started_at, ended_at, status: self.status });
        }
    }

    fn pending(node: GraphNode, needs: Vec<String>) -> Self {
        NodeView {
            id: node.id,
            label: node.label,
            kind: node.kind,
            needs,
            status: NodeStatus::Pending,
            output: None,
            metrics: NodeMetrics::default(),
            gate: None,
            approved_by: Vec::new(),
            active_inputs: Vec::new(),
            log_tail: VecDeque::new(),
            past_attempts: Vec::new(),
        }
    }
}
