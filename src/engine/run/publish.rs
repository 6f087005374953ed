//! Every change of the run leaves the coordinator here, as an event published to its room.

use serde_json::Value;

use super::Coordinator;
use crate::engine::schedule::Slot;
use crate::protocol::{NodeMetrics, NodeStatus, RunPhase, ServerEventBody};

impl Coordinator {
    pub(super) fn set_phase(&mut self, phase: RunPhase) {
        self.phase = phase;
        self.room.publish(ServerEventBody::RunStateChanged { state: phase });
    }

    pub(super) fn publish_node(
        &self,
        node: usize,
        status: NodeStatus,
        output: Option<Value>,
        metrics: Option<NodeMetrics>,
    ) {
        let event = match status {
            NodeStatus::Running if metrics.as_ref().is_some_and(|m| m.started_at.is_some()) => Some("started"),
            NodeStatus::Completed => Some("finished"),
            NodeStatus::Failed => Some("failed"),
            NodeStatus::Running
            | NodeStatus::Pending
            | NodeStatus::Waiting
            | NodeStatus::Skipped
            | NodeStatus::Cancelled => None,
        };
        if let Some(event) = event {
            ::metrics::counter!(crate::metrics::NODES, "event" => event).increment(1);
        }
        self.trace_node(node, status, metrics.as_ref());
        let node_id = self.nodes[node].id.clone();
        self.room.publish(ServerEventBody::NodeState { node_id, status, output, metrics });
    }

    /// A figure changed while the node runs: same status, new metrics.
    pub(super) fn publish_progress(&self, node: usize, metrics: NodeMetrics) {
        if self.scheduler.slot(node) == Some(Slot::Started) {
            self.publish_node(node, NodeStatus::Running, None, Some(metrics));
        }
    }

    pub(super) fn publish_error(&self, node: usize, message: String) {
        let node_id = Some(self.nodes[node].id.clone());
        self.room.publish(ServerEventBody::Error { node_id, message });
    }

    pub(super) fn publish_cost(&self) {
        let budget = self.budget.unwrap_or(0.0);
        let remaining = if self.budget.is_some() { budget - self.spent } else { 0.0 };
        self.room.publish(ServerEventBody::CostUpdate { spent: self.spent, budget, remaining });
    }
}
