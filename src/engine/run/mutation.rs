//! The graph growing while the run goes: nodes and edges added by running nodes, budget gates.

use super::{Coordinator, NodeRun};
use crate::engine::spec::{NodeFile, NodeSpec, is_valid_id};
use crate::protocol::{DagMutation, RunPhase, ServerEventBody};

impl Coordinator {
    /// Adds a node reported by a running node, after `after` (and its own `needs`).
    pub(super) fn add_node(&mut self, file: NodeFile, after: Vec<String>) -> Result<(), String> {
        if self.phase.is_terminal() || self.phase == RunPhase::Cancelling {
            return Err("the run is ending".into());
        }
        if !is_valid_id(&file.id) {
            return Err(format!("{:?} is not a valid node id", file.id));
        }
        if self.index.contains_key(&file.id) {
            return Err(format!("a node {:?} already exists", file.id));
        }
        let mut spec = file.to_spec().map_err(|e| e.to_string())?;
        let mut needs = after;
        for need in std::mem::take(&mut spec.needs) {
            if !needs.contains(&need) {
                needs.push(need);
            }
        }
        let need_indices = needs
            .iter()
            .map(|need| self.index.get(need).copied().ok_or_else(|| format!("{need:?} is not a node of this run")))
            .collect::<Result<Vec<usize>, String>>()?;
        spec.needs = needs;
        self.insert_node(spec, &need_indices, false);
        Ok(())
    }

    /// Adds the edge `from → to`, if `to` has not started and no cycle follows.
    pub(super) fn add_edge(&mut self, from: &str, to: &str) -> Result<(), String> {
        let find = |id: &str| self.index.get(id).copied().ok_or_else(|| format!("{id:?} is not a node of this run"));
        let (from_node, to_node) = (find(from)?, find(to)?);
        self.scheduler
            .check_edge(from_node, to_node)
            .map_err(|refusal| format!("edge {from:?} → {to:?}: {refusal}"))?;
        self.link(from_node, to_node);
        Ok(())
    }

    /// Appends a node to the run and announces it (with its spec, so a restart can run it);
    /// answers its index.
    pub(super) fn insert_node(&mut self, spec: NodeSpec, needs: &[usize], budget_gate: bool) -> usize {
        let mutation = DagMutation::AddNode {
            node: spec.graph_node(),
            after: spec.needs.clone(),
            spec: serde_json::to_value(spec.to_file()).ok(),
            budget_gate,
        };
        let node = self.add_to_graph(spec, needs, budget_gate);
        self.room.publish(ServerEventBody::DagMutated { mutation });
        node
    }

    /// Appends a node to the graph and the schedule, without announcing it.
    pub(super) fn add_to_graph(&mut self, spec: NodeSpec, needs: &[usize], budget_gate: bool) -> usize {
        let node = self.scheduler.add_node(needs, !spec.is_gate());
        self.index.insert(spec.id.clone(), node);
        self.nodes.push(spec);
        self.runs.push(NodeRun { budget_gate, ..NodeRun::default() });
        node
    }

    /// Adds and announces the edge `from → to` (already checked).
    pub(super) fn link(&mut self, from: usize, to: usize) {
        self.scheduler.add_edge(from, to);
        let (from_id, to_id) = (self.nodes[from].id.clone(), self.nodes[to].id.clone());
        self.nodes[to].needs.push(from_id.clone());
        self.room.publish(ServerEventBody::DagMutated { mutation: DagMutation::AddEdge { from: from_id, to: to_id } });
    }
}
