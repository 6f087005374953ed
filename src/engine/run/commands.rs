//! Client commands and gate decisions: judged by the pure rules of [`crate::engine::policy`],
//! applied here. Also the gate timers, whose expiry is the timeout's decision.

use std::time::Duration;

use serde_json::{Value, json};

use super::Coordinator;
use crate::engine::node::NodeMsg;
use crate::engine::policy::{self, CommandEffect, Decider, Gate, GateOutcome, GateStanding, Rejected};
use crate::engine::schedule::Slot;
use crate::engine::spec::NodeWork;
use crate::protocol::{ClientEvent, Decision, NodeMetrics, NodeStatus, RunPhase, ServerEventBody, now_rfc3339};

impl Coordinator {
    pub(super) fn on_command(&mut self, event: ClientEvent, actor: &str) -> Result<(), Rejected> {
        match policy::command_effect(&event, self.phase)? {
            CommandEffect::Decide { node_id, decision, feedback } => {
                self.decide(node_id, decision, feedback, actor, Decider::Person)
            }
            CommandEffect::Pause => {
                self.set_phase(RunPhase::Paused);
                Ok(())
            }
            CommandEffect::Resume => {
                self.set_phase(RunPhase::Running);
                self.start_ready_nodes();
                Ok(())
            }
            CommandEffect::Cancel => {
                self.cancel_run();
                Ok(())
            }
        }
    }

    /// Where a node stands as a gate, for the decision rule.
    fn gate_standing(&self, node: usize) -> GateStanding<'_> {
        if !self.nodes[node].is_gate() {
            return GateStanding::NotWaiting;
        }
        match (self.scheduler.slot(node), &self.runs[node].last_decision) {
            (Some(Slot::Started), _) => GateStanding::Waiting,
            (_, Some((by, decision, at))) => GateStanding::Decided { by, decision: *decision, at },
            (_, None) => GateStanding::NotWaiting,
        }
    }

    /// Applies a decision to a waiting gate, as [`policy::decide`] rules.
    pub(super) fn decide(
        &mut self,
        node_id: &str,
        decision: Decision,
        feedback: Option<&str>,
        actor: &str,
        decider: Decider,
    ) -> Result<(), Rejected> {
        let node = self.index.get(node_id).copied().ok_or_else(|| Rejected::UnknownNode(node_id.to_owned()))?;
        let options = match &self.nodes[node].work {
            NodeWork::Gate { options, .. } => options.as_slice(),
            NodeWork::Simulate { .. } | NodeWork::Command { .. } => &[],
        };
        // What `modify` sends the work back to: the gate's upstream work, never a budget gate
        // that was put in front of it (that spend was approved; the new spend is judged anew).
        let upstream: Vec<usize> = self.nodes[node]
            .needs
            .iter()
            .filter_map(|need| self.index.get(need).copied())
            .filter(|&u| !self.runs[u].budget_gate)
            .collect();
        let gate = Gate {
            node_id,
            standing: self.gate_standing(node),
            options,
            budget_gate: self.runs[node].budget_gate,
            has_upstream: !upstream.is_empty(),
        };
        let outcome = policy::decide(&gate, decision, feedback, decider)?;
        let feedback = policy::feedback_text(feedback).map(str::to_owned);
        let decided_at = now_rfc3339();
        self.runs[node].last_decision = Some((actor.to_owned(), decision, decided_at.clone()));
        self.room.publish(ServerEventBody::GateResolved {
            node_id: node_id.to_owned(),
            decision,
            feedback: feedback.clone(),
            decided_by: actor.to_owned(),
            decided_at,
        });
        let mut output = json!({ "decision": decision.as_str(), "decided_by": actor });
        if let Some(feedback) = &feedback {
            output["feedback"] = Value::String(feedback.clone());
        }
        match outcome {
            GateOutcome::RaiseBudget => {
                self.open_budget_gate = None;
                self.budget = self.budget.map(|budget| policy::raised_budget(budget, self.budget_step));
                self.publish_cost();
                self.settle(node, NodeStatus::Completed, Some(output));
                self.check_budget();
            }
            GateOutcome::Complete => {
                self.settle(node, NodeStatus::Completed, Some(output));
                self.check_budget();
            }
            GateOutcome::CancelRun => {
                // Not a failure of the work: the run stops, so everything left is cancelled.
                self.open_budget_gate = None;
                self.cancel_run();
                return Ok(());
            }
            GateOutcome::Fail => self.settle(node, NodeStatus::Failed, Some(output)),
            GateOutcome::SendBack { feedback } => {
                self.scheduler.rerun_before(&upstream, node);
                let round = self.runs[node].attempt;
                self.publish_node(
                    node,
                    NodeStatus::Pending,
                    None,
                    Some(NodeMetrics { attempt: Some(round), ..Default::default() }),
                );
                for &u in &upstream {
                    self.runs[u].feedback = Some(feedback.clone());
                    self.outputs.remove(&self.nodes[u].id);
                    self.publish_node(u, NodeStatus::Pending, None, None);
                }
            }
        }
        self.start_ready_nodes();
        Ok(())
    }

    /// A gate's timer fired: its `on_timeout` decides, if the gate still waits in the round the
    /// timer was armed for.
    pub(super) fn on_gate_timeout(&mut self, node: usize, round: u32) {
        let applies = policy::timeout_applies(self.gate_standing(node), round, self.runs[node].attempt);
        let NodeWork::Gate { on_timeout: Some(decision), .. } = &self.nodes[node].work else { return };
        if !applies {
            return;
        }
        let (decision, id) = (*decision, self.nodes[node].id.clone());
        if let Err(refused) = self.decide(&id, decision, None, "timeout", Decider::Timeout) {
            self.publish_error(node, format!("gate timeout could not apply: {refused}"));
        }
    }

    pub(super) fn arm_gate_timer(&mut self, node: usize, after: Duration) {
        let round = self.runs[node].attempt;
        let to_self = self.to_self.clone();
        self.timers.spawn(async move {
            tokio::time::sleep(after).await;
            let _ = to_self.send(NodeMsg::GateTimedOut { node, round }).await;
        });
    }

    pub(super) fn cancel_run(&mut self) {
        self.set_phase(RunPhase::Cancelling);
        self.cancel.cancel();
        self.timers.abort_all();
        for node in self.scheduler.cancel_unstarted() {
            self.publish_node(node, NodeStatus::Cancelled, None, None);
        }
        for node in self.scheduler.started() {
            // Work nodes report their end through their task; gates just stop waiting.
            if self.nodes[node].is_gate() {
                self.scheduler.cancel_started(node);
                self.publish_node(node, NodeStatus::Cancelled, None, None);
            }
        }
    }
}
