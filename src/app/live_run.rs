//! The live run: one run as the browser holds it: the shared reducer's [`RunState`] plus fine-grained signals.
//!
//! Every event goes through [`RunState::apply`] first, so the live run agrees with the server by
//! construction; then only the signals the event touched are set. A `node_state` for one node
//! re-renders that node's row, the progress line and (for gates) the gate cards, nothing else.

use std::collections::{HashMap, VecDeque};

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::protocol::{
    Applied, Cost, GateDecisionRecord, GatePresentation, NodeView, Progress, RepairAction, RunPhase, RunState, Seq,
    ServerEvent, ServerEventBody,
};

/// Runs with more nodes than this are rendered and hydrated without them (see [`RunHead`]).
pub const NODES_IN_HEAD: usize = 50;

/// A run as its page is first rendered and hydrated. A large run comes without its nodes,
/// except the gates that wait (their cards are on the page), and with what the page shows of
/// the rest counted on the server: reading a thousand nodes while the page hydrates made that
/// one task too long. The nodes arrive with the stream's first message, a snapshot, in a task
/// of their own; the graph and the node list are drawn after hydration anyway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RunHead {
    pub state: RunState,
    /// Counted over every node, also when `state` holds only some.
    pub progress: Progress,
    /// When the last node finished or gate was decided, over every node.
    pub last_activity: Option<String>,
    /// `state.nodes` holds only the waiting gates.
    pub partial: bool,
}

impl RunHead {
    pub fn new(mut state: RunState) -> RunHead {
        let progress = state.progress();
        let last_activity = state.last_activity();
        let partial = state.nodes.len() > NODES_IN_HEAD;
        if partial {
            state.nodes.retain(|_, node| node.gate.is_some());
        }
        RunHead { state, progress, last_activity, partial }
    }
}

/// One node's reactive view; the row of that node subscribes to `view` only.
#[derive(Clone)]
pub struct NodeSignal {
    pub id: String,
    pub view: RwSignal<NodeView>,
}

/// A waiting gate as its card shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct GateCard {
    pub node_id: String,
    pub label: String,
    pub presentation: GatePresentation,
    /// Who approved so far, when the gate needs several approvals.
    pub approved_by: Vec<String>,
}

/// Reactive state of one run. `Copy`: every field is a handle.
#[derive(Clone, Copy)]
pub struct LiveRun {
    /// The reducer's state: the single source of truth the signals are derived from.
    state: StoredValue<RunState>,
    /// Node signals by id, to reach one node's signal without scanning.
    by_id: StoredValue<HashMap<String, RwSignal<NodeView>>>,
    /// The nodes in display order; changes only when the graph's shape changes.
    pub nodes: RwSignal<Vec<NodeSignal>>,
    pub phase: RwSignal<RunPhase>,
    pub cost: RwSignal<Cost>,
    pub progress: RwSignal<Progress>,
    pub gates: RwSignal<Vec<GateCard>>,
    pub decisions: RwSignal<Vec<GateDecisionRecord>>,
    /// `seq` of the last event applied: where a reconnect resumes (`since`).
    pub seq: RwSignal<Seq>,
    /// Set once `execution_complete` arrived.
    pub finished: RwSignal<bool>,
    /// The newest run-level `error` (one without a node).
    pub last_run_error: RwSignal<Option<String>>,
    pub name: StoredValue<String>,
    pub dag_id: StoredValue<String>,
    /// Events applied since the page loaded, newest last (at most the timeline's length).
    pub timeline: RwSignal<VecDeque<ServerEvent>>,
    /// The run's spend curve (by `seq`), for the sparkline: the state's own
    /// ([`RunState::spend_history`]), so a page opened late draws the whole run.
    pub spend_series: RwSignal<Vec<(Seq, f64)>>,
    /// False while the live run holds a partial [`RunHead`]: no node signals yet, and the stream
    /// must start with a snapshot.
    pub nodes_loaded: RwSignal<bool>,
    /// The head's last activity, while the nodes it was counted from are not loaded.
    head_last_activity: StoredValue<Option<String>>,
}

impl LiveRun {
    pub fn new(initial: RunState) -> Self {
        // Every field is read from `initial` before it moves into the live run: a large run's state
        // is not copied twice while the page hydrates.
        let live_run = LiveRun {
            by_id: StoredValue::new(HashMap::new()),
            nodes: RwSignal::new(Vec::new()),
            phase: RwSignal::new(initial.state),
            cost: RwSignal::new(initial.cost),
            progress: RwSignal::new(initial.progress()),
            gates: RwSignal::new(Vec::new()),
            decisions: RwSignal::new(initial.decisions.clone()),
            seq: RwSignal::new(initial.seq),
            finished: RwSignal::new(initial.results.is_some()),
            last_run_error: RwSignal::new(None),
            name: StoredValue::new(initial.name.clone()),
            dag_id: StoredValue::new(initial.dag_id.clone()),
            timeline: RwSignal::new(VecDeque::new()),
            spend_series: RwSignal::new(spend_curve(&initial)),
            nodes_loaded: RwSignal::new(true),
            head_last_activity: StoredValue::new(None),
            state: StoredValue::new(initial),
        };
        live_run.rebuild_nodes();
        live_run.refresh_gates();
        live_run
    }

    /// A live run for a run's page: complete, or (for a large run) waiting for the snapshot.
    pub fn from_head(head: RunHead) -> Self {
        let RunHead { state, progress, last_activity, partial } = head;
        let live_run = LiveRun::new(state);
        if partial {
            live_run.nodes_loaded.set(false);
            live_run.head_last_activity.set_value(last_activity);
            live_run.by_id.set_value(HashMap::new());
            live_run.nodes.set(Vec::new());
            live_run.progress.set(progress);
        }
        live_run
    }

    /// When the run started (RFC 3339).
    pub fn started_at(&self) -> String {
        self.state.with_value(|s| s.started_at.clone())
    }

    /// When the last node finished or gate was decided.
    pub fn last_activity(&self) -> Option<String> {
        if self.nodes_loaded.get_untracked() {
            self.state.with_value(RunState::last_activity)
        } else {
            self.head_last_activity.get_value()
        }
    }

    /// Folds one event in and updates the signals it touched. Returns what the reducer did;
    /// on [`Applied::Gap`] the caller must resync.
    pub fn apply(&self, event: &ServerEvent) -> Applied {
        let is_snapshot = matches!(event.body, ServerEventBody::Snapshot { .. });
        if !is_snapshot && !self.nodes_loaded.get_untracked() {
            // A partial head can only be followed by a snapshot; anything else means resync.
            return Applied::Gap { expected: self.seq.get_untracked() + 1 };
        }
        let applied = self.state.try_update_value(|state| state.apply(event)).unwrap_or(Applied::Stale);
        if applied != Applied::Folded {
            return applied;
        }
        match &event.body {
            ServerEventBody::NodeState { node_id, .. } | ServerEventBody::HumanGateWaiting { node_id, .. } => {
                self.refresh_node(node_id);
                self.refresh_progress();
                self.refresh_gates();
            }
            ServerEventBody::GateResolved { node_id, .. } => {
                self.refresh_node(node_id);
                self.refresh_gates();
                self.state.with_value(|s| self.decisions.set(s.decisions.clone()));
            }
            ServerEventBody::GateProgress { node_id, .. } | ServerEventBody::GateReminder { node_id, .. } => {
                self.refresh_node(node_id);
                self.refresh_gates();
            }
            ServerEventBody::EdgeActive { to: node_id, .. } | ServerEventBody::NodeLog { node_id, .. } => {
                self.refresh_node(node_id);
            }
            ServerEventBody::DagMutated { .. } => {
                self.rebuild_nodes();
                self.refresh_all_scalars();
            }
            ServerEventBody::Snapshot { .. } => {
                self.after_snapshot();
                return applied;
            }
            ServerEventBody::CostUpdate { .. } => {
                self.state.with_value(|s| {
                    self.cost.set(s.cost);
                    self.spend_series.set(spend_curve(s));
                });
            }
            ServerEventBody::ExecutionComplete { .. } => self.finished.set(true),
            ServerEventBody::RunRepaired { reset, .. } => {
                for node_id in reset {
                    self.refresh_node(node_id);
                }
                self.refresh_all_scalars();
            }
            ServerEventBody::Error { node_id, message } => {
                if node_id.is_none() {
                    self.last_run_error.set(Some(message.clone()));
                }
            }
            ServerEventBody::RunStateChanged { state } => self.phase.set(*state),
        }
        self.seq.set(self.state.with_value(|s| s.seq));
        self.timeline.update(|timeline| {
            if timeline.len() == super::history::TIMELINE_LENGTH {
                timeline.pop_front();
            }
            timeline.push_back(event.clone());
        });
        applied
    }

    /// [`LiveRun::apply`] for an event the caller no longer needs: a snapshot's state moves
    /// into the live run instead of being copied (a large run's snapshot is its biggest message).
    pub fn apply_owned(&self, event: ServerEvent) -> Applied {
        if !matches!(event.body, ServerEventBody::Snapshot { .. }) {
            return self.apply(&event);
        }
        let applied = self.state.try_update_value(|state| state.apply_owned(event)).unwrap_or(Applied::Stale);
        if applied == Applied::Folded {
            self.after_snapshot();
        }
        applied
    }

    /// After the state was replaced by a snapshot: every signal from the new state.
    fn after_snapshot(&self) {
        if !self.nodes_loaded.get_untracked() {
            self.nodes_loaded.set(true);
        }
        self.rebuild_nodes();
        self.refresh_all_scalars();
        self.seq.set(self.state.with_value(|s| s.seq));
    }

    /// What the page calls node `node_id`: its label, or its id if the run has no such node.
    pub fn label(&self, node_id: &str) -> String {
        self.state
            .with_value(|s| s.nodes.get(node_id).map(|node| node.label.clone()))
            .unwrap_or_else(|| node_id.to_owned())
    }

    /// The signal of one node, if the run has it.
    pub fn node(&self, node_id: &str) -> Option<RwSignal<NodeView>> {
        self.by_id.with_value(|by_id| by_id.get(node_id).copied())
    }

    /// What a repair from `node_id` would run again, or why the run does not take it now
    /// ([`RunState::repair_plan`], the rule the server applies). Re-read with every event.
    pub fn repair_plan(&self, action: RepairAction, node_id: &str) -> Result<Vec<String>, String> {
        self.seq.track();
        self.state.with_value(|state| state.repair_plan(action, node_id))
    }

    /// The reducer's state as it is now.
    pub fn snapshot(&self) -> RunState {
        self.state.get_value()
    }

    fn refresh_node(&self, node_id: &str) {
        let signal = self.by_id.with_value(|by_id| by_id.get(node_id).copied());
        let view = self.state.with_value(|s| s.nodes.get(node_id).cloned());
        if let (Some(signal), Some(view)) = (signal, view) {
            signal.set(view);
        }
    }

    fn refresh_progress(&self) {
        let progress = self.state.with_value(RunState::progress);
        if self.progress.get_untracked() != progress {
            self.progress.set(progress);
        }
    }

    fn refresh_gates(&self) {
        let gates: Vec<GateCard> = self.state.with_value(|s| {
            s.waiting_gates()
                .map(|(node, presentation)| GateCard {
                    node_id: node.id.clone(),
                    label: node.label.clone(),
                    presentation: presentation.clone(),
                    approved_by: node.approved_by.clone(),
                })
                .collect()
        });
        if self.gates.with_untracked(|current| current != &gates) {
            self.gates.set(gates);
        }
    }

    fn refresh_all_scalars(&self) {
        self.state.with_value(|s| {
            self.phase.set(s.state);
            self.cost.set(s.cost);
            self.spend_series.set(spend_curve(s));
            self.decisions.set(s.decisions.clone());
            self.finished.set(s.results.is_some());
        });
        self.refresh_progress();
        self.refresh_gates();
    }

    /// Re-creates the node list, keeping the signal of every node that still exists so rows on
    /// screen are updated in place rather than re-created.
    fn rebuild_nodes(&self) {
        let views: Vec<NodeView> = self.state.with_value(|s| s.nodes.values().cloned().collect());
        let mut previous = self.by_id.get_value();
        let mut by_id = HashMap::with_capacity(views.len());
        let mut nodes = Vec::with_capacity(views.len());
        for view in views {
            let id = view.id.clone();
            let signal = match previous.remove(&id) {
                Some(signal) => {
                    if signal.with_untracked(|current| current != &view) {
                        signal.set(view);
                    }
                    signal
                }
                None => RwSignal::new(view),
            };
            by_id.insert(id.clone(), signal);
            nodes.push(NodeSignal { id, view: signal });
        }
        self.by_id.set_value(by_id);
        self.nodes.set(nodes);
    }
}

/// The points of `state`'s spend curve; where no cost was reported yet, its spend now.
fn spend_curve(state: &RunState) -> Vec<(Seq, f64)> {
    match state.spend_history.as_slice() {
        [] => vec![(state.seq, state.cost.spent)],
        history => history.iter().map(|point| (point.seq, point.spent)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{GraphNode, NodeKind, NodeStatus};

    fn state() -> RunState {
        let node = |id: &str, kind| (GraphNode { id: id.into(), label: id.into(), kind }, vec![]);
        RunState::new("r", "t", "now", 5.0, [node("a", NodeKind::Simulate), node("g", NodeKind::Gate)])
    }

    fn event(seq: Seq, body: ServerEventBody) -> ServerEvent {
        ServerEvent { seq, body }
    }

    fn presentation() -> GatePresentation {
        GatePresentation {
            title: "Go?".into(),
            prompt: "p".into(),
            options: vec![],
            context: None,
            cost_so_far: None,
            timeout_at: None,
            approvers: None,
            approvals: None,
            may_not_approve: Vec::new(),
            inputs: Vec::new(),
            forecast: None,
        }
    }

    #[test]
    fn a_node_event_updates_that_node_and_the_progress_only() {
        let owner = Owner::new();
        owner.with(|| {
            let live_run = LiveRun::new(state());
            let a = live_run.nodes.get_untracked()[0].view;
            let g = live_run.nodes.get_untracked()[1].view;
            let before_g = g.get_untracked();
            let applied = live_run.apply(&event(
                1,
                ServerEventBody::NodeState {
                    node_id: "a".into(),
                    status: NodeStatus::Running,
                    output: None,
                    metrics: None,
                },
            ));
            assert_eq!(applied, Applied::Folded);
            assert_eq!(a.get_untracked().status, NodeStatus::Running);
            assert_eq!(g.get_untracked(), before_g);
            assert_eq!(live_run.progress.get_untracked().running, 1);
            assert_eq!(live_run.seq.get_untracked(), 1);
        });
    }

    #[test]
    fn a_run_opened_late_draws_its_spend_from_the_start() {
        let owner = Owner::new();
        owner.with(|| {
            let cost = |spent: f64| ServerEventBody::CostUpdate { spent, budget: 5.0, remaining: 5.0 - spent };
            let mut server = state();
            server.apply(&event(1, cost(1.0)));
            server.apply(&event(2, cost(2.5)));
            let live_run = LiveRun::new(server);
            assert_eq!(live_run.spend_series.get_untracked(), [(1, 1.0), (2, 2.5)]);
            live_run.apply(&event(3, cost(4.0)));
            assert_eq!(live_run.spend_series.get_untracked(), [(1, 1.0), (2, 2.5), (3, 4.0)]);

            let mut resynced = state();
            resynced.apply(&event(1, cost(0.5)));
            live_run.apply(&event(1, ServerEventBody::Snapshot { run: Box::new(resynced) }));
            assert_eq!(live_run.spend_series.get_untracked(), [(1, 0.5)], "a snapshot brings its own curve");
            assert_eq!(LiveRun::new(state()).spend_series.get_untracked(), [(0, 0.0)], "no cost yet: spend now");
        });
    }

    #[test]
    fn gaps_are_reported_and_change_nothing() {
        let owner = Owner::new();
        owner.with(|| {
            let live_run = LiveRun::new(state());
            let applied = live_run.apply(&event(3, ServerEventBody::RunStateChanged { state: RunPhase::Paused }));
            assert_eq!(applied, Applied::Gap { expected: 1 });
            assert_eq!(live_run.phase.get_untracked(), RunPhase::Running);
            assert_eq!(live_run.seq.get_untracked(), 0);
        });
    }

    #[test]
    fn a_snapshot_keeps_existing_node_signals() {
        let owner = Owner::new();
        owner.with(|| {
            let live_run = LiveRun::new(state());
            let a = live_run.nodes.get_untracked()[0].view;
            let mut server = state();
            server.apply(&event(
                1,
                ServerEventBody::NodeState {
                    node_id: "a".into(),
                    status: NodeStatus::Completed,
                    output: None,
                    metrics: None,
                },
            ));
            server.apply(&event(
                2,
                ServerEventBody::HumanGateWaiting { node_id: "g".into(), presentation: presentation() },
            ));
            live_run.apply(&event(2, ServerEventBody::Snapshot { run: Box::new(server.clone()) }));
            assert_eq!(a.get_untracked().status, NodeStatus::Completed, "same signal, updated in place");
            assert_eq!(live_run.gates.get_untracked().len(), 1);
            assert_eq!(live_run.snapshot(), server);
            assert_eq!(live_run.seq.get_untracked(), 2);
        });
    }

    /// `n` simulate nodes and one gate that waits; `done` of the nodes completed.
    fn large(n: usize, done: usize) -> RunState {
        let mut nodes: Vec<_> = (0..n)
            .map(|i| (GraphNode { id: format!("n{i}"), label: format!("n{i}"), kind: NodeKind::Simulate }, vec![]))
            .collect();
        nodes.push((GraphNode { id: "g".into(), label: "Gate".into(), kind: NodeKind::Gate }, vec![]));
        let mut state = RunState::new("r", "t", "now", 5.0, nodes);
        let mut seq = 0;
        let mut next = |state: &mut RunState, body| {
            seq += 1;
            assert_eq!(state.apply(&event(seq, body)), Applied::Folded);
        };
        for i in 0..done {
            let metrics = crate::protocol::NodeMetrics {
                finished_at: Some(format!("2026-11-26T10:00:{:02}Z", i % 60)),
                ..Default::default()
            };
            let body = ServerEventBody::NodeState {
                node_id: format!("n{i}"),
                status: NodeStatus::Completed,
                output: None,
                metrics: Some(metrics),
            };
            next(&mut state, body);
        }
        next(&mut state, ServerEventBody::HumanGateWaiting { node_id: "g".into(), presentation: presentation() });
        state
    }

    #[test]
    fn a_large_runs_head_keeps_its_waiting_gates_and_its_counts_only() {
        let full = large(NODES_IN_HEAD + 10, 7);
        let head = RunHead::new(full.clone());
        assert!(head.partial);
        assert_eq!(head.state.nodes.keys().collect::<Vec<_>>(), ["g"], "only the waiting gate");
        assert_eq!(head.progress, full.progress(), "counted over every node");
        assert_eq!(head.progress.done, 7);
        assert_eq!(head.last_activity, full.last_activity());
        assert_eq!((head.state.seq, head.state.cost), (full.seq, full.cost));

        let small = large(3, 1);
        let head = RunHead::new(small.clone());
        assert!(!head.partial);
        assert_eq!(head.state, small, "a small run comes whole");
    }

    #[test]
    fn a_partial_store_waits_for_the_snapshot_and_then_has_every_node() {
        let owner = Owner::new();
        owner.with(|| {
            let full = large(NODES_IN_HEAD + 10, 7);
            let live_run = LiveRun::from_head(RunHead::new(full.clone()));
            assert!(!live_run.nodes_loaded.get_untracked());
            assert!(live_run.nodes.get_untracked().is_empty(), "no rows or graph nodes from a partial head");
            assert_eq!(live_run.progress.get_untracked(), full.progress());
            assert_eq!(live_run.gates.get_untracked().len(), 1, "the waiting gate's card is there");
            assert_eq!(live_run.last_activity(), full.last_activity());

            // Anything but a snapshot first means resync, and changes nothing.
            let seq = full.seq;
            let early = event(seq + 1, ServerEventBody::RunStateChanged { state: RunPhase::Paused });
            assert_eq!(live_run.apply(&early), Applied::Gap { expected: seq + 1 });
            assert_eq!(live_run.phase.get_untracked(), RunPhase::Running);

            live_run.apply_owned(event(seq, ServerEventBody::Snapshot { run: Box::new(full.clone()) }));
            assert!(live_run.nodes_loaded.get_untracked());
            assert_eq!(live_run.nodes.get_untracked().len(), NODES_IN_HEAD + 11);
            assert_eq!(live_run.snapshot(), full);
            assert_eq!(live_run.apply(&early), Applied::Folded, "then events apply as usual");
            assert_eq!(live_run.phase.get_untracked(), RunPhase::Paused);
        });
    }
}
