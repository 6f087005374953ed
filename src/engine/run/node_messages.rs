//! What node tasks and gate timers report to the coordinator, and what it makes of it.

use std::time::Instant;

use super::Coordinator;
use crate::engine::node::{NodeMsg, Outcome};
use crate::engine::process::Report;
use crate::engine::schedule::Slot;
use crate::protocol::{NodeMetrics, NodeStatus, ServerEventBody, now_rfc3339};

impl Coordinator {
    pub(super) fn on_node_message(&mut self, message: NodeMsg) {
        match message {
            NodeMsg::AttemptStarted { node, attempt } => {
                self.runs[node].attempt = attempt;
                self.runs[node].started = Some(Instant::now());
                let metrics =
                    NodeMetrics { attempt: Some(attempt), started_at: Some(now_rfc3339()), ..NodeMetrics::default() };
                self.publish_node(node, NodeStatus::Running, None, Some(metrics));
            }
            NodeMsg::Log { node, stream, line } => {
                let node_id = self.nodes[node].id.clone();
                self.room.publish(ServerEventBody::NodeLog { node_id, stream, line });
            }
            NodeMsg::Reports { node, reports } => {
                for report in reports {
                    self.on_report(node, report);
                }
            }
            NodeMsg::BadReport { node, line, problem } => {
                self.publish_error(node, format!("report line {line} ignored: {problem}"));
            }
            NodeMsg::AttemptFailed { node, attempt, message } => {
                self.runs[node].attempt = attempt;
                self.publish_error(node, message);
            }
            NodeMsg::Finished { node, outcome } => {
                if self.scheduler.slot(node) != Some(Slot::Started) {
                    return;
                }
                match outcome {
                    Outcome::Completed { output } => {
                        let output = self.runs[node].output.take().or(output);
                        self.settle(node, NodeStatus::Completed, output);
                    }
                    Outcome::Failed { message } => {
                        self.publish_error(node, message);
                        self.settle(node, NodeStatus::Failed, None);
                    }
                    Outcome::Cancelled => self.settle(node, NodeStatus::Cancelled, None),
                }
                self.start_ready_nodes();
            }
            NodeMsg::GateTimedOut { node, round } => self.on_gate_timeout(node, round),
            NodeMsg::GateNudge { node, round, escalate } => self.on_gate_nudge(node, round, escalate),
            NodeMsg::DecisionClaimed { node, round, result } => self.on_decision_claimed(node, round, result),
        }
    }

    pub(super) fn on_report(&mut self, node: usize, report: Report) {
        match report {
            Report::Cost(cost) => {
                self.runs[node].cost += cost;
                let metrics = NodeMetrics { cost: Some(self.runs[node].cost), ..NodeMetrics::default() };
                self.publish_progress(node, metrics);
                self.spend(cost);
            }
            Report::Tokens { tokens_in, tokens_out } => {
                let run = &mut self.runs[node];
                run.tokens_in += tokens_in;
                run.tokens_out += tokens_out;
                let metrics = NodeMetrics {
                    tokens_in: Some(run.tokens_in),
                    tokens_out: Some(run.tokens_out),
                    ..NodeMetrics::default()
                };
                self.publish_progress(node, metrics);
            }
            Report::Output(output) => self.runs[node].output = Some(output),
            Report::AddNode { node: added, after } => {
                if let Err(problem) = self.add_node(*added, after) {
                    self.publish_error(node, format!("mutation refused: {problem}"));
                }
            }
            Report::AddEdge { from, to } => {
                if let Err(problem) = self.add_edge(&from, &to) {
                    self.publish_error(node, format!("mutation refused: {problem}"));
                }
            }
        }
        self.start_ready_nodes();
    }
}
