//! Two runs side by side (`/compare?a=…&b=…`, `GET /api/compare?a=…&b=…`): per node its
//! status, attempts, duration, cost and tokens in each run and what changed in its output; the
//! nodes only one run has; totals. The server builds it (`crate::compare`); pages and API
//! clients read it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{NodeStatus, RunSummary};

/// Two runs compared.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct RunComparison {
    pub a: ComparedRun,
    pub b: ComparedRun,
    /// Every node of either run: those of `a` in its order, then those only `b` has.
    pub nodes: Vec<NodeComparison>,
}

/// One of the runs compared, and its totals.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct ComparedRun {
    pub run: RunSummary,
    /// From its start to its end; `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Tokens in and out, over every node.
    pub tokens: u64,
    /// Attempts, over every node.
    pub attempts: u32,
    pub nodes_failed: usize,
}

/// One node in both runs (or in one of them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct NodeComparison {
    pub id: String,
    pub label: String,
    /// The node in run `a`; `None`: only `b` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<NodeFigures>,
    /// The node in run `b`; `None`: only `a` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<NodeFigures>,
    /// What changed from `a`'s output to `b`'s, as RFC 6902 operations (with the old value);
    /// empty when both have the same output (or a node is in one run only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_changes: Vec<OutputChange>,
}

/// What a run says about one node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct NodeFigures {
    pub status: NodeStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Tokens in and out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// One difference between two outputs: `op` is `add`, `remove` or `replace`; `path` a JSON
/// Pointer into the output (`""`: the whole output).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct OutputChange {
    pub op: String,
    pub path: String,
    /// The value in `a` (absent for `add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<Value>,
    /// The value in `b` (absent for `remove`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<Value>,
}
