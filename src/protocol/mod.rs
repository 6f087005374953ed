//! The wire contract between the server, the dashboard and external tools: `docs/protocol.md`
//! describes it, `schema/protocol.schema.json` is its JSON Schema ([`json_schema`]).
//!
//! Compiled for both targets. [`ServerEvent`] and [`ClientEvent`] keep exactly the JSON shapes of
//! the seed's TypeScript types; everything dagstream adds (`seq`, `snapshot`, `run_state`,
//! `gate_resolved`, `node_log`, `gate_progress`, `gate_reminder`, `run_repaired`) is additive. Optional fields are omitted when absent, never
//! `null`. [`RunState`] is the one reducer that folds events into the state of a run.

mod state;
#[macro_use]
mod wire;
mod compare;
mod form;

pub use compare::{ComparedRun, NodeComparison, NodeFigures, OutputChange, RunComparison};
pub use form::{InputField, InputKind, MAX_TEXT, check_values, read_form, read_typed};
pub use state::{
    Applied, AttemptSpan, ErrorEntry, GateDecisionRecord, LOG_TAIL_LINES, LogLine, NodeView, Progress, RepairRecord,
    RunState, SPEND_POINTS, SpendPoint,
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A run's event sequence number: the first event of a run is 1, each next one is one more.
pub type Seq = u64;

/// Where a node is in its life. Terminal: `completed`, `failed`, `skipped`, `cancelled`.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Pending,
    Running,
    Waiting,
    Completed,
    Failed,
    Skipped,
    Cancelled,
}

wire_names!(NodeStatus {
    Pending => "pending",
    Running => "running",
    Waiting => "waiting",
    Completed => "completed",
    Failed => "failed",
    Skipped => "skipped",
    Cancelled => "cancelled",
});

impl NodeStatus {
    /// True once the node will not change again in this run.
    pub fn is_terminal(self) -> bool {
        match self {
            NodeStatus::Completed | NodeStatus::Failed | NodeStatus::Skipped | NodeStatus::Cancelled => true,
            NodeStatus::Pending | NodeStatus::Running | NodeStatus::Waiting => false,
        }
    }
}

/// Figures of one node; every field is optional and a `node_state` carries only what it knows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct NodeMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl NodeMetrics {
    /// Overwrites every field that `update` carries and keeps the others.
    pub fn merge(&mut self, update: &NodeMetrics) {
        fn take<T: Clone>(into: &mut Option<T>, from: &Option<T>) {
            if from.is_some() {
                into.clone_from(from);
            }
        }
        take(&mut self.duration_ms, &update.duration_ms);
        take(&mut self.cost, &update.cost);
        take(&mut self.tokens_in, &update.tokens_in);
        take(&mut self.tokens_out, &update.tokens_out);
        take(&mut self.attempt, &update.attempt);
        take(&mut self.started_at, &update.started_at);
        take(&mut self.finished_at, &update.finished_at);
    }
}

/// What a node does; decides how the engine runs it and how the dashboard draws it.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Waits for a duration and reports a cost: demos, tests, modelled LLM calls.
    Simulate,
    /// Runs a shell command.
    Command,
    /// Waits for a human decision.
    Gate,
    /// Work an external engine does (runs it drives rather than dagstream).
    Task,
}

wire_names!(NodeKind {
    Simulate => "simulate",
    Command => "command",
    Gate => "gate",
    Task => "task",
});

/// A node as the graph knows it: identity and presentation, no run-time state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct GraphNode {
    pub id: String,
    pub label: String,
    pub kind: NodeKind,
}

/// A change to the shape of the DAG while it runs. Read by `wire.rs` (see [`ServerEventBody`]).
#[derive(Serialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DagMutation {
    /// A new node that depends on every node in `after`.
    AddNode {
        node: GraphNode,
        after: Vec<String>,
        /// Extension: the node as a spec would say it, so a restarted server can run it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spec: Option<Value>,
        /// Extension: true for the gate the engine adds when spend reaches the budget.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        budget_gate: bool,
    },
    AddEdge {
        from: String,
        to: String,
    },
    RemoveNode {
        node_id: String,
    },
    UpdateNode {
        node_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
}

/// A human decision on a gate.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
    Modify,
}

wire_names!(Decision {
    Approve => "approve",
    Reject => "reject",
    Modify => "modify",
});

/// How someone repairs a run ([`ClientEvent::RetryNode`], [`ClientEvent::RerunNode`]).
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RepairAction {
    /// A failed node runs again; what its failure skipped runs after it.
    Retry,
    /// A finished node and everything downstream of it run again.
    Rerun,
}

wire_names!(RepairAction {
    Retry => "retry",
    Rerun => "rerun",
});

/// What a gate card shows while the gate waits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct GatePresentation {
    pub title: String,
    pub prompt: String,
    pub options: Vec<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_so_far: Option<f64>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_at: Option<String>,
    /// Extension: who may decide (names); absent, everyone whose role decides gates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<String>>,
    /// Extension: how many distinct people must approve (any reject rejects); absent, one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    /// Extension: who may not approve: the run's starter, when the spec says
    /// `allow_self_approval = false`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub may_not_approve: Vec<String>,
    /// Extension: the form the decision comes with (the spec's `inputs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputField>,
    /// Extension: what approving will cost, as expected when the gate started waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<Forecast>,
}

/// What approving a gate is expected to cost (`presentation.forecast`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct Forecast {
    /// What runs after the gate (every unfinished node that waits for it).
    pub after_gate: CostEstimate,
    /// Every unfinished node of the run.
    pub rest_of_run: CostEstimate,
    /// Past runs of the same spec the figures draw on (0: the spec's cost hints only).
    pub based_on_runs: u32,
    /// Unfinished nodes with no figure at all (no hint, never ran before): not counted.
    pub unpriced: u32,
    /// A budget gate: what approving adds to the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approving_adds: Option<f64>,
}

/// An expected cost: the mean, and the 90th percentile (the sum of each node's, for a group).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct CostEstimate {
    pub mean: f64,
    pub p90: f64,
}

impl Forecast {
    /// The forecast in words, as every gate card shows it.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "Forecast: after this gate ${:.2} (p90 ${:.2}); rest of the run ${:.2} (p90 ${:.2})",
            self.after_gate.mean, self.after_gate.p90, self.rest_of_run.mean, self.rest_of_run.p90
        );
        text.push_str(&match self.based_on_runs {
            0 => ", from the spec's cost hints".to_owned(),
            1 => ", from 1 past run".to_owned(),
            n => format!(", from {n} past runs"),
        });
        if self.unpriced > 0 {
            text.push_str(&format!(" ({} node(s) without a figure)", self.unpriced));
        }
        if let Some(adds) = self.approving_adds {
            text.push_str(&format!(". Approving adds ${adds:.2} to the budget"));
        }
        text
    }
}

impl GatePresentation {
    /// How many approvals the gate needs.
    pub fn approvals_needed(&self) -> u32 {
        self.approvals.unwrap_or(1).max(1)
    }

    /// Whether this gate waits for `person`'s approval: their role decides gates, they are
    /// among its approvers (when it names them), they may approve it (not its starter with
    /// self-approval off), and they have not approved it already.
    pub fn waits_for(&self, person: &SignedIn, approved_by: &[String]) -> bool {
        person.role.allows(Role::Approver)
            && self.approvers.as_ref().is_none_or(|approvers| approvers.contains(&person.name))
            && !self.may_not_approve.contains(&person.name)
            && !approved_by.contains(&person.name)
    }
}

/// A gate that waits for the signed-in person, as their inbox (`/inbox`) lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct InboxGate {
    pub dag_id: String,
    /// The run's name.
    pub run_name: String,
    pub node_id: String,
    pub label: String,
    pub presentation: GatePresentation,
    /// Who approved it so far, when it needs several approvals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
    /// RFC 3339: when it started waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<String>,
    /// The run's spend.
    pub cost: Cost,
}

/// A message of the inbox feed (`GET /api/inbox/stream`, WebSocket): the whole inbox when a
/// client connects (or fell behind), then, for each run whose gates changed, that run's gates
/// that wait for this person (replacing what the client had of that run).
#[derive(Serialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboxFeedEvent {
    Inbox { gates: Vec<InboxGate> },
    RunGates { dag_id: String, gates: Vec<InboxGate> },
}

/// The state of a run as a whole.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    Running,
    Paused,
    Cancelling,
    Cancelled,
    Completed,
    Failed,
}

wire_names!(RunPhase {
    Running => "running",
    Paused => "paused",
    Cancelling => "cancelling",
    Cancelled => "cancelled",
    Completed => "completed",
    Failed => "failed",
});

impl RunPhase {
    /// True once the run will not change again.
    pub fn is_terminal(self) -> bool {
        match self {
            RunPhase::Cancelled | RunPhase::Completed | RunPhase::Failed => true,
            RunPhase::Running | RunPhase::Paused | RunPhase::Cancelling => false,
        }
    }
}

/// Which output stream a `node_log` line came from.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

wire_names!(LogStream {
    Stdout => "stdout",
    Stderr => "stderr",
});

/// Spend of a run; `remaining` is `budget - spent` and may go below zero.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct Cost {
    pub spent: f64,
    pub budget: f64,
    pub remaining: f64,
}

/// One message from the server: the run's sequence number and what happened.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct ServerEvent {
    /// Position in the run's event log. A private reply to one client (an `error` about its own
    /// message) carries the `seq` of the last event that client was sent, so it never looks like
    /// a gap and is not folded into the run's state.
    pub seq: Seq,
    #[serde(flatten)]
    pub body: ServerEventBody,
}

/// What a [`ServerEvent`] says. Seed events first, then extensions.
///
/// Serialized by serde's derive, read by `wire.rs`: a new variant or field needs a line there
/// too, and a literal in the protocol tests (which read every literal back).
#[derive(Serialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
// On its own (without `seq`) it is what an external engine sends.
#[cfg_attr(feature = "ssr", schemars(rename = "EngineEvent"))]
pub enum ServerEventBody {
    NodeState {
        node_id: String,
        status: NodeStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metrics: Option<NodeMetrics>,
    },
    EdgeActive {
        from: String,
        to: String,
    },
    DagMutated {
        mutation: DagMutation,
    },
    CostUpdate {
        spent: f64,
        budget: f64,
        remaining: f64,
    },
    /// Sent once each time the run reaches a terminal state: once per run, unless a repair
    /// (`run_repaired`) reopened it.
    ExecutionComplete {
        results: Map<String, Value>,
    },
    HumanGateWaiting {
        node_id: String,
        presentation: GatePresentation,
    },
    /// Without `node_id` it concerns the run, or the client's own last message.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node_id: Option<String>,
        message: String,
    },
    /// Extension: the whole state of the run as of `seq`.
    Snapshot {
        run: Box<RunState>,
    },
    /// Extension: the run as a whole changed state.
    #[serde(rename = "run_state")]
    RunStateChanged {
        state: RunPhase,
    },
    /// Extension: a gate got its decision (from a person or its timeout).
    GateResolved {
        node_id: String,
        decision: Decision,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        feedback: Option<String>,
        decided_by: String,
        /// RFC 3339.
        decided_at: String,
        /// Extension: the values of the gate's form sent with the decision.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inputs: Option<Map<String, Value>>,
    },
    /// Extension: one line of a node's output.
    NodeLog {
        node_id: String,
        stream: LogStream,
        line: String,
    },
    /// Extension: a gate still waits after its `remind_every` (a reminder), or its
    /// `escalate_after` (an escalation: `escalated_to` are told, and may decide from now on).
    GateReminder {
        node_id: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        escalated_to: Vec<String>,
    },
    /// Extension: a gate that needs several approvals got one (not yet the decision, which
    /// `gate_resolved` still brings, exactly once).
    GateProgress {
        node_id: String,
        /// Everyone who approved in this wait so far, in order.
        approved_by: Vec<String>,
        /// Approvals still needed.
        remaining: u32,
    },
    /// Extension: someone repaired the run from `node_id`: the nodes in `reset` (that node and
    /// everything downstream of it) start over, each followed by its `node_state: pending`;
    /// every other node keeps its output. A run that had ended runs again (a `run_state`
    /// follows) and ends with a new `execution_complete`.
    RunRepaired {
        action: RepairAction,
        node_id: String,
        /// The nodes that run again, in node order.
        reset: Vec<String>,
        repaired_by: String,
        /// RFC 3339.
        repaired_at: String,
    },
}

/// One message from a client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent {
    HumanDecision {
        node_id: String,
        decision: Decision,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        feedback: Option<String>,
        /// Extension: the values of the gate's form (its `inputs`), by field name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inputs: Option<Map<String, Value>>,
    },
    PauseExecution,
    ResumeExecution,
    CancelExecution,
    /// Extension: run a failed node again; the run goes on from there (a failed run too).
    RetryNode {
        node_id: String,
    },
    /// Extension: run a finished node and everything downstream of it again; upstream outputs
    /// are kept.
    RerunNode {
        node_id: String,
    },
}

impl ClientEvent {
    /// The repair this event asks for, if it is one: what, and from which node.
    pub fn repair(&self) -> Option<(RepairAction, &str)> {
        match self {
            ClientEvent::RetryNode { node_id } => Some((RepairAction::Retry, node_id)),
            ClientEvent::RerunNode { node_id } => Some((RepairAction::Rerun, node_id)),
            ClientEvent::HumanDecision { .. }
            | ClientEvent::PauseExecution
            | ClientEvent::ResumeExecution
            | ClientEvent::CancelExecution => None,
        }
    }
}

/// Close code the server uses for a subscriber that fell too far behind; reconnect and resync.
pub const CLOSE_CODE_TOO_SLOW: u16 = 4008;

/// A message of the run list feed (`GET /api/runs/stream`, WebSocket): the whole list when a
/// client connects (or fell behind), then each run whose line changed.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunsFeedEvent {
    Runs { runs: Vec<RunSummary> },
    Run { run: RunSummary },
}

/// One line of the run list (`GET /api/dags`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct RunSummary {
    pub dag_id: String,
    pub name: String,
    pub state: RunPhase,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339: when the run ended (its last node finished or gate was decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    pub nodes_done: usize,
    pub nodes_total: usize,
    pub gates_waiting: usize,
    pub cost: Cost,
}

/// Who a gate's timeout decides as: the `decided_by` of the `gate_resolved` it sends.
pub const TIMEOUT_DECIDER: &str = "timeout";

/// The current time as RFC 3339 with milliseconds, as every timestamp on the wire.
#[cfg(feature = "ssr")]
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The JSON Schema (2020-12) of every message on the wire, as published in
/// `schema/protocol.schema.json` and described in `docs/protocol.md`: `ServerEvent` (the
/// dashboard stream), `ClientEvent` (what dashboards send), `EngineEvent` (what an external
/// engine sends: a server event without `seq`), `RunsFeedEvent` (the run list feed) and
/// `InboxFeedEvent` (the inbox feed).
#[cfg(feature = "ssr")]
pub fn json_schema() -> String {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let roots = [
        generator.subschema_for::<ServerEvent>(),
        generator.subschema_for::<ClientEvent>(),
        generator.subschema_for::<ServerEventBody>(),
        generator.subschema_for::<RunsFeedEvent>(),
        generator.subschema_for::<InboxFeedEvent>(),
    ];
    let definitions = generator.take_definitions(true);
    let roots: Vec<Value> = roots.into_iter().map(Value::from).collect();
    let text = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "dagstream wire protocol",
        "description": "Every JSON message of dagstream's WebSockets; see docs/protocol.md.",
        "anyOf": roots,
        "$defs": definitions,
    });
    // A tree of JSON values always serializes.
    serde_json::to_string_pretty(&text).unwrap_or_default() + "\n"
}

/// One notification of a run, as `GET /api/dags/{dag_id}/notifications` lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NotificationRecord {
    /// What the receiver deduplicates on.
    pub id: String,
    /// The event that raised it.
    pub seq: i64,
    pub topic: String,
    /// Who was told.
    pub url: String,
    pub format: String,
    /// RFC 3339.
    pub created_at: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    pub attempts: Vec<DeliveryAttempt>,
}

/// One try at delivering a notification, and the answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeliveryAttempt {
    pub attempt: i64,
    /// RFC 3339.
    pub at: String,
    /// The receiver's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests;

/// What a signed-in user may do.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Watch runs.
    Viewer,
    /// Also decide gates, pause, resume and cancel runs, retry and re-run nodes.
    Approver,
    /// Also start runs and submit specs (which may run commands), and drive external runs.
    Admin,
    /// A program outside dagstream: watch, create external runs and drive them.
    Engine,
}

wire_names!(Role {
    Viewer => "viewer",
    Approver => "approver",
    Admin => "admin",
    Engine => "engine",
});

impl Role {
    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Approver => matches!(needed, Role::Viewer | Role::Approver),
            Role::Engine => matches!(needed, Role::Viewer | Role::Engine),
            Role::Viewer => needed == Role::Viewer,
        }
    }

    /// The role a client event needs.
    pub fn needed_for(event: &ClientEvent) -> Role {
        match event {
            ClientEvent::HumanDecision { .. }
            | ClientEvent::PauseExecution
            | ClientEvent::ResumeExecution
            | ClientEvent::CancelExecution
            | ClientEvent::RetryNode { .. }
            | ClientEvent::RerunNode { .. } => Role::Approver,
        }
    }
}

/// The signed-in user, as pages and the service see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
pub struct SignedIn {
    pub name: String,
    pub role: Role,
}

impl SignedIn {
    /// `Err` with a message fit for the user when their role is below `needed` (`to` says
    /// what they tried).
    pub fn require(&self, needed: Role, to: &str) -> Result<(), String> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            Err(format!(
                "forbidden: {} is a {} and may not {to} (needs {})",
                self.name,
                self.role.as_str(),
                needed.as_str()
            ))
        }
    }
}
