//! Repairs: a failed node retried, or a finished node and everything downstream of it run
//! again, while the run goes on or after it ended (which reopens it). Whether the run takes the
//! repair is [`RunState::repair_plan`]'s rule, the same for every kind of run; the schedule
//! then resets exactly those nodes.
//!
//! [`RunState::repair_plan`]: crate::protocol::RunState::repair_plan

use super::Coordinator;
use crate::engine::policy::Rejected;
use crate::protocol::{NodeStatus, RepairAction, RunPhase, ServerEventBody, now_rfc3339};

impl Coordinator {
    /// Applies a repair `actor` asked for: `run_repaired`, each reset node back to pending, the
    /// run running again if it had ended, then whatever is ready starts (unless it is paused).
    pub(super) fn repair(&mut self, action: RepairAction, node_id: &str, actor: &str) -> Result<(), Rejected> {
        let planned = self.room.snapshot().repair_plan(action, node_id).map_err(Rejected::Repair)?;
        let node = *self.index.get(node_id).ok_or_else(|| Rejected::UnknownNode(node_id.to_owned()))?;
        // The room's state is what has been stored, which may trail what this coordinator just
        // published (a node that ended a moment ago): then the schedule disagrees, and the
        // repair is refused, changing nothing, until the two agree again.
        let reached = self.scheduler.downstream(node);
        let ids: Vec<String> =
            (0..self.nodes.len()).filter(|&n| reached[n]).map(|n| self.nodes[n].id.clone()).collect();
        let try_again = || Rejected::Repair(format!("node {node_id:?} is changing right now: try again"));
        if ids != planned {
            return Err(try_again());
        }
        let reset = self.scheduler.reset_from(node).ok_or_else(try_again)?;
        for &n in &reset {
            self.outputs.remove(&self.nodes[n].id);
            let run = &mut self.runs[n];
            run.started = None;
            run.feedback = None;
            run.claiming = None;
            run.last_decision = None;
            run.approved_by.clear();
            run.escalated = false;
            if self.open_budget_gate == Some(n) {
                self.open_budget_gate = None;
            }
        }
        tracing::info!(
            dag_id = self.room.dag_id(),
            node = node_id,
            action = action.as_str(),
            by = actor,
            reset = ids.len(),
            "run repaired"
        );
        self.room.publish(ServerEventBody::RunRepaired {
            action,
            node_id: node_id.to_owned(),
            reset: ids,
            repaired_by: actor.to_owned(),
            repaired_at: now_rfc3339(),
        });
        for &n in &reset {
            self.publish_node(n, NodeStatus::Pending, None, None);
        }
        if self.phase.is_terminal() {
            self.traces.reopen_run(&self.room);
            self.set_phase(RunPhase::Running);
        }
        self.start_ready_nodes();
        Ok(())
    }
}
