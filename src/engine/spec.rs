//! What a DAG is before it runs: its nodes, their dependencies and kinds, its budget; and the
//! checks a spec must pass before anything starts.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::protocol::{Decision, GraphNode, NodeKind};

/// A DAG to run.
#[derive(Clone, Debug, PartialEq)]
pub struct DagSpec {
    pub name: String,
    /// Money the run may spend; spend is reported against it.
    pub budget: f64,
    /// How many slot-taking nodes may run at once (gates take no slot).
    pub max_parallel: usize,
    pub nodes: Vec<NodeSpec>,
}

/// One node of a [`DagSpec`].
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub id: String,
    /// Shown in the dashboard; the id when absent.
    pub label: Option<String>,
    /// Ids of the nodes that must complete before this one starts.
    pub needs: Vec<String>,
    pub work: NodeWork,
}

/// What a node does when it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeWork {
    /// Takes `duration` and costs `cost`; stands in for real work in demos and tests.
    Simulate { duration: Duration, cost: f64 },
    /// Waits until a person decides.
    Gate { title: String, prompt: String, options: Vec<Decision> },
}

impl NodeSpec {
    pub fn kind(&self) -> NodeKind {
        match self.work {
            NodeWork::Simulate { .. } => NodeKind::Simulate,
            NodeWork::Gate { .. } => NodeKind::Gate,
        }
    }

    /// The node as the graph and the protocol know it.
    pub fn graph_node(&self) -> GraphNode {
        GraphNode {
            id: self.id.clone(),
            label: self.label.clone().unwrap_or_else(|| self.id.clone()),
            kind: self.kind(),
        }
    }
}

/// Why a spec cannot run. Each names the node and field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("the DAG has no nodes")]
    Empty,
    #[error("max_parallel must be at least 1")]
    NoParallelism,
    #[error("budget must be a finite number of at least 0, not {0}")]
    BadBudget(f64),
    #[error("node #{index}: id must be non-empty letters, digits, '-' or '_', not {id:?}")]
    BadId { index: usize, id: String },
    #[error("node {0:?}: id is used by more than one node")]
    DuplicateId(String),
    #[error("node {node:?}: needs {missing:?}, which is not a node of this DAG")]
    UnknownNeed { node: String, missing: String },
    #[error("node {0:?}: needs itself")]
    SelfNeed(String),
    #[error("the DAG has a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error("node {0:?}: a gate must offer at least one option")]
    GateWithoutOptions(String),
    #[error("node {node:?}: cost must be a finite number of at least 0, not {cost}")]
    BadCost { node: String, cost: f64 },
}

impl DagSpec {
    /// Checks everything that must hold before the run starts.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.nodes.is_empty() {
            return Err(SpecError::Empty);
        }
        if self.max_parallel == 0 {
            return Err(SpecError::NoParallelism);
        }
        if !self.budget.is_finite() || self.budget < 0.0 {
            return Err(SpecError::BadBudget(self.budget));
        }
        let mut ids = HashSet::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if !is_valid_id(&node.id) {
                return Err(SpecError::BadId { index, id: node.id.clone() });
            }
            if !ids.insert(node.id.as_str()) {
                return Err(SpecError::DuplicateId(node.id.clone()));
            }
            match &node.work {
                NodeWork::Simulate { cost, .. } if !cost.is_finite() || *cost < 0.0 => {
                    return Err(SpecError::BadCost { node: node.id.clone(), cost: *cost });
                }
                NodeWork::Gate { options, .. } if options.is_empty() => {
                    return Err(SpecError::GateWithoutOptions(node.id.clone()));
                }
                NodeWork::Simulate { .. } | NodeWork::Gate { .. } => {}
            }
        }
        for node in &self.nodes {
            for need in &node.needs {
                if need == &node.id {
                    return Err(SpecError::SelfNeed(node.id.clone()));
                }
                if !ids.contains(need.as_str()) {
                    return Err(SpecError::UnknownNeed { node: node.id.clone(), missing: need.clone() });
                }
            }
        }
        match find_cycle(self) {
            Some(cycle) => Err(SpecError::Cycle(cycle)),
            None => Ok(()),
        }
    }
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A cycle as the ids along it, first id repeated at the end; `None` if the graph is acyclic.
/// Needs must already refer to existing nodes.
fn find_cycle(spec: &DagSpec) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let index: HashMap<&str, usize> = spec.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let needs: Vec<Vec<usize>> = spec
        .nodes
        .iter()
        .map(|n| n.needs.iter().filter_map(|need| index.get(need.as_str()).copied()).collect())
        .collect();
    let mut marks = vec![Mark::Unvisited; spec.nodes.len()];
    for root in 0..spec.nodes.len() {
        if marks[root] != Mark::Unvisited {
            continue;
        }
        // Iterative depth-first search: (node, next need to look at).
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if let Some(&need) = needs[node].get(*next) {
                *next += 1;
                match marks[need] {
                    Mark::Unvisited => {
                        marks[need] = Mark::OnPath;
                        path.push((need, 0));
                    }
                    Mark::OnPath => {
                        let start = path.iter().position(|&(n, _)| n == need).unwrap_or(0);
                        // The path runs against the edges (node → its need); report it in edge order.
                        let mut cycle: Vec<String> =
                            path[start..].iter().rev().map(|&(n, _)| spec.nodes[n].id.clone()).collect();
                        cycle.insert(0, spec.nodes[need].id.clone());
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(id: &str, needs: &[&str]) -> NodeSpec {
        NodeSpec {
            id: id.into(),
            label: None,
            needs: needs.iter().map(|s| s.to_string()).collect(),
            work: NodeWork::Simulate { duration: Duration::ZERO, cost: 0.0 },
        }
    }

    fn spec(nodes: Vec<NodeSpec>) -> DagSpec {
        DagSpec { name: "t".into(), budget: 1.0, max_parallel: 2, nodes }
    }

    #[test]
    fn validation_table() {
        let cases: Vec<(DagSpec, Result<(), SpecError>)> = vec![
            (spec(vec![sim("a", &[]), sim("b", &["a"])]), Ok(())),
            (spec(vec![]), Err(SpecError::Empty)),
            (spec(vec![sim("a", &[]), sim("a", &[])]), Err(SpecError::DuplicateId("a".into()))),
            (spec(vec![sim("a", &["zz"])]), Err(SpecError::UnknownNeed { node: "a".into(), missing: "zz".into() })),
            (spec(vec![sim("a", &["a"])]), Err(SpecError::SelfNeed("a".into()))),
            (spec(vec![sim("bad id", &[])]), Err(SpecError::BadId { index: 0, id: "bad id".into() })),
            (
                spec(vec![sim("a", &["c"]), sim("b", &["a"]), sim("c", &["b"]), sim("d", &[])]),
                Err(SpecError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])),
            ),
            (DagSpec { max_parallel: 0, ..spec(vec![sim("a", &[])]) }, Err(SpecError::NoParallelism)),
            (DagSpec { budget: -1.0, ..spec(vec![sim("a", &[])]) }, Err(SpecError::BadBudget(-1.0))),
        ];
        for (spec, expected) in cases {
            assert_eq!(spec.validate(), expected, "{spec:?}");
        }
    }

    #[test]
    fn cycle_message_names_the_cycle() {
        let err = spec(vec![sim("x", &["y"]), sim("y", &["x"])]).validate().unwrap_err();
        assert_eq!(err.to_string(), "the DAG has a cycle: x → y → x");
    }
}
