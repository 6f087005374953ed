//! Runs that an engine outside dagstream drives over the same protocol: their definition
//! (`POST /api/dags` with `"external": true`), the checks on the events such an engine sends,
//! and the link that hands it the commands dashboards send.
//!
//! dagstream does not execute these runs. It assigns `seq`, stores, folds and fans out what the
//! engine reports, after checking that every event names nodes the run has and keeps the graph
//! acyclic; commands (decisions, pause, resume, cancel) are checked against the run's state and
//! passed to the engine, which answers with events.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::engine::policy::{self, CommandEffect, Decider, Gate, GateStanding, Rejected};
use crate::engine::spec::find_cycle;
use crate::protocol::{ClientEvent, DagMutation, Decision, GraphNode, NodeKind, NodeStatus, RunState, ServerEventBody};

/// Commands waiting to be written to a slow engine; beyond this a command is refused.
const COMMAND_QUEUE: usize = 64;

/// The body of `POST /api/dags` for an external run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalRun {
    /// Always `true`: what tells this body from a spec.
    pub external: bool,
    pub name: String,
    /// Shown against spend; the engine reports costs with `cost_update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    pub nodes: Vec<ExternalNode>,
}

/// One node of an external run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalNode {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `task` unless given (`gate` draws it as a gate).
    #[serde(default = "task")]
    pub kind: NodeKind,
    #[serde(default)]
    pub needs: Vec<String>,
}

fn task() -> NodeKind {
    NodeKind::Task
}

impl ExternalRun {
    /// True for a JSON body that asks for an external run.
    pub fn is_external(value: &Value) -> bool {
        value.get("external").and_then(Value::as_bool) == Some(true)
    }

    /// Reads and checks a definition: a name, unique ids, known needs, no cycle.
    pub fn from_value(value: Value) -> Result<Self, String> {
        let run: ExternalRun = serde_json::from_value(value).map_err(|e| format!("external run: {e}"))?;
        if !run.external {
            return Err("external run: \"external\" must be true".into());
        }
        if run.name.trim().is_empty() {
            return Err("external run: name must not be empty".into());
        }
        if run.budget.is_some_and(|b| !b.is_finite() || b < 0.0) {
            return Err("external run: budget must be a number of 0 or more".into());
        }
        let mut index = HashMap::new();
        for (i, node) in run.nodes.iter().enumerate() {
            if node.id.is_empty() {
                return Err(format!("external run: node {i} has an empty id"));
            }
            if index.insert(node.id.as_str(), i).is_some() {
                return Err(format!("external run: node id {:?} is used twice", node.id));
            }
        }
        let mut needs = Vec::with_capacity(run.nodes.len());
        for node in &run.nodes {
            let mut node_needs = Vec::new();
            for need in &node.needs {
                let &i = index
                    .get(need.as_str())
                    .ok_or_else(|| format!("external run: node {:?} needs {need:?}, which is not a node", node.id))?;
                node_needs.push(i);
            }
            needs.push(node_needs);
        }
        if let Some(cycle) = find_cycle(&needs) {
            let ids: Vec<&str> = cycle.iter().map(|&i| run.nodes[i].id.as_str()).collect();
            return Err(format!("external run: the nodes form a cycle: {}", ids.join(" → ")));
        }
        Ok(run)
    }

    /// The run before its first event: every node pending.
    pub fn initial_state(&self, dag_id: &str, started_at: &str) -> RunState {
        let nodes = self.nodes.iter().map(|node| {
            let label = node.label.clone().unwrap_or_else(|| node.id.clone());
            (GraphNode { id: node.id.clone(), label, kind: node.kind }, node.needs.clone())
        });
        RunState::new(dag_id, self.name.clone(), started_at, self.budget.unwrap_or(0.0), nodes)
    }
}

/// Checks an event an engine wants to publish against the run as it stands. `Err` says why it
/// is refused (nothing is published then).
pub fn check_event(state: &RunState, body: &ServerEventBody) -> Result<(), String> {
    let known = |id: &str| {
        if state.nodes.contains_key(id) { Ok(()) } else { Err(format!("there is no node {id:?} in this run")) }
    };
    if let ServerEventBody::RunRepaired { action, node_id, reset, .. } = body {
        // The one event an ended run takes: it reopens the run, by the same rule as ours.
        let planned = state.repair_plan(*action, node_id)?;
        return if *reset == planned {
            Ok(())
        } else {
            Err(format!("a {} of {node_id:?} resets {}, not {}", action.as_str(), planned.join(", "), reset.join(", ")))
        };
    }
    if state.results.is_some() {
        return Err("the run has ended: it takes no more events".into());
    }
    match body {
        ServerEventBody::NodeState { node_id, .. }
        | ServerEventBody::NodeLog { node_id, .. }
        | ServerEventBody::HumanGateWaiting { node_id, .. }
        | ServerEventBody::GateResolved { node_id, .. }
        | ServerEventBody::GateProgress { node_id, .. }
        | ServerEventBody::GateReminder { node_id, .. }
        | ServerEventBody::Error { node_id: Some(node_id), .. } => known(node_id),
        ServerEventBody::EdgeActive { from, to } => {
            known(from)?;
            known(to)?;
            if state.nodes[to].needs.contains(from) { Ok(()) } else { Err(format!("there is no edge {from} → {to}")) }
        }
        ServerEventBody::DagMutated { mutation } => check_mutation(state, mutation),
        ServerEventBody::Snapshot { .. } => Err("snapshots are dagstream's to send".into()),
        // Checked above.
        ServerEventBody::RunRepaired { .. } => Ok(()),
        ServerEventBody::CostUpdate { .. }
        | ServerEventBody::ExecutionComplete { .. }
        | ServerEventBody::RunStateChanged { .. }
        | ServerEventBody::Error { node_id: None, .. } => Ok(()),
    }
}

fn check_mutation(state: &RunState, mutation: &DagMutation) -> Result<(), String> {
    let known = |id: &str| {
        if state.nodes.contains_key(id) { Ok(()) } else { Err(format!("there is no node {id:?} in this run")) }
    };
    match mutation {
        DagMutation::AddNode { node, after, .. } => {
            if state.nodes.contains_key(&node.id) {
                return Err(format!("there is already a node {:?}", node.id));
            }
            after.iter().try_for_each(|id| known(id))
        }
        DagMutation::AddEdge { from, to } => {
            known(from)?;
            known(to)?;
            if depends_on(state, from, to) {
                Err(format!("an edge {from} → {to} would make a cycle"))
            } else {
                Ok(())
            }
        }
        DagMutation::RemoveNode { node_id } | DagMutation::UpdateNode { node_id, .. } => known(node_id),
    }
}

/// Whether `node` needs `target`, directly or through other nodes (or is it).
fn depends_on(state: &RunState, node: &str, target: &str) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![node];
    while let Some(id) = stack.pop() {
        if id == target {
            return true;
        }
        if seen.insert(id)
            && let Some(view) = state.nodes.get(id)
        {
            stack.extend(view.needs.iter().map(String::as_str));
        }
    }
    false
}

/// Checks a dashboard's command against the run's state before it goes to the engine, by the
/// same rules the coordinator applies to its own runs ([`policy`]). What `modify` sends back to
/// is the engine's to decide, so it is never refused for want of upstream nodes here. Who may
/// approve and how many must is what the gate's card says (`approvers`, `approvals`,
/// `may_not_approve`); an approval that only counts towards a quorum goes to the engine too.
pub fn check_command(state: &RunState, event: &ClientEvent, person: &str) -> Result<(), String> {
    let effect = policy::command_effect(event, state.state).map_err(|rejected| rejected.to_string())?;
    match effect {
        CommandEffect::Decide { node_id, decision, feedback, inputs } => {
            let node = state.nodes.get(node_id).ok_or_else(|| Rejected::UnknownNode(node_id.to_owned()).to_string())?;
            let last_decision = state.decisions.iter().rev().find(|record| record.node_id == node_id);
            let standing = match (node.status, last_decision) {
                (NodeStatus::Waiting, _) => GateStanding::Waiting,
                (_, Some(record)) => {
                    GateStanding::Decided { by: &record.decided_by, decision: record.decision, at: &record.decided_at }
                }
                (_, None) => GateStanding::NotWaiting,
            };
            // A gate the engine set waiting without a card offers every decision.
            let options = node.gate.as_ref().map_or(Decision::ALL, |gate| gate.options.as_slice());
            let gate = Gate {
                node_id,
                standing,
                options,
                budget_gate: false,
                has_upstream: true,
                approvers: node.gate.as_ref().and_then(|gate| gate.approvers.as_deref()),
                approvals: node.gate.as_ref().map_or(1, |gate| gate.approvals_needed()),
                approved_by: &node.approved_by,
                may_not_approve: node.gate.as_ref().and_then(|gate| gate.may_not_approve.first().map(String::as_str)),
            };
            policy::decide(&gate, decision, feedback, Decider::Person(person))
                .map_err(|rejected| rejected.to_string())?;
            let form = node.gate.as_ref().map_or(&[][..], |gate| gate.inputs.as_slice());
            crate::protocol::check_values(form, inputs, decision)
                .map(drop)
                .map_err(|problem| Rejected::BadInput { node: node_id.to_owned(), problem }.to_string())
        }
        CommandEffect::Pause | CommandEffect::Resume | CommandEffect::Cancel => Ok(()),
        // The engine resets the nodes and reports it (`run_repaired`, then their states).
        CommandEffect::Repair { action, node_id } => state.repair_plan(action, node_id).map(drop),
    }
}

/// The engine connected to an external run, if one is: where dashboard commands go.
#[derive(Default)]
pub struct EngineLink {
    /// The connected engine's command queue; `None` (or closed) while no engine is connected.
    commands: Mutex<Option<mpsc::Sender<String>>>,
}

impl EngineLink {
    fn lock(&self) -> MutexGuard<'_, Option<mpsc::Sender<String>>> {
        // An Option of a sender: valid whatever a panicking holder did.
        self.commands.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects an engine: the commands for it arrive on the receiver. `None` while another
    /// engine is connected.
    pub fn attach(&self) -> Option<mpsc::Receiver<String>> {
        let mut commands = self.lock();
        if commands.as_ref().is_some_and(|sender| !sender.is_closed()) {
            return None;
        }
        let (sender, receiver) = mpsc::channel(COMMAND_QUEUE);
        *commands = Some(sender);
        Some(receiver)
    }

    /// True while an engine is connected.
    pub fn is_attached(&self) -> bool {
        self.lock().as_ref().is_some_and(|sender| !sender.is_closed())
    }

    /// Passes a command to the engine with who sent it (`actor`, added to the event's JSON).
    pub fn forward(&self, event: &ClientEvent, actor: &str) -> Result<(), String> {
        let mut value = serde_json::to_value(event).map_err(|e| e.to_string())?;
        if let Value::Object(fields) = &mut value {
            fields.insert("actor".into(), Value::String(actor.to_owned()));
        }
        let sender = self.lock().clone().ok_or_else(not_connected)?;
        sender.try_send(value.to_string()).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => "the engine is not keeping up: try again shortly".to_owned(),
            mpsc::error::TrySendError::Closed(_) => not_connected(),
        })
    }
}

fn not_connected() -> String {
    "the engine of this run is not connected: try again when it is".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Decision, RepairAction, ServerEvent};
    use serde_json::json;

    fn run() -> RunState {
        let value = json!({"external": true, "name": "ext", "nodes": [
            {"id": "a"}, {"id": "gate", "kind": "gate", "needs": ["a"]}, {"id": "b", "needs": ["gate"]}
        ]});
        ExternalRun::from_value(value).expect("valid").initial_state("d", "now")
    }

    #[test]
    fn definitions_are_checked() {
        let bad = |value: Value| ExternalRun::from_value(value).expect_err("refused");
        assert!(bad(json!({"external": true, "name": "x", "nodes": [{"id": "a", "needs": ["z"]}]})).contains("\"z\""));
        assert!(bad(json!({"external": true, "name": "x", "nodes": [{"id": "a"}, {"id": "a"}]})).contains("twice"));
        let cycle =
            json!({"external": true, "name": "x", "nodes": [{"id": "a", "needs": ["b"]}, {"id": "b", "needs": ["a"]}]});
        assert!(bad(cycle).contains("cycle"));
        assert!(bad(json!({"external": true, "name": "x", "nodes": [], "extra": 1})).contains("extra"));
        assert_eq!(run().nodes["a"].kind, NodeKind::Task);
    }

    #[test]
    fn events_must_name_known_nodes_and_keep_the_graph_acyclic() {
        let state = run();
        let node_state = |id: &str| ServerEventBody::NodeState {
            node_id: id.into(),
            status: NodeStatus::Running,
            output: None,
            metrics: None,
        };
        assert!(check_event(&state, &node_state("a")).is_ok());
        assert!(check_event(&state, &node_state("nope")).is_err());
        assert!(check_event(&state, &ServerEventBody::EdgeActive { from: "a".into(), to: "gate".into() }).is_ok());
        assert!(check_event(&state, &ServerEventBody::EdgeActive { from: "a".into(), to: "b".into() }).is_err());
        let back_edge =
            ServerEventBody::DagMutated { mutation: DagMutation::AddEdge { from: "b".into(), to: "a".into() } };
        assert!(check_event(&state, &back_edge).expect_err("cycle").contains("cycle"));
        let forward =
            ServerEventBody::DagMutated { mutation: DagMutation::AddEdge { from: "a".into(), to: "b".into() } };
        assert!(check_event(&state, &forward).is_ok());
        assert!(check_event(&state, &ServerEventBody::Snapshot { run: Box::new(state.clone()) }).is_err());
    }

    #[test]
    fn commands_are_checked_then_forwarded_with_their_actor() {
        let mut state = run();
        let approve = ClientEvent::HumanDecision {
            node_id: "gate".into(),
            decision: Decision::Approve,
            feedback: None,
            inputs: None,
        };
        assert!(check_command(&state, &approve, "ana").is_err(), "the gate does not wait yet");
        state.apply(&ServerEvent {
            seq: 1,
            body: ServerEventBody::NodeState {
                node_id: "gate".into(),
                status: NodeStatus::Waiting,
                output: None,
                metrics: None,
            },
        });
        assert!(check_command(&state, &approve, "ana").is_ok());
        assert!(check_command(&state, &ClientEvent::ResumeExecution, "ana").is_err(), "not paused");

        let link = EngineLink::default();
        assert!(link.forward(&approve, "ana").is_err(), "no engine connected");
        let mut commands = link.attach().expect("attached");
        assert!(link.attach().is_none(), "one engine at a time");
        link.forward(&approve, "ana").expect("forwarded");
        let sent: Value = serde_json::from_str(&commands.try_recv().expect("queued")).expect("json");
        assert_eq!(sent, json!({"type": "human_decision", "node_id": "gate", "decision": "approve", "actor": "ana"}));
        drop(commands);
        assert!(!link.is_attached());
        assert!(link.attach().is_some(), "a new engine may connect once the old one is gone");
    }

    /// An external run that ended failed takes a retry (checked by the repair rule, then
    /// forwarded), and afterwards the engine's `run_repaired`, which must reset what the rule
    /// says; nothing else once it has ended.
    #[test]
    fn an_ended_run_takes_a_repair_and_the_engines_report_of_it() {
        let mut state = run();
        let bodies = [
            ServerEventBody::NodeState {
                node_id: "a".into(),
                status: NodeStatus::Completed,
                output: None,
                metrics: None,
            },
            ServerEventBody::NodeState {
                node_id: "gate".into(),
                status: NodeStatus::Failed,
                output: None,
                metrics: None,
            },
            ServerEventBody::NodeState {
                node_id: "b".into(),
                status: NodeStatus::Skipped,
                output: None,
                metrics: None,
            },
            ServerEventBody::RunStateChanged { state: crate::protocol::RunPhase::Failed },
            ServerEventBody::ExecutionComplete { results: Default::default() },
        ];
        for (seq, body) in bodies.into_iter().enumerate() {
            state.apply(&ServerEvent { seq: seq as u64 + 1, body });
        }
        let retry = ClientEvent::RetryNode { node_id: "gate".into() };
        assert_eq!(check_command(&state, &retry, "ana"), Ok(()));
        let retry_a = ClientEvent::RetryNode { node_id: "a".into() };
        assert!(check_command(&state, &retry_a, "ana").expect_err("completed").contains("re-run from it instead"));
        let repaired = |reset: &[&str]| ServerEventBody::RunRepaired {
            action: RepairAction::Retry,
            node_id: "gate".into(),
            reset: reset.iter().map(|id| id.to_string()).collect(),
            repaired_by: "ana".into(),
            repaired_at: "now".into(),
        };
        assert_eq!(check_event(&state, &repaired(&["gate", "b"])), Ok(()));
        assert!(check_event(&state, &repaired(&["gate"])).expect_err("b too").contains("resets gate, b, not gate"));
        let running = ServerEventBody::NodeState {
            node_id: "gate".into(),
            status: NodeStatus::Running,
            output: None,
            metrics: None,
        };
        assert!(check_event(&state, &running).expect_err("ended").contains("has ended"));
    }
}
