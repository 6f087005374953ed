//! Reading the tagged messages ([`ServerEvent`], [`ServerEventBody`], [`DagMutation`],
//! [`RunsFeedEvent`]) without serde's buffering, and the unit enums by name ([`wire_names!`]).
//!
//! Serde reads an internally tagged enum (`"type"` among the other fields) by copying the whole
//! object into an in-memory tree first and reading the variant from that tree; `ServerEvent`'s
//! flattened `seq` adds one more pass. That costs time on a large snapshot, and in the wasm it
//! is a second copy of every payload type's deserializer (one for JSON text, one for the tree).
//! Here each known field is kept as raw JSON text, the tag picks the variant, and only that
//! variant's fields are read, with the same `serde_json` reader as everything else.
//!
//! The rules are serde's: the tag may come anywhere, unknown fields and the fields of other
//! variants are ignored (whatever their type), a missing required field or an unknown tag is an
//! error, `null` in an optional field means absent. Raw fields need `serde_json`'s own reader:
//! these types are read from JSON text (`from_str`, `from_slice`), not from a `Value`.

/// Gives a unit enum the one list of its wire names: `as_str` (the snake_case name, also used as
/// a CSS class and shown on the page), `ALL`, and a `Deserialize` that reads a string and looks
/// it up. Serde's derive reads a unit enum through its general enum access (which also takes
/// `{"name": null}`); that is about 1.3 KB of wasm per enum, this a few hundred bytes. The enum
/// keeps serde's derived `Serialize` with `rename_all = "snake_case"`; a test checks that both
/// name every value alike.
macro_rules! wire_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The snake_case name used on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// The value of a snake_case name, if it is one.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = String::deserialize(deserializer)?;
                match name.as_str() {
                    $($name => Ok($ty::$variant),)+
                    other => Err(serde::de::Error::unknown_variant(other, &[$($name),+])),
                }
            }
        }
    };
}

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde_json::value::RawValue;

use super::{DagMutation, InboxFeedEvent, RunsFeedEvent, ServerEvent, ServerEventBody};

/// A field's raw JSON text, if the message has the field (and it is not `null`).
type Raw = Option<Box<RawValue>>;

/// Reads a required field.
fn required<T: DeserializeOwned, E: de::Error>(raw: Raw, name: &'static str) -> Result<T, E> {
    let raw = raw.ok_or_else(|| E::missing_field(name))?;
    read(&raw, name)
}

/// Reads an optional field (absent or `null`: `None`).
fn optional<T: DeserializeOwned, E: de::Error>(raw: Raw, name: &'static str) -> Result<Option<T>, E> {
    raw.map(|raw| read(&raw, name)).transpose()
}

fn read<T: DeserializeOwned, E: de::Error>(raw: &RawValue, name: &'static str) -> Result<T, E> {
    serde_json::from_str(raw.get()).map_err(|error| E::custom(field_error(name, &error)))
}

/// What went wrong with field `name`: `serde_json`'s message without its position, which would
/// count from the start of the field rather than of the message. Out of line, so the wasm has one
/// copy rather than one per field type.
#[cold]
#[inline(never)]
fn field_error(name: &str, error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    format!("field `{name}`: {}", text.strip_suffix(&suffix).unwrap_or(&text))
}

/// Every field any server event has; each variant reads its own.
#[derive(Deserialize)]
struct EventFields {
    #[serde(rename = "type")]
    kind: Option<String>,
    seq: Raw,
    node_id: Raw,
    status: Raw,
    output: Raw,
    metrics: Raw,
    from: Raw,
    to: Raw,
    mutation: Raw,
    spent: Raw,
    budget: Raw,
    remaining: Raw,
    results: Raw,
    presentation: Raw,
    message: Raw,
    run: Raw,
    state: Raw,
    decision: Raw,
    feedback: Raw,
    decided_by: Raw,
    decided_at: Raw,
    stream: Raw,
    line: Raw,
    approved_by: Raw,
    escalated_to: Raw,
    inputs: Raw,
    action: Raw,
    reset: Raw,
    repaired_by: Raw,
    repaired_at: Raw,
}

const EVENT_TYPES: &[&str] = &[
    "node_state",
    "edge_active",
    "dag_mutated",
    "cost_update",
    "execution_complete",
    "human_gate_waiting",
    "error",
    "snapshot",
    "run_state",
    "gate_resolved",
    "node_log",
    "gate_progress",
    "gate_reminder",
    "run_repaired",
];

impl EventFields {
    fn into_body<E: de::Error>(self) -> Result<ServerEventBody, E> {
        let kind = self.kind.ok_or_else(|| E::missing_field("type"))?;
        Ok(match kind.as_str() {
            "node_state" => ServerEventBody::NodeState {
                node_id: required(self.node_id, "node_id")?,
                status: required(self.status, "status")?,
                output: optional(self.output, "output")?,
                metrics: optional(self.metrics, "metrics")?,
            },
            "edge_active" => {
                ServerEventBody::EdgeActive { from: required(self.from, "from")?, to: required(self.to, "to")? }
            }
            "dag_mutated" => ServerEventBody::DagMutated { mutation: required(self.mutation, "mutation")? },
            "cost_update" => ServerEventBody::CostUpdate {
                spent: required(self.spent, "spent")?,
                budget: required(self.budget, "budget")?,
                remaining: required(self.remaining, "remaining")?,
            },
            "execution_complete" => ServerEventBody::ExecutionComplete { results: required(self.results, "results")? },
            "human_gate_waiting" => ServerEventBody::HumanGateWaiting {
                node_id: required(self.node_id, "node_id")?,
                presentation: required(self.presentation, "presentation")?,
            },
            "error" => ServerEventBody::Error {
                node_id: optional(self.node_id, "node_id")?,
                message: required(self.message, "message")?,
            },
            "snapshot" => ServerEventBody::Snapshot { run: required(self.run, "run")? },
            "run_state" => ServerEventBody::RunStateChanged { state: required(self.state, "state")? },
            "gate_resolved" => ServerEventBody::GateResolved {
                node_id: required(self.node_id, "node_id")?,
                decision: required(self.decision, "decision")?,
                feedback: optional(self.feedback, "feedback")?,
                decided_by: required(self.decided_by, "decided_by")?,
                decided_at: required(self.decided_at, "decided_at")?,
                inputs: optional(self.inputs, "inputs")?,
            },
            "node_log" => ServerEventBody::NodeLog {
                node_id: required(self.node_id, "node_id")?,
                stream: required(self.stream, "stream")?,
                line: required(self.line, "line")?,
            },
            "gate_progress" => ServerEventBody::GateProgress {
                node_id: required(self.node_id, "node_id")?,
                approved_by: required(self.approved_by, "approved_by")?,
                remaining: required(self.remaining, "remaining")?,
            },
            "gate_reminder" => ServerEventBody::GateReminder {
                node_id: required(self.node_id, "node_id")?,
                escalated_to: optional(self.escalated_to, "escalated_to")?.unwrap_or_default(),
            },
            "run_repaired" => ServerEventBody::RunRepaired {
                action: required(self.action, "action")?,
                node_id: required(self.node_id, "node_id")?,
                reset: required(self.reset, "reset")?,
                repaired_by: required(self.repaired_by, "repaired_by")?,
                repaired_at: required(self.repaired_at, "repaired_at")?,
            },
            other => return Err(E::unknown_variant(other, EVENT_TYPES)),
        })
    }
}

impl<'de> Deserialize<'de> for ServerEventBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        EventFields::deserialize(deserializer)?.into_body()
    }
}

impl<'de> Deserialize<'de> for ServerEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = EventFields::deserialize(deserializer)?;
        let seq = required(fields.seq.take(), "seq")?;
        Ok(ServerEvent { seq, body: fields.into_body()? })
    }
}

/// Every field any mutation has.
#[derive(Deserialize)]
struct MutationFields {
    op: Option<String>,
    node: Raw,
    after: Raw,
    spec: Raw,
    budget_gate: Raw,
    from: Raw,
    to: Raw,
    node_id: Raw,
    label: Raw,
}

impl<'de> Deserialize<'de> for DagMutation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields = MutationFields::deserialize(deserializer)?;
        let op = fields.op.ok_or_else(|| de::Error::missing_field("op"))?;
        Ok(match op.as_str() {
            "add_node" => DagMutation::AddNode {
                node: required(fields.node, "node")?,
                after: required(fields.after, "after")?,
                spec: optional(fields.spec, "spec")?,
                budget_gate: optional(fields.budget_gate, "budget_gate")?.unwrap_or(false),
            },
            "add_edge" => DagMutation::AddEdge { from: required(fields.from, "from")?, to: required(fields.to, "to")? },
            "remove_node" => DagMutation::RemoveNode { node_id: required(fields.node_id, "node_id")? },
            "update_node" => DagMutation::UpdateNode {
                node_id: required(fields.node_id, "node_id")?,
                label: optional(fields.label, "label")?,
            },
            other => {
                return Err(de::Error::unknown_variant(other, &["add_node", "add_edge", "remove_node", "update_node"]));
            }
        })
    }
}

/// Every field a run list message has.
#[derive(Deserialize)]
struct FeedFields {
    #[serde(rename = "type")]
    kind: Option<String>,
    runs: Raw,
    run: Raw,
}

impl<'de> Deserialize<'de> for RunsFeedEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields = FeedFields::deserialize(deserializer)?;
        let kind = fields.kind.ok_or_else(|| de::Error::missing_field("type"))?;
        Ok(match kind.as_str() {
            "runs" => RunsFeedEvent::Runs { runs: required(fields.runs, "runs")? },
            "run" => RunsFeedEvent::Run { run: required(fields.run, "run")? },
            other => return Err(de::Error::unknown_variant(other, &["runs", "run"])),
        })
    }
}

/// Every field an inbox message has.
#[derive(Deserialize)]
struct InboxFields {
    #[serde(rename = "type")]
    kind: Option<String>,
    gates: Raw,
    dag_id: Raw,
}

impl<'de> Deserialize<'de> for InboxFeedEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields = InboxFields::deserialize(deserializer)?;
        let kind = fields.kind.ok_or_else(|| de::Error::missing_field("type"))?;
        Ok(match kind.as_str() {
            "inbox" => InboxFeedEvent::Inbox { gates: required(fields.gates, "gates")? },
            "run_gates" => InboxFeedEvent::RunGates {
                dag_id: required(fields.dag_id, "dag_id")?,
                gates: required(fields.gates, "gates")?,
            },
            other => return Err(de::Error::unknown_variant(other, &["inbox", "run_gates"])),
        })
    }
}
