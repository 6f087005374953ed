//! Resuming a run after a restart: the graph as it was mutated, then the state its log folds to,
//! then any gate decision the store recorded whose event the log does not have yet.

use std::time::{Duration, Instant};

use super::Coordinator;
use crate::engine::schedule::Slot;
use crate::engine::spec::{NodeFile, NodeWork};
use crate::protocol::{DagMutation, Decision, NodeStatus, RunState, ServerEvent, ServerEventBody};

impl Coordinator {
    /// Re-applies the nodes and edges added while the run went on, without announcing them.
    pub(super) fn replay_graph_changes(&mut self, log: &[ServerEvent]) -> Result<(), String> {
        for event in log {
            let ServerEventBody::DagMutated { mutation } = &event.body else { continue };
            match mutation {
                DagMutation::AddNode { node, after, spec, budget_gate } => {
                    if self.index.contains_key(&node.id) {
                        continue;
                    }
                    let file: NodeFile = spec
                        .clone()
                        .ok_or_else(|| format!("node {:?} was added without its spec", node.id))
                        .and_then(|v| serde_json::from_value(v).map_err(|e| format!("node {:?}: {e}", node.id)))?;
                    let mut added = file.to_spec().map_err(|e| e.to_string())?;
                    let needs = after
                        .iter()
                        .map(|need| self.index.get(need).copied().ok_or_else(|| format!("unknown node {need:?}")))
                        .collect::<Result<Vec<usize>, String>>()?;
                    added.needs = after.clone();
                    self.add_to_graph(added, &needs, *budget_gate);
                }
                DagMutation::AddEdge { from, to } => {
                    let find = |id: &str| self.index.get(id).copied().ok_or_else(|| format!("unknown node {id:?}"));
                    let (from_node, to_node) = (find(from)?, find(to)?);
                    self.scheduler.add_edge(from_node, to_node);
                    self.nodes[to_node].needs.push(from.clone());
                }
                // The engine never removes or relabels nodes.
                DagMutation::RemoveNode { .. } | DagMutation::UpdateNode { .. } => {}
            }
        }
        Ok(())
    }

    /// Marks the gates whose current wait was escalated already (so it is not escalated twice).
    pub(super) fn replay_escalations(&mut self, log: &[ServerEvent]) {
        for event in log {
            // A new wait starts unescalated; a reminder that escalated marks it. Nothing else does.
            let (node_id, escalated) = if let ServerEventBody::HumanGateWaiting { node_id, .. } = &event.body {
                (node_id, false)
            } else if let ServerEventBody::GateReminder { node_id, escalated_to } = &event.body
                && !escalated_to.is_empty()
            {
                (node_id, true)
            } else {
                continue;
            };
            if let Some(&node) = self.index.get(node_id) {
                self.runs[node].escalated = escalated;
            }
        }
    }

    /// Takes over what the folded log says: statuses, attempts, figures, outputs, decisions,
    /// spend, budget, phase; re-arms the timeouts of waiting gates.
    pub(super) fn restore(&mut self, state: &RunState) {
        let mut settled = vec![None; self.nodes.len()];
        for (node, spec) in self.nodes.iter().enumerate() {
            let Some(view) = state.nodes.get(&spec.id) else { continue };
            let run = &mut self.runs[node];
            run.attempt = view.metrics.attempt.unwrap_or(0);
            run.cost = view.metrics.cost.unwrap_or(0.0);
            run.tokens_in = view.metrics.tokens_in.unwrap_or(0);
            run.tokens_out = view.metrics.tokens_out.unwrap_or(0);
            run.approved_by.clone_from(&view.approved_by);
            settled[node] = match view.status {
                NodeStatus::Completed => {
                    if let Some(output) = &view.output {
                        self.outputs.insert(spec.id.clone(), output.clone());
                    }
                    Some(Slot::Completed)
                }
                NodeStatus::Failed => Some(Slot::Failed),
                NodeStatus::Skipped => Some(Slot::Skipped),
                NodeStatus::Cancelled => Some(Slot::Cancelled),
                NodeStatus::Waiting => Some(Slot::Started),
                NodeStatus::Pending | NodeStatus::Running => None,
            };
        }
        for decision in &state.decisions {
            let Some(&gate) = self.index.get(&decision.node_id) else { continue };
            let record = (decision.decided_by.clone(), decision.decision, decision.decided_at.clone());
            self.runs[gate].last_decision = Some(record);
            if decision.decision == Decision::Modify {
                for need in self.nodes[gate].needs.clone() {
                    if let Some(&upstream) = self.index.get(&need) {
                        self.runs[upstream].feedback.clone_from(&decision.feedback);
                    }
                }
            }
        }
        self.scheduler.restore(&settled);
        self.spent = state.cost.spent;
        self.budget = (state.cost.budget > 0.0).then_some(state.cost.budget);
        self.phase = state.state;
        for (node, slot) in settled.iter().enumerate() {
            if *slot != Some(Slot::Started) {
                continue;
            }
            if self.runs[node].budget_gate {
                self.open_budget_gate = Some(node);
            }
            if self.nodes[node].is_gate() {
                self.look_up_recorded_decision(node);
            }
            self.rearm_gate_nudges(node, state);
            let timeout_at = state.nodes.get(&self.nodes[node].id).and_then(|v| v.gate.as_ref()?.timeout_at.clone());
            if let Some(at) = timeout_at.and_then(|at| humantime::parse_rfc3339(&at).ok()) {
                let left = at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO);
                self.runs[node].started = Some(Instant::now());
                self.arm_gate_timer(node, left);
            }
        }
    }

    /// A waiting gate's reminders go on after `remind_every`; its escalation, if it has not
    /// happened, after what is left of `escalate_after` since the gate started waiting.
    fn rearm_gate_nudges(&mut self, node: usize, state: &RunState) {
        let NodeWork::Gate { rules, .. } = &self.nodes[node].work else { return };
        let (remind_every, escalate_after) = (rules.remind_every, rules.escalate_after);
        if let Some(every) = remind_every {
            self.arm_gate_nudge(node, every, false);
        }
        if let Some(after) = escalate_after.filter(|_| !self.runs[node].escalated) {
            let since = state
                .nodes
                .get(&self.nodes[node].id)
                .and_then(|v| humantime::parse_rfc3339(v.metrics.started_at.as_deref()?).ok())
                .and_then(|started| std::time::SystemTime::now().duration_since(started).ok())
                .unwrap_or(Duration::ZERO);
            self.arm_gate_nudge(node, after.saturating_sub(since), true);
        }
    }
}
