//! Wire-shape tests (every literal of `docs/protocol.md`, read back and checked against the
//! published JSON Schema) and table tests of the reducer.

use serde_json::{Value, json};

use super::*;

/// Every server event literal of `docs/protocol.md`, plus the optional fields it names.
const SERVER_LITERALS: &[&str] = &[
    r#"{"type":"node_state","seq":7,"node_id":"draft","status":"running","output":{},"metrics":{"duration_ms":120,"cost":0.02}}"#,
    r#"{"type":"node_state","seq":7,"node_id":"draft","status":"completed","metrics":{"duration_ms":120,"cost":0.02,"tokens_in":10,"tokens_out":5,"attempt":2,"started_at":"2026-11-26T10:00:00Z","finished_at":"2026-11-26T10:00:01Z"}}"#,
    r#"{"type":"node_state","seq":7,"node_id":"draft","status":"pending"}"#,
    r#"{"type":"edge_active","seq":8,"from":"research","to":"draft"}"#,
    r#"{"type":"dag_mutated","seq":9,"mutation":{"op":"add_node","node":{"id":"extra","label":"Extra","kind":"simulate"},"after":["draft"]}}"#,
    r#"{"type":"dag_mutated","seq":9,"mutation":{"op":"add_node","node":{"id":"budget_1","label":"Budget reached","kind":"gate"},"after":[],"spec":{"id":"budget_1","kind":"gate"},"budget_gate":true}}"#,
    r#"{"type":"dag_mutated","seq":9,"mutation":{"op":"add_edge","from":"a","to":"b"}}"#,
    r#"{"type":"dag_mutated","seq":9,"mutation":{"op":"remove_node","node_id":"a"}}"#,
    r#"{"type":"dag_mutated","seq":9,"mutation":{"op":"update_node","node_id":"a","label":"A"}}"#,
    r#"{"type":"dag_mutated","seq":9,"mutation":{"op":"update_node","node_id":"a"}}"#,
    r#"{"type":"cost_update","seq":10,"spent":1.25,"budget":10.0,"remaining":8.75}"#,
    r#"{"type":"execution_complete","seq":30,"results":{"draft":{"text":"..."}}}"#,
    r#"{"type":"human_gate_waiting","seq":12,"node_id":"review","presentation":{"title":"Publish?","prompt":"...","options":["approve","reject","modify"]}}"#,
    r#"{"type":"human_gate_waiting","seq":12,"node_id":"review","presentation":{"title":"Publish?","prompt":"...","options":["approve"],"context":{"draft":"x"},"cost_so_far":1.5,"timeout_at":"2026-11-26T11:00:00Z"}}"#,
    r#"{"type":"error","seq":13,"node_id":"draft","message":"exit status 1"}"#,
    r#"{"type":"error","seq":13,"message":"gate review is not waiting"}"#,
    r#"{"type":"run_state","seq":14,"state":"paused"}"#,
    r#"{"type":"run_state","seq":14,"state":"cancelling"}"#,
    r#"{"type":"gate_resolved","seq":15,"node_id":"review","decision":"approve","feedback":"ok","decided_by":"alice","decided_at":"2026-11-26T10:00:00Z"}"#,
    r#"{"type":"node_log","seq":16,"node_id":"build","stream":"stdout","line":"compiling..."}"#,
    r#"{"type":"human_gate_waiting","seq":12,"node_id":"deploy","presentation":{"title":"Deploy?","prompt":"...","options":["approve","reject"],"approvers":["ana","bo","cy"],"approvals":2,"may_not_approve":["cy"]}}"#,
    r#"{"type":"gate_progress","seq":17,"node_id":"deploy","approved_by":["ana"],"remaining":1}"#,
    r#"{"type":"gate_reminder","seq":19,"node_id":"deploy"}"#,
    r#"{"type":"human_gate_waiting","seq":12,"node_id":"go","presentation":{"title":"Spend on the crawl?","prompt":"","options":["approve","reject"],"cost_so_far":1.25,"forecast":{"after_gate":{"mean":0.75,"p90":1.5},"rest_of_run":{"mean":0.75,"p90":1.5},"based_on_runs":2,"unpriced":0}}}"#,
    r#"{"type":"gate_reminder","seq":20,"node_id":"deploy","escalated_to":["dan"]}"#,
    r#"{"type":"human_gate_waiting","seq":21,"node_id":"shape","presentation":{"title":"Shape it","prompt":"","options":["approve","reject"],"inputs":[{"name":"tone","type":"enum","options":["short","long"]},{"name":"max_rows","type":"integer","min":1.0,"max":1000.0},{"name":"note","type":"text","required":false}]}}"#,
    r#"{"type":"gate_resolved","seq":22,"node_id":"shape","decision":"approve","decided_by":"ana","decided_at":"2026-11-26T10:06:00Z","inputs":{"tone":"short","max_rows":250}}"#,
    r#"{"type":"gate_resolved","seq":18,"node_id":"deploy","decision":"approve","decided_by":"ana, bo","decided_at":"2026-11-26T10:05:00Z"}"#,
    r#"{"type":"run_repaired","seq":31,"action":"retry","node_id":"build","reset":["build","test"],"repaired_by":"ana","repaired_at":"2026-11-26T10:10:00Z"}"#,
    r#"{"type":"run_repaired","seq":31,"action":"rerun","node_id":"draft","reset":["draft"],"repaired_by":"ana","repaired_at":"2026-11-26T10:10:00Z"}"#,
];

const CLIENT_LITERALS: &[&str] = &[
    r#"{"type":"human_decision","node_id":"review","decision":"approve","feedback":"looks good"}"#,
    r#"{"type":"human_decision","node_id":"review","decision":"reject"}"#,
    r#"{"type":"human_decision","node_id":"shape","decision":"approve","inputs":{"tone":"short","max_rows":250}}"#,
    r#"{"type":"pause_execution"}"#,
    r#"{"type":"resume_execution"}"#,
    r#"{"type":"cancel_execution"}"#,
    r#"{"type":"retry_node","node_id":"build"}"#,
    r#"{"type":"rerun_node","node_id":"draft"}"#,
];

fn assert_round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(literal: &str) {
    let expected: Value = serde_json::from_str(literal).expect("test literal is JSON");
    let parsed: T = serde_json::from_str(literal).unwrap_or_else(|e| panic!("{literal}: {e}"));
    let back = serde_json::to_value(&parsed).expect("serializes");
    assert_eq!(back, expected, "round trip of {literal}");
}

#[test]
fn every_server_literal_round_trips_to_the_same_json() {
    for literal in SERVER_LITERALS {
        assert_round_trip::<ServerEvent>(literal);
    }
}

#[test]
fn every_client_literal_round_trips_to_the_same_json() {
    for literal in CLIENT_LITERALS {
        assert_round_trip::<ClientEvent>(literal);
    }
}

#[test]
fn snapshot_round_trips_with_the_whole_run() {
    let mut run = demo_state();
    run.apply(&event(
        1,
        ServerEventBody::NodeState {
            node_id: "a".into(),
            status: NodeStatus::Running,
            output: None,
            metrics: Some(NodeMetrics { attempt: Some(1), ..NodeMetrics::default() }),
        },
    ));
    let snapshot = ServerEvent { seq: 1, body: ServerEventBody::Snapshot { run: Box::new(run) } };
    let text = serde_json::to_string(&snapshot).expect("serializes");
    assert_round_trip::<ServerEvent>(&text);
    assert!(!text.contains("null"), "absent fields are omitted, never null: {text}");
}

#[test]
fn absent_optionals_are_omitted_not_null() {
    let event = ServerEvent {
        seq: 3,
        body: ServerEventBody::NodeState {
            node_id: "a".into(),
            status: NodeStatus::Completed,
            output: None,
            metrics: Some(NodeMetrics { cost: Some(0.5), ..NodeMetrics::default() }),
        },
    };
    assert_eq!(
        serde_json::to_value(&event).expect("serializes"),
        json!({"type":"node_state","seq":3,"node_id":"a","status":"completed","metrics":{"cost":0.5}})
    );
}

#[test]
fn unknown_types_and_malformed_json_are_errors_not_panics() {
    let bad_server = [
        r#"{"type":"node_exploded","seq":1}"#,
        r#"{"seq":1,"node_id":"a"}"#,
        r#"{"type":"node_state","node_id":"a","status":"running"}"#,
        r#"{"type":"node_state","seq":1,"node_id":"a","status":"sleeping"}"#,
        r#"{"type":"cost_update","seq":1,"spent":"lots","budget":1,"remaining":1}"#,
        r#"{"type":"edge_active","seq":1,"from":"a""#,
        "",
        "[]",
        "null",
    ];
    for text in bad_server {
        assert!(serde_json::from_str::<ServerEvent>(text).is_err(), "accepted {text:?}");
    }
    let bad_client = [
        r#"{"type":"launch_missiles"}"#,
        r#"{"type":"human_decision","node_id":"review","decision":"maybe"}"#,
        r#"{"type":"human_decision","decision":"approve"}"#,
        r#"{"decision":"approve"}"#,
        "{",
        "\u{0}",
        "42",
    ];
    for text in bad_client {
        assert!(serde_json::from_str::<ClientEvent>(text).is_err(), "accepted {text:?}");
    }
}

#[test]
fn events_are_read_by_serdes_rules_for_tagged_messages() {
    let parse = |text: &str| serde_json::from_str::<ServerEvent>(text);
    let edge = ServerEvent { seq: 1, body: ServerEventBody::EdgeActive { from: "a".into(), to: "b".into() } };
    assert_eq!(parse(r#"{"seq":1,"from":"a","to":"b","type":"edge_active"}"#).unwrap(), edge, "the tag may come last");
    assert_eq!(
        parse(r#"{"type":"edge_active","seq":1,"from":"a","to":"b","status":5,"run":"x","extra":[1]}"#).unwrap(),
        edge,
        "fields of other types and unknown fields are ignored, whatever their type"
    );
    assert_eq!(
        parse(r#"{"type":"error","seq":2,"node_id":null,"message":"m"}"#).unwrap().body,
        ServerEventBody::Error { node_id: None, message: "m".into() },
        "null in an optional field is absent"
    );
    let missing = parse(r#"{"type":"node_state","seq":1,"status":"running"}"#).unwrap_err().to_string();
    assert!(missing.contains("missing field `node_id`"), "{missing}");
    let wrong =
        parse(r#"{"type":"cost_update","seq":1,"spent":"lots","budget":1,"remaining":1}"#).unwrap_err().to_string();
    assert!(wrong.contains("field `spent`") && wrong.contains("invalid type"), "{wrong}");
    let unknown = parse(r#"{"type":"node_exploded","seq":1}"#).unwrap_err().to_string();
    assert!(unknown.contains("unknown variant `node_exploded`"), "{unknown}");
    assert!(parse(r#"{"type":"edge_active","seq":1,"from":"a","from":"c","to":"b"}"#).is_err(), "duplicate field");
    // A body alone (what an external engine sends) needs no seq and ignores one it cannot read.
    let body: ServerEventBody = serde_json::from_str(r#"{"type":"run_state","state":"paused","seq":"x"}"#).unwrap();
    assert_eq!(body, ServerEventBody::RunStateChanged { state: RunPhase::Paused });
    let bad_op = serde_json::from_str::<DagMutation>(r#"{"op":"explode"}"#).unwrap_err().to_string();
    assert!(bad_op.contains("unknown variant `explode`"), "{bad_op}");
}

#[test]
fn run_list_messages_round_trip() {
    let summary = r#"{"dag_id":"d1","name":"demo","state":"running","started_at":"2026-11-26T10:00:00Z","nodes_done":1,"nodes_total":3,"gates_waiting":0,"cost":{"spent":0.5,"budget":2.0,"remaining":1.5}}"#;
    assert_round_trip::<RunsFeedEvent>(&format!(r#"{{"type":"run","run":{summary}}}"#));
    assert_round_trip::<RunsFeedEvent>(&format!(r#"{{"type":"runs","runs":[{summary},{summary}]}}"#));
    assert!(serde_json::from_str::<RunsFeedEvent>(r#"{"type":"run"}"#).is_err());
}

#[test]
fn a_seed_client_message_with_extra_fields_is_accepted() {
    let parsed: ClientEvent =
        serde_json::from_str(r#"{"type":"pause_execution","sent_at":"now"}"#).expect("additive fields are ignored");
    assert_eq!(parsed, ClientEvent::PauseExecution);
}

#[test]
fn what_each_role_allows() {
    use Role::*;
    // (role, what it asks for, allowed)
    let table = [
        (Viewer, Viewer, true),
        (Viewer, Approver, false),
        (Viewer, Admin, false),
        (Viewer, Engine, false),
        (Approver, Viewer, true),
        (Approver, Approver, true),
        (Approver, Admin, false),
        (Approver, Engine, false),
        (Admin, Viewer, true),
        (Admin, Approver, true),
        (Admin, Admin, true),
        (Admin, Engine, true),
        (Engine, Viewer, true),
        (Engine, Approver, false),
        (Engine, Admin, false),
        (Engine, Engine, true),
    ];
    assert_eq!(table.len(), Role::ALL.len() * Role::ALL.len(), "every pair");
    for (role, needed, allowed) in table {
        assert_eq!(role.allows(needed), allowed, "{role:?} doing what {needed:?} may");
    }
    for event in CLIENT_LITERALS.iter().map(|text| serde_json::from_str::<ClientEvent>(text).expect("literal")) {
        assert_eq!(Role::needed_for(&event), Approver, "every command needs an approver: {event:?}");
    }
}

// ---- the published schema and docs/protocol.md ---------------------------------------------

/// A validator for one message type of the published protocol schema (`$defs/NAME`).
#[cfg(feature = "ssr")]
fn validator(name: &str) -> jsonschema::Validator {
    let mut schema: Value = serde_json::from_str(&json_schema()).expect("the schema is JSON");
    let root = schema.as_object_mut().expect("the schema is an object");
    root.remove("anyOf");
    root.insert("$ref".into(), Value::String(format!("#/$defs/{name}")));
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("$defs/{name} is not a valid schema: {e}"))
}

#[cfg(feature = "ssr")]
fn assert_valid(validator: &jsonschema::Validator, name: &str, text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: not JSON: {e}"));
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{text} is not a valid {name}: {errors:?}");
}

#[cfg(feature = "ssr")]
#[test]
fn the_published_protocol_schema_is_current() {
    let published = include_str!("../../schema/protocol.schema.json");
    assert!(
        published == json_schema(),
        "schema/protocol.schema.json is stale: regenerate it with `cargo run --features ssr -- schema --protocol > schema/protocol.schema.json`"
    );
}

#[cfg(feature = "ssr")]
#[test]
fn every_literal_fits_the_published_schema_and_mangled_ones_do_not() {
    let server = validator("ServerEvent");
    let client = validator("ClientEvent");
    for literal in SERVER_LITERALS {
        assert_valid(&server, "ServerEvent", literal);
    }
    for literal in CLIENT_LITERALS {
        assert_valid(&client, "ClientEvent", literal);
    }
    let mut run = demo_state();
    run.apply(&event(1, node_state("a", NodeStatus::Running)));
    let snapshot = ServerEvent { seq: 1, body: ServerEventBody::Snapshot { run: Box::new(run) } };
    assert_valid(&server, "ServerEvent", &serde_json::to_string(&snapshot).expect("serializes"));
    // Each is refused by the schema, as by the reader, for the reason named.
    let mangled_server = [
        (r#"{"type":"node_state","node_id":"a","status":"running"}"#, "no seq"),
        (r#"{"type":"node_state","seq":1,"node_id":"a","status":"sleeping"}"#, "an unknown status"),
        (r#"{"type":"node_state","seq":-1,"node_id":"a","status":"running"}"#, "a negative seq"),
        (r#"{"type":"cost_update","seq":1,"spent":"lots","budget":1,"remaining":1}"#, "spend as a string"),
        (r#"{"type":"node_exploded","seq":1}"#, "an unknown type"),
        (
            r#"{"type":"human_gate_waiting","seq":1,"node_id":"g","presentation":{"title":"t","prompt":"p","options":["maybe"]}}"#,
            "an unknown option",
        ),
        (r#"{"type":"dag_mutated","seq":1,"mutation":{"op":"add_edge","from":"a"}}"#, "an edge without its end"),
    ];
    for (text, why) in mangled_server {
        let value: Value = serde_json::from_str(text).expect("test literal is JSON");
        assert!(!server.is_valid(&value), "the schema accepts {why}: {text}");
        assert!(serde_json::from_str::<ServerEvent>(text).is_err(), "the reader accepts {why}: {text}");
    }
    let mangled_client = [
        (r#"{"type":"human_decision","node_id":"review","decision":"maybe"}"#, "an unknown decision"),
        (r#"{"type":"human_decision","decision":"approve"}"#, "no gate"),
        (r#"{"type":"launch_missiles"}"#, "an unknown type"),
    ];
    for (text, why) in mangled_client {
        let value: Value = serde_json::from_str(text).expect("test literal is JSON");
        assert!(!client.is_valid(&value), "the schema accepts {why}: {text}");
        assert!(serde_json::from_str::<ClientEvent>(text).is_err(), "the reader accepts {why}: {text}");
    }
}

/// Every example line of `docs/protocol.md`: each fits its message type in the schema and is
/// read by the reader of that type, so the document cannot drift from the code.
#[cfg(feature = "ssr")]
#[test]
fn every_example_of_the_protocol_document_is_valid() {
    let document = include_str!("../../docs/protocol.md");
    let mut examples = Vec::new();
    let mut in_block = false;
    for line in document.lines() {
        match (in_block, line.trim()) {
            (false, "```jsonc") => in_block = true,
            (true, "```") => in_block = false,
            (true, example) if !example.is_empty() => examples.push(example),
            (true, _) | (false, _) => {}
        }
    }
    assert!(examples.len() >= 25, "found only {} examples: is the document's format changed?", examples.len());
    let validators: Vec<(&str, jsonschema::Validator)> =
        ["ServerEvent", "ClientEvent", "EngineEvent", "RunsFeedEvent", "InboxFeedEvent"]
            .map(|name| (name, validator(name)))
            .into();
    let mut seen = std::collections::BTreeSet::new();
    for example in examples {
        let value: Value = serde_json::from_str(example).unwrap_or_else(|e| panic!("{example}: not JSON: {e}"));
        let kind = match value.get("type").and_then(Value::as_str) {
            Some("runs" | "run") => "RunsFeedEvent",
            Some("inbox" | "run_gates") => "InboxFeedEvent",
            Some(
                "human_decision" | "pause_execution" | "resume_execution" | "cancel_execution" | "retry_node"
                | "rerun_node",
            ) => "ClientEvent",
            Some(_) if value.get("seq").is_some() => "ServerEvent",
            Some(_) | None => "EngineEvent",
        };
        seen.insert(kind);
        let (_, validator) = validators.iter().find(|(name, _)| *name == kind).expect("a validator per kind");
        assert_valid(validator, kind, example);
        let read = match kind {
            "ServerEvent" => serde_json::from_str::<ServerEvent>(example).map(drop),
            "ClientEvent" => serde_json::from_str::<ClientEvent>(example).map(drop),
            "EngineEvent" => serde_json::from_str::<ServerEventBody>(example).map(drop),
            "InboxFeedEvent" => serde_json::from_str::<InboxFeedEvent>(example).map(drop),
            _ => serde_json::from_str::<RunsFeedEvent>(example).map(drop),
        };
        read.unwrap_or_else(|e| panic!("the {kind} reader refuses {example}: {e}"));
    }
    assert_eq!(seen.len(), 5, "the document shows every kind of message: {seen:?}");
}

// ---- reducer ------------------------------------------------------------------------------

fn graph_node(id: &str, kind: NodeKind) -> GraphNode {
    GraphNode { id: id.into(), label: id.to_uppercase(), kind }
}

/// a → b, a → gate → c
fn demo_state() -> RunState {
    RunState::new(
        "run1",
        "demo",
        "2026-11-26T10:00:00Z",
        10.0,
        [
            (graph_node("a", NodeKind::Simulate), vec![]),
            (graph_node("b", NodeKind::Simulate), vec!["a".to_string()]),
            (graph_node("gate", NodeKind::Gate), vec!["a".to_string()]),
            (graph_node("c", NodeKind::Simulate), vec!["gate".to_string()]),
        ],
    )
}

fn event(seq: Seq, body: ServerEventBody) -> ServerEvent {
    ServerEvent { seq, body }
}

fn node_state(id: &str, status: NodeStatus) -> ServerEventBody {
    ServerEventBody::NodeState { node_id: id.into(), status, output: None, metrics: None }
}

fn presentation() -> GatePresentation {
    GatePresentation {
        title: "Go?".into(),
        prompt: "Check".into(),
        options: vec![Decision::Approve, Decision::Reject],
        context: None,
        cost_so_far: Some(1.0),
        timeout_at: None,
        approvers: None,
        approvals: None,
        may_not_approve: Vec::new(),
        inputs: Vec::new(),
        forecast: None,
    }
}

/// Folds `bodies` (seq 1, 2, ...) into the demo state.
fn fold(bodies: Vec<ServerEventBody>) -> RunState {
    let mut state = demo_state();
    for (i, body) in bodies.into_iter().enumerate() {
        assert_eq!(state.apply(&event(i as Seq + 1, body)), Applied::Folded);
    }
    state
}

#[test]
fn reducer_table() {
    type Check = fn(&RunState);
    let cases: Vec<(&str, Vec<ServerEventBody>, Check)> = vec![
        ("node status and seq", vec![node_state("a", NodeStatus::Running)], |s| {
            assert_eq!(s.nodes["a"].status, NodeStatus::Running);
            assert_eq!(s.seq, 1);
            assert_eq!(s.progress().running, 1);
        }),
        (
            "metrics merge keeps earlier fields; output is kept until replaced",
            vec![
                ServerEventBody::NodeState {
                    node_id: "a".into(),
                    status: NodeStatus::Running,
                    output: None,
                    metrics: Some(NodeMetrics {
                        attempt: Some(1),
                        started_at: Some("t0".into()),
                        ..Default::default()
                    }),
                },
                ServerEventBody::NodeState {
                    node_id: "a".into(),
                    status: NodeStatus::Completed,
                    output: Some(json!({"text": "hi"})),
                    metrics: Some(NodeMetrics { cost: Some(0.25), duration_ms: Some(10), ..Default::default() }),
                },
                node_state("a", NodeStatus::Completed),
            ],
            |s| {
                let a = &s.nodes["a"];
                assert_eq!(a.metrics.attempt, Some(1));
                assert_eq!(a.metrics.started_at.as_deref(), Some("t0"));
                assert_eq!(a.metrics.cost, Some(0.25));
                assert_eq!(a.output, Some(json!({"text": "hi"})));
                assert_eq!(s.progress().done, 1);
            },
        ),
        ("edge activity", vec![ServerEventBody::EdgeActive { from: "a".into(), to: "b".into() }], |s| {
            assert_eq!(s.nodes["b"].active_inputs, vec!["a".to_string()]);
        }),
        ("cost", vec![ServerEventBody::CostUpdate { spent: 2.5, budget: 10.0, remaining: 7.5 }], |s| {
            assert_eq!(s.cost, Cost { spent: 2.5, budget: 10.0, remaining: 7.5 });
            assert_eq!(s.spend_history, [SpendPoint { seq: 1, spent: 2.5 }]);
        }),
        (
            "spend is kept as a curve, one point per cost update",
            vec![
                node_state("a", NodeStatus::Running),
                ServerEventBody::CostUpdate { spent: 1.0, budget: 10.0, remaining: 9.0 },
                ServerEventBody::CostUpdate { spent: 3.0, budget: 10.0, remaining: 7.0 },
            ],
            |s| assert_eq!(s.spend_history, [SpendPoint { seq: 2, spent: 1.0 }, SpendPoint { seq: 3, spent: 3.0 }]),
        ),
        (
            "a long curve is thinned to every other point, keeping the first and the newest",
            (1..=SPEND_POINTS as u64 + 1)
                .map(|i| ServerEventBody::CostUpdate { spent: i as f64, budget: 1000.0, remaining: 1000.0 - i as f64 })
                .collect(),
            |s| {
                let seqs: Vec<Seq> = s.spend_history.iter().map(|point| point.seq).collect();
                let expected: Vec<Seq> = (1..=SPEND_POINTS as u64 + 1).step_by(2).collect();
                assert_eq!(seqs, expected, "odd seqs from 1: the first and the newest ({})", SPEND_POINTS + 1);
                assert_eq!(s.spend_history.last().map(|point| point.spent), Some(s.cost.spent));
            },
        ),
        (
            "gate waits, then is resolved",
            vec![
                ServerEventBody::HumanGateWaiting { node_id: "gate".into(), presentation: presentation() },
                ServerEventBody::GateResolved {
                    node_id: "gate".into(),
                    decision: Decision::Approve,
                    feedback: Some("ok".into()),
                    decided_by: "alice".into(),
                    decided_at: "t1".into(),
                    inputs: None,
                },
                node_state("gate", NodeStatus::Completed),
            ],
            |s| {
                assert_eq!(s.waiting_gates().count(), 0);
                assert_eq!(s.nodes["gate"].status, NodeStatus::Completed);
                assert_eq!(s.decisions.len(), 1);
                assert_eq!(s.decisions[0].decided_by, "alice");
                assert_eq!(s.decisions[0].seq, 2);
            },
        ),
        (
            "a waiting gate is listed",
            vec![ServerEventBody::HumanGateWaiting { node_id: "gate".into(), presentation: presentation() }],
            |s| {
                assert_eq!(s.nodes["gate"].status, NodeStatus::Waiting);
                assert_eq!(s.waiting_gates().map(|(n, _)| n.id.as_str()).collect::<Vec<_>>(), ["gate"]);
                assert_eq!(s.summary().gates_waiting, 1);
                assert_eq!(s.progress().waiting, 1);
            },
        ),
        (
            "run state, errors and results",
            vec![
                ServerEventBody::Error { node_id: Some("b".into()), message: "exit status 1".into() },
                node_state("b", NodeStatus::Failed),
                ServerEventBody::RunStateChanged { state: RunPhase::Failed },
                ServerEventBody::ExecutionComplete { results: Map::from_iter([("a".to_string(), json!(1))]) },
            ],
            |s| {
                assert_eq!(s.state, RunPhase::Failed);
                assert_eq!(
                    s.errors,
                    vec![ErrorEntry { seq: 1, node_id: Some("b".into()), message: "exit status 1".into() }]
                );
                assert_eq!(s.results.as_ref().map(|r| r.len()), Some(1));
                assert_eq!(s.progress().failed, 1);
            },
        ),
        (
            "mutations: add node, add edge, update, remove",
            vec![
                ServerEventBody::DagMutated {
                    mutation: DagMutation::AddNode {
                        node: graph_node("x", NodeKind::Simulate),
                        after: vec!["b".into()],
                        spec: None,
                        budget_gate: false,
                    },
                },
                ServerEventBody::DagMutated { mutation: DagMutation::AddEdge { from: "x".into(), to: "c".into() } },
                ServerEventBody::DagMutated {
                    mutation: DagMutation::UpdateNode { node_id: "x".into(), label: Some("Extra".into()) },
                },
                ServerEventBody::DagMutated { mutation: DagMutation::RemoveNode { node_id: "b".into() } },
            ],
            |s| {
                assert_eq!(s.nodes.keys().collect::<Vec<_>>(), ["a", "gate", "c", "x"]);
                assert_eq!(s.nodes["x"].label, "Extra");
                assert!(s.nodes["x"].needs.is_empty(), "edge from the removed node is gone");
                assert_eq!(s.nodes["c"].needs, vec!["gate".to_string(), "x".to_string()]);
                assert_eq!(s.nodes["x"].status, NodeStatus::Pending);
            },
        ),
        (
            "log tail is bounded",
            (0..LOG_TAIL_LINES + 5)
                .map(|i| ServerEventBody::NodeLog {
                    node_id: "a".into(),
                    stream: LogStream::Stdout,
                    line: format!("l{i}"),
                })
                .collect(),
            |s| {
                let tail = &s.nodes["a"].log_tail;
                assert_eq!(tail.len(), LOG_TAIL_LINES);
                assert_eq!(tail.front().map(|l| l.line.as_str()), Some("l5"));
            },
        ),
        ("events about unknown nodes change nothing but seq", vec![node_state("ghost", NodeStatus::Running)], |s| {
            assert!(!s.nodes.contains_key("ghost"));
            assert_eq!(s.seq, 1);
        }),
    ];
    for (name, bodies, check) in cases {
        let state = fold(bodies);
        eprintln!("case: {name}");
        check(&state);
    }
}

#[test]
fn stale_and_gapped_events_change_nothing() {
    let mut state = fold(vec![node_state("a", NodeStatus::Running), node_state("a", NodeStatus::Completed)]);
    let before = state.clone();
    assert_eq!(state.apply(&event(2, node_state("a", NodeStatus::Failed))), Applied::Stale);
    assert_eq!(state.apply(&event(1, node_state("b", NodeStatus::Failed))), Applied::Stale);
    assert_eq!(state.apply(&event(4, node_state("b", NodeStatus::Running))), Applied::Gap { expected: 3 });
    assert_eq!(state, before);
    assert_eq!(state.apply(&event(3, node_state("b", NodeStatus::Running))), Applied::Folded);
}

#[test]
fn apply_owned_folds_exactly_as_apply_does() {
    let server = fold(vec![node_state("a", NodeStatus::Running), node_state("a", NodeStatus::Completed)]);
    let events = [
        event(2, ServerEventBody::Snapshot { run: Box::new(server) }),
        event(2, node_state("a", NodeStatus::Failed)),
        event(4, node_state("b", NodeStatus::Running)),
        event(3, node_state("b", NodeStatus::Running)),
    ];
    let (mut by_ref, mut owned) = (demo_state(), demo_state());
    for event in events {
        assert_eq!(by_ref.apply(&event), owned.apply_owned(event.clone()));
        assert_eq!(by_ref, owned);
    }
}

#[test]
fn snapshot_replaces_the_state_and_later_events_continue_from_it() {
    let server = fold(vec![node_state("a", NodeStatus::Running), node_state("a", NodeStatus::Completed)]);
    let mut client = demo_state();
    let snapshot = event(server.seq, ServerEventBody::Snapshot { run: Box::new(server.clone()) });
    assert_eq!(client.apply(&snapshot), Applied::Folded);
    assert_eq!(client, server);
    assert_eq!(client.apply(&event(3, node_state("b", NodeStatus::Running))), Applied::Folded);
    assert_eq!(client.nodes["b"].status, NodeStatus::Running);
}

/// Every value of a unit enum is written as its `as_str` name and read back from it.
fn assert_wire_names<T>(all: &[T], as_str: fn(T) -> &'static str)
where
    T: Copy + std::fmt::Debug + PartialEq + Serialize + serde::de::DeserializeOwned,
{
    for &value in all {
        let name = serde_json::Value::from(as_str(value));
        assert_eq!(serde_json::to_value(value).ok(), Some(name.clone()), "{value:?} is written as its name");
        assert_eq!(serde_json::from_value::<T>(name).ok(), Some(value), "{value:?} is read from its name");
    }
}

#[test]
fn names_shown_on_the_page_are_the_wire_names() {
    assert_wire_names(NodeStatus::ALL, NodeStatus::as_str);
    assert_wire_names(NodeKind::ALL, NodeKind::as_str);
    assert_wire_names(Decision::ALL, Decision::as_str);
    assert_wire_names(RunPhase::ALL, RunPhase::as_str);
    assert_wire_names(LogStream::ALL, LogStream::as_str);
    assert_wire_names(Role::ALL, Role::as_str);
    assert_wire_names(RepairAction::ALL, RepairAction::as_str);
    let unknown = serde_json::from_str::<NodeStatus>(r#""sleeping""#).unwrap_err().to_string();
    assert!(unknown.contains("unknown variant `sleeping`, expected one of `pending`"), "{unknown}");
    assert!(serde_json::from_str::<Decision>("7").is_err(), "a name is a string");
}

#[test]
fn a_gate_waits_for_an_approver_it_names_who_may_and_did_not_approve_yet() {
    let person = |name: &str, role: Role| SignedIn { name: name.into(), role };
    let mut gate = presentation();
    let anyone = gate.clone();
    gate.approvers = Some(vec!["ana".into(), "bo".into()]);
    gate.may_not_approve = vec!["bo".into()];
    let ana = person("ana", Role::Approver);
    // (gate, who, approved so far, waits for them)
    let table = [
        (&anyone, person("cy", Role::Approver), vec![], true),
        (&anyone, person("cy", Role::Admin), vec![], true),
        (&anyone, person("vi", Role::Viewer), vec![], false),
        (&anyone, person("en", Role::Engine), vec![], false),
        (&gate, ana.clone(), vec![], true),
        (&gate, ana.clone(), vec!["ana".to_owned()], false),
        (&gate, person("bo", Role::Approver), vec![], false),
        (&gate, person("cy", Role::Admin), vec![], false),
    ];
    for (gate, who, approved_by, expected) in table {
        assert_eq!(gate.waits_for(&who, &approved_by), expected, "{who:?} after {approved_by:?}");
    }
}

/// Each repair asked of the demo run (a → b, a → gate → c) as it stands: what it resets, or
/// the reason it is refused. The engine, external runs and the dashboard's buttons share it.
#[test]
fn which_repair_a_run_takes_and_what_it_resets() {
    use NodeStatus::*;
    use RepairAction::*;
    let with = |phase: RunPhase, statuses: [NodeStatus; 4]| {
        let mut state = demo_state();
        state.state = phase;
        for (node, status) in state.nodes.values_mut().zip(statuses) {
            node.status = status;
        }
        state
    };
    let failed_gate = with(RunPhase::Failed, [Completed, Completed, Failed, Skipped]);
    let completed = with(RunPhase::Completed, [Completed, Completed, Completed, Completed]);
    let running = with(RunPhase::Running, [Completed, Running, Waiting, Pending]);
    let cancelled = with(RunPhase::Cancelled, [Completed, Cancelled, Cancelled, Cancelled]);
    let reset = |ids: &[&str]| Ok(ids.iter().map(|id| id.to_string()).collect::<Vec<_>>());
    let refused = |reason: &str| Err::<Vec<String>, String>(reason.to_owned());
    // (case, the run, the repair, from which node, what it resets or why not)
    type Case<'a> = (&'a str, &'a RunState, RepairAction, &'a str, Result<Vec<String>, String>);
    let cases: Vec<Case> = vec![
        ("retry a failed gate of a failed run", &failed_gate, Retry, "gate", reset(&["gate", "c"])),
        ("re-run a failed node", &failed_gate, Rerun, "gate", reset(&["gate", "c"])),
        (
            "retry a completed node",
            &failed_gate,
            Retry,
            "a",
            refused("node \"a\" completed: only a failed node is retried; re-run from it instead"),
        ),
        (
            "a skipped node's need failed",
            &failed_gate,
            Rerun,
            "c",
            refused("node \"c\" needs \"gate\", which is failed: retry \"gate\" instead"),
        ),
        ("re-run from the root of a completed run", &completed, Rerun, "a", reset(&["a", "b", "gate", "c"])),
        ("re-run a leaf", &completed, Rerun, "b", reset(&["b"])),
        (
            "re-run a node that runs",
            &running,
            Rerun,
            "b",
            refused("node \"b\" is running: it can be re-run once it has finished"),
        ),
        (
            "re-run with work downstream",
            &running,
            Rerun,
            "a",
            refused("node \"b\", downstream of \"a\", is running: wait for it to finish, or cancel the run"),
        ),
        ("retry a pending node", &running, Retry, "c", refused("node \"c\" is pending: only a failed node is retried")),
        ("an unknown node", &completed, Rerun, "zz", refused("no node \"zz\" in this run")),
        ("a cancelled run", &cancelled, Rerun, "a", refused("the run was cancelled: run it again instead")),
    ];
    for (case, state, action, node_id, expected) in cases {
        assert_eq!(state.repair_plan(action, node_id), expected, "{case}");
    }
}

/// `run_repaired` puts the reset nodes back to pending without their output, keeps what they
/// cost and their attempts, reopens the run's results and records who asked.
#[test]
fn a_repair_resets_its_nodes_and_reopens_the_run() {
    let done = |id: &str, cost: f64| ServerEventBody::NodeState {
        node_id: id.into(),
        status: NodeStatus::Completed,
        output: Some(json!({ "from": id })),
        metrics: Some(NodeMetrics {
            cost: Some(cost),
            attempt: Some(1),
            finished_at: Some("2026-11-26T10:00:05Z".into()),
            ..Default::default()
        }),
    };
    let state = fold(vec![
        done("a", 1.0),
        done("b", 2.0),
        done("gate", 0.0),
        done("c", 3.0),
        ServerEventBody::RunStateChanged { state: RunPhase::Completed },
        ServerEventBody::ExecutionComplete { results: Map::new() },
        ServerEventBody::RunRepaired {
            action: RepairAction::Rerun,
            node_id: "gate".into(),
            reset: vec!["gate".into(), "c".into()],
            repaired_by: "ana".into(),
            repaired_at: "2026-11-26T10:10:00Z".into(),
        },
    ]);
    assert_eq!(state.results, None, "the run is open again");
    for id in ["gate", "c"] {
        let node = &state.nodes[id];
        assert_eq!(node.status, NodeStatus::Pending, "{id}");
        assert_eq!(node.output, None, "{id}");
        assert_eq!(node.metrics.finished_at, None, "{id}");
        assert_eq!(node.metrics.attempt, Some(1), "{id}: the attempts it made stay");
    }
    assert_eq!(state.nodes["c"].metrics.cost, Some(3.0), "what it cost stays");
    assert_eq!(state.nodes["b"].output, Some(json!({ "from": "b" })), "what was not reset keeps its output");
    assert_eq!(state.nodes["b"].status, NodeStatus::Completed);
    assert_eq!(state.repairs.len(), 1);
    assert_eq!((state.repairs[0].seq, state.repairs[0].repaired_by.as_str()), (7, "ana"));
}

/// A new start of a node that had started makes the earlier attempt a past one: a retry after a
/// failed attempt (it ends where the next starts), a re-run after a completed one (it ends when
/// it finished); the node's own times are the current attempt's.
#[test]
fn each_new_start_keeps_the_attempt_before_it() {
    let at = |second: u32| format!("2026-11-26T10:00:{second:02}Z");
    let state_of = |status, started: Option<u32>, finished: Option<u32>, attempt| ServerEventBody::NodeState {
        node_id: "a".into(),
        status,
        output: None,
        metrics: Some(NodeMetrics {
            attempt: Some(attempt),
            started_at: started.map(at),
            finished_at: finished.map(at),
            ..Default::default()
        }),
    };
    let state = fold(vec![
        state_of(NodeStatus::Running, Some(1), None, 1),
        state_of(NodeStatus::Running, Some(3), None, 2),
        state_of(NodeStatus::Completed, None, Some(4), 2),
        state_of(NodeStatus::Running, Some(6), None, 3),
    ]);
    let node = &state.nodes["a"];
    let spans: Vec<(String, String, NodeStatus)> =
        node.past_attempts.iter().map(|a| (a.started_at.clone(), a.ended_at.clone(), a.status)).collect();
    assert_eq!(spans, [(at(1), at(3), NodeStatus::Running), (at(3), at(4), NodeStatus::Completed)]);
    assert_eq!((node.metrics.started_at.clone(), node.metrics.finished_at.clone()), (Some(at(6)), None));
}
