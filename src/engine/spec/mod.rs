//! What a DAG is before it runs: the spec file format (TOML, or the same structure as JSON),
//! its JSON Schema, and the checks a spec must pass before anything starts.
//!
//! A spec is read in two steps. [`SpecFile`] / [`NodeFile`] are the file as written, every field
//! of every kind optional and unknown fields refused; [`DagSpec::parse`] then checks each node
//! against its kind and the graph as a whole, and produces the typed [`DagSpec`]. Every error
//! names the node and the field at fault.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::{Decision, GraphNode, InputField, InputKind, NodeKind};

/// Parallelism when a spec does not say.
pub const DEFAULT_MAX_PARALLEL: usize = 4;
/// Retries a node may ask for at most.
pub const MAX_RETRIES: u32 = 20;

/// A DAG spec as written in a file: TOML, or JSON with the same structure.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// Name of the DAG, shown in the dashboard.
    pub name: String,
    /// Money the run may spend (e.g. USD). When spend reaches it, no new node starts and a budget
    /// gate asks whether to go on. Absent or 0: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    /// How much approving a budget gate adds to the budget. Default: the budget again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_step: Option<f64>,
    /// How many nodes may run at once (gates do not count). Default: 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<usize>,
    /// The nodes, in any order.
    pub nodes: Vec<NodeFile>,
    /// Where this run's notifications go besides the server's (`[[notify]]`: `url`, `secret`,
    /// optional `format` and `events`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<crate::notify::NotifyTarget>,
    /// Who started the run. Set by the server (a spec's own value is replaced): gates with
    /// `allow_self_approval = false` refuse this person's approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
}

/// One node as written. Which fields apply depends on `kind`; a field of another kind is an error.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// Unique within the DAG: letters, digits, `-` and `_`.
    pub id: String,
    /// Shown in the dashboard; the id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Ids of the nodes that must complete before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// What the node does.
    pub kind: KindName,
    /// Longest a run of the node may take (`"500ms"`, `"30s"`, `"1h"`). For a gate: how long it
    /// waits for a decision before `on_timeout` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How many times a failed command or simulate node is tried again (with backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Environment variables for a command node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// `command`: the shell command (`sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// `command`: the pool of remote workers that runs it (`dagstream worker --pool NAME`;
    /// letters, digits, `-` and `_`). Default: the instance that drives the run. Pools need a
    /// cluster (`serve --nats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// `simulate`: how long the node takes (`"2s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// `simulate`: what a run of the node costs. `command`: what a run is expected to cost, a
    /// hint for the forecasts on gate cards (the command reports what it really cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// `simulate`: tokens read, for modelled LLM calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_in: Option<u64>,
    /// `simulate`: tokens written, for modelled LLM calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_out: Option<u64>,
    /// `simulate`: probability (0 to 1) that a run fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_rate: Option<f64>,
    /// `simulate`: the node's output (any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// `gate`: the question on the gate card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `gate`: what the person should check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// `gate`: the decisions offered. Default: approve and reject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<Decision>>,
    /// `gate`: the decision taken when `timeout` passes without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<TimeoutDecision>,
    /// `gate`: who may decide it: user names, and `group:NAME` for a group of the users file
    /// (read when the run starts). Default: everyone whose role decides gates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<String>>,
    /// `gate`: how many distinct people must approve (any reject rejects at once). Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    /// `gate`: whether the person who started the run may approve it. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_self_approval: Option<bool>,
    /// `gate`: remind the approvers this often while it waits (`"30m"`): a `gate_reminder`
    /// notification each time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_every: Option<String>,
    /// `gate`: after waiting this long (`"2h"`), tell `escalate_to` too, who may then decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after: Option<String>,
    /// `gate`: who is told (and may decide) after `escalate_after`: names and `group:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<Vec<String>>,
    /// `gate`: a form that comes with the decision: `{ name, type = "enum" | "integer" |
    /// "number" | "text" | "boolean", label?, options? (enum), min?, max?, required? }`. The values
    /// are checked, recorded with the decision, and reach what follows in the gate's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<InputField>>,
}

/// Who may decide a gate, how many must approve, and who is reminded when.
#[derive(Clone, Debug, PartialEq)]
pub struct GateRules {
    /// Names (and, until the run starts, `group:NAME`s); `None`: every approver.
    pub approvers: Option<Vec<String>>,
    /// Distinct approvals needed, at least 1.
    pub approvals: u32,
    pub allow_self_approval: bool,
    pub remind_every: Option<Duration>,
    pub escalate_after: Option<Duration>,
    /// Names (and `group:NAME`s until the run starts).
    pub escalate_to: Vec<String>,
}

impl Default for GateRules {
    /// One approval from anyone who may decide gates, the run's starter included.
    fn default() -> Self {
        GateRules {
            approvers: None,
            approvals: 1,
            allow_self_approval: true,
            remind_every: None,
            escalate_after: None,
            escalate_to: Vec::new(),
        }
    }
}

/// The prefix of a group in `approvers` and `escalate_to`.
pub const GROUP_PREFIX: &str = "group:";

/// Most fields a gate's form may have.
pub const MAX_INPUTS: usize = 20;

/// Most approvals a gate may ask for.
pub const MAX_APPROVALS: u32 = 20;

/// The kinds of node a spec may use.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    Command,
    #[default]
    Simulate,
    Gate,
}

/// What a gate decides on its own when nobody decided in time.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutDecision {
    Approve,
    Reject,
}

impl From<TimeoutDecision> for Decision {
    fn from(decision: TimeoutDecision) -> Self {
        match decision {
            TimeoutDecision::Approve => Decision::Approve,
            TimeoutDecision::Reject => Decision::Reject,
        }
    }
}

/// A validated DAG, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct DagSpec {
    pub name: String,
    /// Money the run may spend; `None`: no budget.
    pub budget: Option<f64>,
    /// What an approved budget gate adds.
    pub budget_step: f64,
    /// How many slot-taking nodes may run at once (gates take no slot).
    pub max_parallel: usize,
    pub nodes: Vec<NodeSpec>,
    /// Where this run's notifications go besides the server's.
    pub notify: Vec<crate::notify::NotifyTarget>,
    /// Who started the run (set by the server).
    pub started_by: Option<String>,
    /// What its nodes cost in past runs of the same spec, for the forecasts on gate cards (read
    /// from the store when the run starts; not part of the spec file).
    pub history: super::forecast::CostHistory,
}

/// One validated node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub id: String,
    /// Shown in the dashboard; the id when absent.
    pub label: Option<String>,
    /// Ids of the nodes that must complete before this one starts.
    pub needs: Vec<String>,
    /// Longest one attempt may take; for a gate, how long it waits.
    pub timeout: Option<Duration>,
    /// Further attempts after a failure.
    pub retries: u32,
    pub work: NodeWork,
}

/// What a node does when it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeWork {
    /// Runs `sh -c run` with `env` added to a scrubbed environment: here, or on a worker of
    /// `pool`.
    Command {
        run: String,
        env: BTreeMap<String, String>,
        pool: Option<String>,
        /// What a run of it is expected to cost, for forecasts (it reports what it really cost).
        cost: Option<f64>,
    },
    /// Takes `duration`, costs `cost`, fails with probability `fail_rate`; stands in for real work.
    Simulate {
        duration: Duration,
        cost: f64,
        tokens_in: Option<u64>,
        tokens_out: Option<u64>,
        fail_rate: f64,
        output: Option<Value>,
    },
    /// Waits until a person decides (or, with `rules.approvals` above 1, enough people approve),
    /// or `timeout` passes and `on_timeout` applies.
    Gate {
        title: String,
        prompt: String,
        options: Vec<Decision>,
        on_timeout: Option<Decision>,
        rules: GateRules,
        /// The form that comes with the decision.
        inputs: Vec<InputField>,
    },
}

impl DagSpec {
    /// The spec as a file would say it (for storing a run and reading it back).
    pub fn to_file(&self) -> SpecFile {
        SpecFile {
            name: self.name.clone(),
            budget: self.budget,
            budget_step: Some(self.budget_step).filter(|step| *step > 0.0),
            max_parallel: Some(self.max_parallel),
            nodes: self.nodes.iter().map(NodeSpec::to_file).collect(),
            notify: self.notify.clone(),
            started_by: self.started_by.clone(),
        }
    }
}

impl NodeSpec {
    /// The node as a file would say it.
    pub fn to_file(&self) -> NodeFile {
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        let mut file = NodeFile {
            id: self.id.clone(),
            label: self.label.clone(),
            needs: self.needs.clone(),
            timeout: self.timeout.map(duration),
            ..NodeFile::default()
        };
        match &self.work {
            NodeWork::Command { run, env, pool, cost } => {
                file.kind = KindName::Command;
                file.cost = *cost;
                file.run = Some(run.clone());
                file.pool = pool.clone();
                file.env = (!env.is_empty()).then(|| env.clone());
                file.retries = Some(self.retries).filter(|r| *r > 0);
            }
            NodeWork::Simulate { duration: d, cost, tokens_in, tokens_out, fail_rate, output } => {
                file.kind = KindName::Simulate;
                file.duration = Some(duration(*d));
                file.cost = Some(*cost);
                file.tokens_in = *tokens_in;
                file.tokens_out = *tokens_out;
                file.fail_rate = Some(*fail_rate).filter(|r| *r > 0.0);
                file.output = output.clone();
                file.retries = Some(self.retries).filter(|r| *r > 0);
            }
            NodeWork::Gate { title, prompt, options, on_timeout, rules, inputs } => {
                file.kind = KindName::Gate;
                file.title = Some(title.clone());
                file.prompt = Some(prompt.clone());
                file.options = Some(options.clone());
                file.on_timeout = on_timeout.map(|d| match d {
                    Decision::Approve => TimeoutDecision::Approve,
                    Decision::Reject | Decision::Modify => TimeoutDecision::Reject,
                });
                file.approvers = rules.approvers.clone();
                file.approvals = Some(rules.approvals).filter(|n| *n > 1);
                file.allow_self_approval = Some(false).filter(|_| !rules.allow_self_approval);
                file.remind_every = rules.remind_every.map(duration);
                file.escalate_after = rules.escalate_after.map(duration);
                file.escalate_to = (!rules.escalate_to.is_empty()).then(|| rules.escalate_to.clone());
                file.inputs = (!inputs.is_empty()).then(|| inputs.clone());
            }
        }
        file
    }

    pub fn kind(&self) -> NodeKind {
        match self.work {
            NodeWork::Command { .. } => NodeKind::Command,
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

    pub fn is_gate(&self) -> bool {
        matches!(self.work, NodeWork::Gate { .. })
    }
}

/// Why a spec cannot run. The message names the node and field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The text is not valid TOML / JSON, or a field has the wrong type or is unknown.
    #[error("{0}")]
    Syntax(String),
    #[error("the DAG has no nodes")]
    Empty,
    #[error("field \"{field}\": {problem}")]
    BadRunField { field: &'static str, problem: String },
    #[error("node #{index}: id must be 1 to 128 letters, digits, '-' or '_', not {id:?}")]
    BadId { index: usize, id: String },
    #[error("node {0:?}: id is used by more than one node")]
    DuplicateId(String),
    #[error("node {node:?}: field \"needs\": {missing:?} is not a node of this DAG")]
    UnknownNeed { node: String, missing: String },
    #[error("node {0:?}: field \"needs\": a node cannot need itself")]
    SelfNeed(String),
    #[error("the DAG has a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error("node {node:?}: field {field:?}: {problem}")]
    BadField { node: String, field: &'static str, problem: String },
    #[error("node {node:?}: field {field:?} does not apply to kind {kind:?}")]
    FieldNotForKind { node: String, field: &'static str, kind: &'static str },
    #[error("node {node:?}: kind {kind:?} needs field {field:?}")]
    MissingField { node: String, field: &'static str, kind: &'static str },
}

/// The formats a spec can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecFormat {
    Toml,
    Json,
}

impl SpecFormat {
    /// The format a file name suggests: `.json` is JSON, anything else TOML.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => SpecFormat::Json,
            Some(_) | None => SpecFormat::Toml,
        }
    }
}

impl DagSpec {
    /// The same spec with `env` added to every command node's environment (replacing a
    /// variable of the same name): to run it again with changed settings. Refused, changing
    /// nothing, for an invalid name or a spec without command nodes.
    pub fn with_env(mut self, env: &BTreeMap<String, String>) -> Result<Self, SpecError> {
        let bad = |problem: String| SpecError::BadRunField { field: "env", problem };
        if let Some(name) = env.keys().find(|name| !is_valid_env_name(name)) {
            return Err(bad(format!("{name:?} is not a valid variable name")));
        }
        let mut commands = 0;
        for node in &mut self.nodes {
            match &mut node.work {
                NodeWork::Command { env: node_env, .. } => {
                    node_env.extend(env.iter().map(|(name, value)| (name.clone(), value.clone())));
                    commands += 1;
                }
                NodeWork::Simulate { .. } | NodeWork::Gate { .. } => {}
            }
        }
        if commands == 0 && !env.is_empty() {
            return Err(bad("this spec has no command nodes, so an env changes nothing".into()));
        }
        Ok(self)
    }

    /// Reads and validates a spec.
    pub fn parse(text: &str, format: SpecFormat) -> Result<Self, SpecError> {
        let value: Value = match format {
            SpecFormat::Toml => toml::from_str(text).map_err(|e| SpecError::Syntax(format!("not valid TOML: {e}")))?,
            SpecFormat::Json => {
                serde_json::from_str(text).map_err(|e| SpecError::Syntax(format!("not valid JSON: {e}")))?
            }
        };
        Self::from_value(value)
    }

    /// Validates a spec given as a JSON value (the structure of [`SpecFile`]). Nodes are read one
    /// by one so an error can name the node it is in.
    pub fn from_value(value: Value) -> Result<Self, SpecError> {
        let Value::Object(mut top) = value else {
            return Err(SpecError::Syntax("a spec is a table (TOML) or an object (JSON)".into()));
        };
        let nodes = match top.remove("nodes") {
            Some(Value::Array(nodes)) => nodes,
            Some(_) => return Err(SpecError::Syntax("field \"nodes\" must be a list of nodes".into())),
            None => return Err(SpecError::Syntax("missing field \"nodes\"".into())),
        };
        top.insert("nodes".into(), Value::Array(Vec::new()));
        let mut file: SpecFile =
            serde_json::from_value(Value::Object(top)).map_err(|e| SpecError::Syntax(e.to_string()))?;
        for (index, node) in nodes.into_iter().enumerate() {
            let name = node
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{}", index + 1), |id| format!("{id:?}"));
            let node: NodeFile =
                serde_json::from_value(node).map_err(|e| SpecError::Syntax(format!("node {name}: {e}")))?;
            file.nodes.push(node);
        }
        file.validate()
    }
}

impl SpecFile {
    /// Checks every node against its kind and the graph as a whole.
    pub fn validate(&self) -> Result<DagSpec, SpecError> {
        if self.nodes.is_empty() {
            return Err(SpecError::Empty);
        }
        let budget = match self.budget {
            Some(b) if !b.is_finite() || b < 0.0 => {
                return Err(SpecError::BadRunField { field: "budget", problem: format!("must be 0 or more, not {b}") });
            }
            Some(b) if b > 0.0 => Some(b),
            Some(_) | None => None,
        };
        let budget_step = match self.budget_step {
            Some(step) if !step.is_finite() || step <= 0.0 => {
                return Err(SpecError::BadRunField {
                    field: "budget_step",
                    problem: format!("must be more than 0, not {step}"),
                });
            }
            Some(step) => step,
            None => budget.unwrap_or(0.0),
        };
        let max_parallel = match self.max_parallel {
            Some(0) => {
                return Err(SpecError::BadRunField { field: "max_parallel", problem: "must be at least 1".into() });
            }
            Some(n) => n,
            None => DEFAULT_MAX_PARALLEL,
        };
        for target in &self.notify {
            target.check().map_err(|problem| SpecError::BadRunField { field: "notify", problem })?;
        }
        let mut ids = HashSet::new();
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for (index, node) in self.nodes.iter().enumerate() {
            if !is_valid_id(&node.id) {
                return Err(SpecError::BadId { index: index + 1, id: node.id.clone() });
            }
            if !ids.insert(node.id.as_str()) {
                return Err(SpecError::DuplicateId(node.id.clone()));
            }
            nodes.push(node.to_spec()?);
        }
        check_graph(&nodes)?;
        Ok(DagSpec {
            name: self.name.clone(),
            budget,
            budget_step,
            max_parallel,
            nodes,
            notify: self.notify.clone(),
            started_by: self.started_by.clone(),
            history: super::forecast::CostHistory::default(),
        })
    }
}

impl NodeFile {
    /// Checks this node against its kind (not against the graph).
    pub fn to_spec(&self) -> Result<NodeSpec, SpecError> {
        let id = &self.id;
        let bad = |field: &'static str, problem: String| SpecError::BadField { node: id.clone(), field, problem };
        let kind = match self.kind {
            KindName::Command => "command",
            KindName::Simulate => "simulate",
            KindName::Gate => "gate",
        };
        let allowed: &[&str] = match self.kind {
            KindName::Command => &["timeout", "retries", "env", "run", "pool", "cost"],
            KindName::Simulate => {
                &["timeout", "retries", "duration", "cost", "tokens_in", "tokens_out", "fail_rate", "output"]
            }
            KindName::Gate => &[
                "timeout",
                "title",
                "prompt",
                "options",
                "on_timeout",
                "approvers",
                "approvals",
                "allow_self_approval",
                "remind_every",
                "escalate_after",
                "escalate_to",
                "inputs",
            ],
        };
        for field in self.present_kind_fields() {
            if !allowed.contains(&field) {
                return Err(SpecError::FieldNotForKind { node: id.clone(), field, kind });
            }
        }
        let missing = |field: &'static str| SpecError::MissingField { node: id.clone(), field, kind };
        let timeout = self.timeout.as_deref().map(|t| parse_duration(t).map_err(|p| bad("timeout", p))).transpose()?;
        let retries = self.retries.unwrap_or(0);
        if retries > MAX_RETRIES {
            return Err(bad("retries", format!("at most {MAX_RETRIES}, not {retries}")));
        }
        let work = match self.kind {
            KindName::Command => {
                let run = self.run.clone().filter(|r| !r.trim().is_empty()).ok_or_else(|| missing("run"))?;
                let env = self.env.clone().unwrap_or_default();
                if let Some(name) = env.keys().find(|k| !is_valid_env_name(k)) {
                    return Err(bad("env", format!("{name:?} is not a valid variable name")));
                }
                let pool = self.pool.clone();
                if let Some(pool) = &pool
                    && !is_valid_id(pool)
                {
                    return Err(bad("pool", format!("{pool:?}: use letters, digits, - and _")));
                }
                let cost = self.cost;
                if let Some(cost) = cost
                    && (!cost.is_finite() || cost < 0.0)
                {
                    return Err(bad("cost", format!("must be 0 or more, not {cost}")));
                }
                NodeWork::Command { run, env, pool, cost }
            }
            KindName::Simulate => {
                let duration = match self.duration.as_deref() {
                    Some(d) => parse_duration(d).map_err(|p| bad("duration", p))?,
                    None => Duration::ZERO,
                };
                let cost = self.cost.unwrap_or(0.0);
                if !cost.is_finite() || cost < 0.0 {
                    return Err(bad("cost", format!("must be 0 or more, not {cost}")));
                }
                let fail_rate = self.fail_rate.unwrap_or(0.0);
                if !(0.0..=1.0).contains(&fail_rate) {
                    return Err(bad("fail_rate", format!("must be between 0 and 1, not {fail_rate}")));
                }
                NodeWork::Simulate {
                    duration,
                    cost,
                    tokens_in: self.tokens_in,
                    tokens_out: self.tokens_out,
                    fail_rate,
                    output: self.output.clone(),
                }
            }
            KindName::Gate => {
                let options = self.options.clone().unwrap_or_else(|| vec![Decision::Approve, Decision::Reject]);
                if options.is_empty() {
                    return Err(bad("options", "a gate must offer at least one decision".into()));
                }
                if self.on_timeout.is_some() && timeout.is_none() {
                    return Err(bad("on_timeout", "needs a \"timeout\" to apply after".into()));
                }
                NodeWork::Gate {
                    title: self.title.clone().unwrap_or_else(|| format!("Continue after {id}?")),
                    prompt: self.prompt.clone().unwrap_or_default(),
                    options,
                    on_timeout: self.on_timeout.map(Decision::from),
                    rules: self.gate_rules()?,
                    inputs: self.gate_form()?,
                }
            }
        };
        Ok(NodeSpec { id: id.clone(), label: self.label.clone(), needs: self.needs.clone(), timeout, retries, work })
    }

    /// A gate's approvers, quorum, reminders and escalation, checked.
    fn gate_rules(&self) -> Result<GateRules, SpecError> {
        let bad = |field: &'static str, problem: String| SpecError::BadField { node: self.id.clone(), field, problem };
        let check_people = |field: &'static str, people: &[String]| {
            if people.is_empty() {
                return Err(bad(field, "is empty: name at least one person or group".into()));
            }
            match people.iter().find(|p| !is_valid_person(p)) {
                Some(person) => Err(bad(
                    field,
                    format!("{person:?} is neither a user name nor {GROUP_PREFIX}NAME (letters, digits, - _ . @)"),
                )),
                None => Ok(()),
            }
        };
        if let Some(approvers) = &self.approvers {
            check_people("approvers", approvers)?;
        }
        let approvals = self.approvals.unwrap_or(1);
        if !(1..=MAX_APPROVALS).contains(&approvals) {
            return Err(bad("approvals", format!("must be 1 to {MAX_APPROVALS}, not {approvals}")));
        }
        if let Some(approvers) = &self.approvers
            && approvers.iter().all(|p| !p.starts_with(GROUP_PREFIX))
            && (approvers.iter().collect::<HashSet<_>>().len() as u32) < approvals
        {
            return Err(bad(
                "approvals",
                format!("needs {approvals} distinct approvers, and \"approvers\" names fewer"),
            ));
        }
        let duration = |field: &'static str, text: &Option<String>| {
            text.as_deref()
                .map(|t| match parse_duration(t) {
                    Ok(d) if d.is_zero() => Err(bad(field, "must be longer than 0".into())),
                    Ok(d) => Ok(d),
                    Err(problem) => Err(bad(field, problem)),
                })
                .transpose()
        };
        let remind_every = duration("remind_every", &self.remind_every)?;
        let escalate_after = duration("escalate_after", &self.escalate_after)?;
        let escalate_to = self.escalate_to.clone().unwrap_or_default();
        match (escalate_after.is_some(), self.escalate_to.is_some()) {
            (true, false) => return Err(bad("escalate_after", "needs \"escalate_to\": who to tell".into())),
            (false, true) => return Err(bad("escalate_to", "needs \"escalate_after\": when to tell them".into())),
            (true, true) => check_people("escalate_to", &escalate_to)?,
            (false, false) => {}
        }
        Ok(GateRules {
            approvers: self.approvers.clone(),
            approvals,
            allow_self_approval: self.allow_self_approval.unwrap_or(true),
            remind_every,
            escalate_after,
            escalate_to,
        })
    }

    /// A gate's form, checked: names unique and fit for a key, each field's settings fit for its
    /// type.
    fn gate_form(&self) -> Result<Vec<InputField>, SpecError> {
        let fields = self.inputs.clone().unwrap_or_default();
        let bad = |problem: String| SpecError::BadField { node: self.id.clone(), field: "inputs", problem };
        if fields.len() > MAX_INPUTS {
            return Err(bad(format!("at most {MAX_INPUTS} fields")));
        }
        let mut names = HashSet::new();
        for field in &fields {
            let name = &field.name;
            let fits_key =
                !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !fits_key {
                return Err(bad(format!("{name:?}: a field name is 1 to 64 letters, digits or '_'")));
            }
            if !names.insert(name.as_str()) {
                return Err(bad(format!("{name:?} is there twice")));
            }
            let numeric = matches!(field.kind, InputKind::Integer | InputKind::Number);
            if (field.min.is_some() || field.max.is_some()) && !numeric {
                return Err(bad(format!("{name:?}: min and max are for integer and number fields")));
            }
            if let (Some(min), Some(max)) = (field.min, field.max)
                && min > max
            {
                return Err(bad(format!("{name:?}: min {min} is above max {max}")));
            }
            match (field.kind, &field.options) {
                (InputKind::Enum, Some(options)) if !options.is_empty() => {}
                (InputKind::Enum, _) => return Err(bad(format!("{name:?}: an enum field needs options"))),
                (_, Some(_)) => return Err(bad(format!("{name:?}: options are for enum fields"))),
                (_, None) => {}
            }
        }
        Ok(fields)
    }

    /// Names of the kind-specific fields this node sets.
    fn present_kind_fields(&self) -> Vec<&'static str> {
        let fields: [(&'static str, bool); 22] = [
            ("timeout", self.timeout.is_some()),
            ("retries", self.retries.is_some()),
            ("env", self.env.is_some()),
            ("run", self.run.is_some()),
            ("pool", self.pool.is_some()),
            ("duration", self.duration.is_some()),
            ("cost", self.cost.is_some()),
            ("tokens_in", self.tokens_in.is_some()),
            ("tokens_out", self.tokens_out.is_some()),
            ("fail_rate", self.fail_rate.is_some()),
            ("output", self.output.is_some()),
            ("title", self.title.is_some()),
            ("prompt", self.prompt.is_some()),
            ("options", self.options.is_some()),
            ("on_timeout", self.on_timeout.is_some()),
            ("approvers", self.approvers.is_some()),
            ("approvals", self.approvals.is_some()),
            ("allow_self_approval", self.allow_self_approval.is_some()),
            ("remind_every", self.remind_every.is_some()),
            ("escalate_after", self.escalate_after.is_some()),
            ("escalate_to", self.escalate_to.is_some()),
            ("inputs", self.inputs.is_some()),
        ];
        fields.into_iter().filter(|(_, present)| *present).map(|(name, _)| name).collect()
    }
}

/// Parses `"500ms"`, `"2s"`, `"1h 30m"` and the like.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"500ms\", \"2s\" or \"1h\" ({e})"))
}

pub(crate) fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A user name (as `dagstream user add` allows) or `group:NAME`.
fn is_valid_person(person: &str) -> bool {
    let name = person.strip_prefix(GROUP_PREFIX).unwrap_or(person);
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn is_valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Needs refer to nodes of the DAG, no node needs itself, and there is no cycle.
pub fn check_graph(nodes: &[NodeSpec]) -> Result<(), SpecError> {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let mut needs = Vec::with_capacity(nodes.len());
    for node in nodes {
        let mut node_needs = Vec::with_capacity(node.needs.len());
        for need in &node.needs {
            if need == &node.id {
                return Err(SpecError::SelfNeed(node.id.clone()));
            }
            let Some(&i) = index.get(need.as_str()) else {
                return Err(SpecError::UnknownNeed { node: node.id.clone(), missing: need.clone() });
            };
            node_needs.push(i);
        }
        needs.push(node_needs);
    }
    match find_cycle(&needs) {
        Some(cycle) => Err(SpecError::Cycle(cycle.into_iter().map(|i| nodes[i].id.clone()).collect())),
        None => Ok(()),
    }
}

/// A cycle as node indices along the edges (`need → node`), first repeated at the end; `None` if
/// the graph is acyclic. `needs[i]` are the indices node `i` depends on.
pub fn find_cycle(needs: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::Unvisited; needs.len()];
    for root in 0..needs.len() {
        if marks[root] != Mark::Unvisited {
            continue;
        }
        // Iterative depth-first search along needs: (node, next need to look at).
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
                        // The path runs against the edges; report it in edge order.
                        let mut cycle: Vec<usize> = path[start..].iter().rev().map(|&(n, _)| n).collect();
                        cycle.insert(0, need);
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

/// The JSON Schema of [`SpecFile`], as published in `schema/dag-spec.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(SpecFile);
    // A schema of plain structs always serializes.
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests;
