//! Client commands and gate decisions: judged by the pure rules of [`crate::engine::policy`],
//! applied here. Also the gate timers, whose expiry is the timeout's decision.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{Coordinator, PendingDecision};
use crate::engine::node::NodeMsg;
use crate::engine::policy::{self, CommandEffect, Decider, Gate, GateOutcome, GateStanding, Rejected};
use crate::engine::schedule::Slot;
use crate::engine::spec::NodeWork;
use crate::protocol::{
    ClientEvent, Decision, NodeMetrics, NodeStatus, RunPhase, ServerEventBody, TIMEOUT_DECIDER, check_values,
    now_rfc3339,
};
use crate::store::{Claim, DecisionRow, StoreError};

impl Coordinator {
    pub(super) fn on_command(&mut self, event: ClientEvent, actor: &str) -> Result<(), Rejected> {
        match policy::command_effect(&event, self.phase)? {
            CommandEffect::Decide { node_id, decision, feedback, inputs } => {
                self.decide(node_id, decision, feedback, inputs, Decider::Person(actor))
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
            CommandEffect::Repair { action, node_id } => self.repair(action, node_id, actor),
        }
    }

    /// Where a node stands as a gate, for the decision rule. A decision being recorded counts
    /// as taken: a second decider is told who was first.
    fn gate_standing(&self, node: usize) -> GateStanding<'_> {
        if !self.nodes[node].is_gate() {
            return GateStanding::NotWaiting;
        }
        if let Some(claim) = &self.runs[node].claiming {
            return GateStanding::Decided { by: &claim.decided_by, decision: claim.decision, at: &claim.decided_at };
        }
        match (self.scheduler.slot(node), &self.runs[node].last_decision) {
            (Some(Slot::Started), _) => GateStanding::Waiting,
            (_, Some((by, decision, at))) => GateStanding::Decided { by, decision: *decision, at },
            (_, None) => GateStanding::NotWaiting,
        }
    }

    /// The gate's work that `modify` sends back to: its upstream nodes, never a budget gate
    /// that was put in front of it (that spend was approved; the new spend is judged anew).
    fn upstream_work(&self, node: usize) -> Vec<usize> {
        self.nodes[node]
            .needs
            .iter()
            .filter_map(|need| self.index.get(need).copied())
            .filter(|&u| !self.runs[u].budget_gate)
            .collect()
    }

    /// Who may decide gate `node` now: its approvers, and its `escalate_to` once escalated;
    /// `None`: anyone whose role decides gates.
    pub(super) fn approvers(&self, node: usize) -> Option<Vec<String>> {
        let NodeWork::Gate { rules, .. } = &self.nodes[node].work else { return None };
        let mut approvers = rules.approvers.clone()?;
        if self.runs[node].escalated {
            approvers.extend(rules.escalate_to.iter().filter(|p| !approvers.contains(p)).cloned().collect::<Vec<_>>());
        }
        Some(approvers)
    }

    /// Judges a decision on a gate with [`policy::decide`].
    fn judge(
        &self,
        node: usize,
        decision: Decision,
        feedback: Option<&str>,
        decider: Decider<'_>,
    ) -> Result<GateOutcome, Rejected> {
        let (options, approvals, self_approval) = match &self.nodes[node].work {
            NodeWork::Gate { options, rules, .. } => (options.as_slice(), rules.approvals, rules.allow_self_approval),
            NodeWork::Simulate { .. } | NodeWork::Command { .. } => (&[][..], 1, true),
        };
        let approvers = self.approvers(node);
        let gate = Gate {
            node_id: &self.nodes[node].id,
            standing: self.gate_standing(node),
            options,
            budget_gate: self.runs[node].budget_gate,
            has_upstream: !self.upstream_work(node).is_empty(),
            approvers: approvers.as_deref(),
            approvals,
            approved_by: &self.runs[node].approved_by,
            may_not_approve: self.started_by.as_deref().filter(|_| !self_approval),
        };
        policy::decide(&gate, decision, feedback, decider)
    }

    /// A decision on a waiting gate, as [`policy::decide`] rules. With a store, it is first
    /// recorded as the gate round's one decision ([`crate::hub::Room::claim_decision`]); the gate applies
    /// whichever decision the store holds once it answers ([`Coordinator::on_decision_claimed`]).
    ///
    /// An approval that only counts towards a quorum is no decision: it is published as
    /// `gate_progress`, and the approval that completes the quorum is the decision, signed by
    /// everyone who approved.
    pub(super) fn decide(
        &mut self,
        node_id: &str,
        decision: Decision,
        feedback: Option<&str>,
        inputs: Option<&Map<String, Value>>,
        decider: Decider<'_>,
    ) -> Result<(), Rejected> {
        let node = self.index.get(node_id).copied().ok_or_else(|| Rejected::UnknownNode(node_id.to_owned()))?;
        let outcome = self.judge(node, decision, feedback, decider)?;
        // A person fills the gate's form; the timeout sends none.
        let inputs = match (&self.nodes[node].work, decider) {
            (NodeWork::Gate { inputs: form, .. }, Decider::Person(_)) => check_values(form, inputs, decision)
                .map_err(|problem| Rejected::BadInput { node: node_id.to_owned(), problem })?,
            (_, Decider::Person(_) | Decider::Timeout | Decider::Recorded) => Map::new(),
        };
        if let GateOutcome::Counted { approved_by, remaining } = outcome {
            self.runs[node].approved_by.clone_from(&approved_by);
            self.room.publish(ServerEventBody::GateProgress { node_id: node_id.to_owned(), approved_by, remaining });
            return Ok(());
        }
        let decided_by = match decider {
            Decider::Person(person) if decision == Decision::Approve && !self.runs[node].approved_by.is_empty() => {
                let mut everyone = self.runs[node].approved_by.clone();
                everyone.push(person.to_owned());
                everyone.join(", ")
            }
            Decider::Person(person) => person.to_owned(),
            Decider::Timeout => TIMEOUT_DECIDER.to_owned(),
            // Recorded decisions are applied with their own decider (`pending_from_row`).
            Decider::Recorded => "recorded".to_owned(),
        };
        let claim = PendingDecision {
            decision,
            feedback: policy::feedback_text(feedback).map(str::to_owned),
            decided_by,
            decided_at: now_rfc3339(),
            inputs: (!inputs.is_empty()).then_some(inputs),
            outcome,
        };
        let round = self.runs[node].attempt;
        match self.room.claim_decision(claim.row(node_id, round)) {
            None => self.apply_decision(node, claim),
            Some(recording) => {
                self.runs[node].claiming = Some(claim);
                let to_self = self.to_self.clone();
                self.timers.spawn(async move {
                    let result = recording.await;
                    let _ = to_self.send(NodeMsg::DecisionClaimed { node, round, result }).await;
                });
            }
        }
        Ok(())
    }

    /// The store answered the claim of gate `node`'s decision for its wait `round`: apply the
    /// decision it holds (ours, or a decider's that was first), or, when it could not record
    /// one, say so and let the gate wait on.
    pub(super) fn on_decision_claimed(&mut self, node: usize, round: u32, result: Result<Claim, StoreError>) {
        let claim = self.runs[node].claiming.take();
        if round != self.runs[node].attempt || self.scheduler.slot(node) != Some(Slot::Started) {
            // The gate stopped waiting meanwhile (the run was cancelled).
            return;
        }
        match (result, claim) {
            (Ok(Claim::Won), Some(claim)) => self.apply_decision(node, claim),
            // Only a claim of ours can be won; a look-up finds rows or nothing.
            (Ok(Claim::Won), None) => {}
            (Ok(Claim::Taken(row)), _) => match self.pending_from_row(node, row) {
                Ok(first) => self.apply_decision(node, first),
                Err(problem) => {
                    self.publish_error(node, format!("the gate's recorded decision cannot apply: {problem}"))
                }
            },
            (Err(error), claim) => {
                let whose = claim.map(|c| format!("of {} ", c.decided_by)).unwrap_or_default();
                self.publish_error(
                    node,
                    format!("the decision {whose}could not be recorded, the gate still waits: {error}"),
                );
            }
        }
    }

    /// After a restart: a gate that waits may have a decision that was recorded just before
    /// the server stopped, with its `gate_resolved` event not yet stored. The store is asked, and
    /// such a decision applies as if it had just been claimed.
    pub(super) fn look_up_recorded_decision(&mut self, node: usize) {
        let round = self.runs[node].attempt;
        let Some(lookup) = self.room.recorded_decision(&self.nodes[node].id, i64::from(round)) else { return };
        let to_self = self.to_self.clone();
        self.timers.spawn(async move {
            let result = match lookup.await {
                Ok(Some(row)) => Ok(Claim::Taken(row)),
                Ok(None) => return,
                Err(error) => Err(error),
            };
            let _ = to_self.send(NodeMsg::DecisionClaimed { node, round, result }).await;
        });
    }

    /// A decision another decider recorded first, judged by the same rule.
    fn pending_from_row(&self, node: usize, row: DecisionRow) -> Result<PendingDecision, String> {
        let decision =
            Decision::from_name(&row.decision).ok_or_else(|| format!("unknown decision {:?}", row.decision))?;
        let outcome =
            self.judge(node, decision, row.feedback.as_deref(), Decider::Recorded).map_err(|e| e.to_string())?;
        let inputs = row
            .inputs
            .as_deref()
            .map(|text| serde_json::from_str::<Map<String, Value>>(text).map_err(|e| format!("its form values: {e}")))
            .transpose()?;
        Ok(PendingDecision {
            decision,
            feedback: row.feedback,
            decided_by: row.decided_by,
            decided_at: row.decided_at,
            inputs,
            outcome,
        })
    }

    /// Publishes a decision that stands and does what it says to the gate and the run.
    fn apply_decision(&mut self, node: usize, claim: PendingDecision) {
        let PendingDecision { decision, feedback, decided_by, decided_at, inputs, outcome } = claim;
        let upstream = self.upstream_work(node);
        if let Some(started) = self.runs[node].started {
            ::metrics::histogram!(crate::metrics::GATE_WAIT_SECONDS).record(started.elapsed().as_secs_f64());
        }
        self.runs[node].last_decision = Some((decided_by.clone(), decision, decided_at.clone()));
        self.runs[node].approved_by.clear();
        self.runs[node].escalated = false;
        self.room.publish(ServerEventBody::GateResolved {
            node_id: self.nodes[node].id.clone(),
            decision,
            feedback: feedback.clone(),
            decided_by: decided_by.clone(),
            decided_at,
            inputs: inputs.clone(),
        });
        // What follows the gate reads its decision, feedback and form values in its inputs.
        let mut output = json!({ "decision": decision.as_str(), "decided_by": decided_by });
        if let Some(feedback) = &feedback {
            output["feedback"] = Value::String(feedback.clone());
        }
        if let Some(inputs) = inputs {
            output["inputs"] = Value::Object(inputs);
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
                return;
            }
            GateOutcome::Fail => self.settle(node, NodeStatus::Failed, Some(output)),
            // Handled in `decide`: counting an approval decides nothing.
            GateOutcome::Counted { .. } => return,
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
        if let Err(refused) = self.decide(&id, decision, None, None, Decider::Timeout) {
            self.publish_error(node, format!("gate timeout could not apply: {refused}"));
        }
    }

    /// A gate's reminder or escalation is due: if the gate still waits in the round it was armed
    /// for, everyone is told (`gate_reminder`, which notifications pick up); an escalation lets
    /// its `escalate_to` decide from now on, and a reminder comes again after `remind_every`.
    pub(super) fn on_gate_nudge(&mut self, node: usize, round: u32, escalate: bool) {
        if !policy::timeout_applies(self.gate_standing(node), round, self.runs[node].attempt) {
            return;
        }
        let NodeWork::Gate { rules, .. } = &self.nodes[node].work else { return };
        let (escalate_to, remind_every) = (rules.escalate_to.clone(), rules.remind_every);
        let node_id = self.nodes[node].id.clone();
        if escalate {
            self.runs[node].escalated = true;
            self.room.publish(ServerEventBody::GateReminder { node_id, escalated_to: escalate_to });
        } else {
            self.room.publish(ServerEventBody::GateReminder { node_id, escalated_to: Vec::new() });
            if let Some(every) = remind_every {
                self.arm_gate_nudge(node, every, false);
            }
        }
    }

    /// Arms a gate's reminder (or escalation) for its current wait.
    pub(super) fn arm_gate_nudge(&mut self, node: usize, after: Duration, escalate: bool) {
        let round = self.runs[node].attempt;
        let to_self = self.to_self.clone();
        self.timers.spawn(async move {
            tokio::time::sleep(after).await;
            let _ = to_self.send(NodeMsg::GateNudge { node, round, escalate }).await;
        });
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
