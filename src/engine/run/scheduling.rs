//! Starting what is ready, settling what ended, and ending the run when nothing is left.

use std::time::Instant;

use serde_json::{Map, Value, json};

use super::Coordinator;
use crate::engine::node::{self, NodeJob};
use crate::engine::spec::NodeWork;
use crate::protocol::{GatePresentation, NodeMetrics, NodeStatus, RunPhase, ServerEventBody, now_rfc3339};

impl Coordinator {
    pub(super) fn start_ready_nodes(&mut self) {
        if self.phase != RunPhase::Running {
            return;
        }
        for node in self.scheduler.take_startable() {
            self.start(node);
        }
    }

    pub(super) fn start(&mut self, node: usize) {
        let spec = &self.nodes[node];
        for need in &spec.needs {
            self.room.publish(ServerEventBody::EdgeActive { from: need.clone(), to: spec.id.clone() });
        }
        // Simulated work reads no inputs; commands and gate cards do.
        let inputs: Map<String, Value> = match spec.work {
            NodeWork::Simulate { .. } => Map::new(),
            NodeWork::Command { .. } | NodeWork::Gate { .. } => {
                spec.needs.iter().filter_map(|need| self.outputs.get(need).map(|o| (need.clone(), o.clone()))).collect()
            }
        };
        match &spec.work {
            NodeWork::Gate { title, prompt, options, rules, inputs: form, .. } => {
                let run = &mut self.runs[node];
                run.attempt += 1;
                run.started = Some(Instant::now());
                let round = run.attempt;
                let context = if run.budget_gate {
                    Some(json!({ "spent": self.spent, "budget": self.budget, "budget_step": self.budget_step }))
                } else {
                    (!inputs.is_empty()).then_some(Value::Object(inputs))
                };
                let timeout = spec.timeout;
                let (remind_every, escalate_after) = (rules.remind_every, rules.escalate_after);
                let presentation = GatePresentation {
                    title: title.clone(),
                    prompt: prompt.clone(),
                    options: options.clone(),
                    context,
                    cost_so_far: Some(self.spent),
                    timeout_at: timeout
                        .map(|t| humantime::format_rfc3339_millis(std::time::SystemTime::now() + t).to_string()),
                    approvers: rules.approvers.clone(),
                    approvals: Some(rules.approvals).filter(|n| *n > 1),
                    may_not_approve: self.started_by.iter().filter(|_| !rules.allow_self_approval).cloned().collect(),
                    inputs: form.clone(),
                    forecast: Some(self.forecast(node)),
                };
                let metrics =
                    NodeMetrics { attempt: Some(round), started_at: Some(now_rfc3339()), ..Default::default() };
                self.publish_node(node, NodeStatus::Waiting, None, Some(metrics));
                let node_id = spec.id.clone();
                self.room.publish(ServerEventBody::HumanGateWaiting { node_id, presentation });
                if let Some(timeout) = timeout {
                    self.arm_gate_timer(node, timeout);
                }
                if let Some(every) = remind_every {
                    self.arm_gate_nudge(node, every, false);
                }
                if let Some(after) = escalate_after {
                    self.arm_gate_nudge(node, after, true);
                }
            }
            NodeWork::Simulate { .. } | NodeWork::Command { .. } => {
                let run = &mut self.runs[node];
                let job = NodeJob {
                    node,
                    id: spec.id.clone(),
                    work: spec.work.clone(),
                    timeout: spec.timeout,
                    retries: spec.retries,
                    first_attempt: run.attempt + 1,
                    inputs,
                    feedback: run.feedback.clone(),
                    workdir: self.workdir.clone(),
                    cancel_grace: self.cancel_grace,
                    dag_id: self.room.dag_id().to_owned(),
                    trace_id: self.room.trace_id(),
                    workers: self.workers.clone(),
                };
                // What the node's task logs is logged in the run's span (with its trace id).
                let task = node::run(job, self.to_self.clone(), self.cancel.child_token());
                self.tasks.spawn(tracing::Instrument::instrument(task, self.traces.run()));
            }
        }
    }

    /// Records the end of a started node: its final `node_state`, then what follows from it in
    /// the schedule (skips after a failure).
    pub(super) fn settle(&mut self, node: usize, status: NodeStatus, output: Option<Value>) {
        let run = &self.runs[node];
        let duration_ms = run.started.map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        let is_gate = self.nodes[node].is_gate();
        let metrics = NodeMetrics {
            duration_ms,
            finished_at: Some(now_rfc3339()),
            cost: (!is_gate).then_some(run.cost),
            tokens_in: (run.tokens_in > 0).then_some(run.tokens_in),
            tokens_out: (run.tokens_out > 0).then_some(run.tokens_out),
            attempt: Some(run.attempt),
            started_at: None,
        };
        if let (NodeStatus::Completed, Some(output)) = (status, &output) {
            self.outputs.insert(self.nodes[node].id.clone(), output.clone());
        }
        self.publish_node(node, status, output, Some(metrics));
        match status {
            NodeStatus::Completed => {
                self.scheduler.complete(node);
            }
            NodeStatus::Failed => {
                for skipped in self.scheduler.fail(node) {
                    self.publish_node(skipped, NodeStatus::Skipped, None, None);
                }
            }
            NodeStatus::Cancelled => self.scheduler.cancel_started(node),
            NodeStatus::Pending | NodeStatus::Running | NodeStatus::Waiting | NodeStatus::Skipped => {}
        }
    }

    /// Ends the run once every node is settled: final run state, then `execution_complete`.
    pub(super) fn finish_if_done(&mut self) {
        if self.phase.is_terminal() || !self.scheduler.is_finished() {
            return;
        }
        let phase = match self.phase {
            RunPhase::Cancelling => RunPhase::Cancelled,
            RunPhase::Running | RunPhase::Paused if self.scheduler.any_failed() => RunPhase::Failed,
            RunPhase::Running | RunPhase::Paused | RunPhase::Cancelled | RunPhase::Completed | RunPhase::Failed => {
                RunPhase::Completed
            }
        };
        self.set_phase(phase);
        self.traces.end_run(phase.as_str());
        self.timers.abort_all();
        // The outputs stay: a repair may reopen the run, and what it does not reset is kept.
        self.room.publish(ServerEventBody::ExecutionComplete { results: self.outputs.clone() });
    }

    /// What approving gate `gate` is expected to cost, from the nodes not finished yet.
    fn forecast(&self, gate: usize) -> crate::protocol::Forecast {
        use crate::engine::forecast::{self, Priced};
        let unfinished = |n: usize| n != gate && !self.scheduler.slot(n).is_some_and(|slot| slot.is_terminal());
        let priced = |n: usize| Priced {
            id: &self.nodes[n].id,
            hint: match &self.nodes[n].work {
                NodeWork::Simulate { cost, .. } => Some(*cost),
                NodeWork::Command { cost, .. } => *cost,
                // Deciding costs nothing.
                NodeWork::Gate { .. } => Some(0.0),
            },
        };
        let downstream = self.scheduler.downstream(gate);
        let after: Vec<Priced<'_>> =
            (0..self.nodes.len()).filter(|&n| unfinished(n) && downstream[n]).map(priced).collect();
        let rest: Vec<Priced<'_>> = (0..self.nodes.len()).filter(|&n| unfinished(n)).map(priced).collect();
        let approving_adds = self.runs[gate].budget_gate.then_some(self.budget_step);
        forecast::forecast(&after, &rest, &self.history, approving_adds)
    }
}
