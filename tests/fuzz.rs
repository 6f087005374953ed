//! Fuzzing the parsers hostile input reaches: client events (every WebSocket text frame), the
//! events an external engine sends, and specs (every submitted DAG). Valid inputs are mangled (cut, bytes flipped, pieces
//! spliced in) and random text is thrown in; parsing must answer `Ok` or a readable `Err`,
//! never panic, and what parses must survive a round trip.
//!
//! `make test` runs the default 256 cases each; `make fuzz` runs many more
//! (`PROPTEST_CASES=50000`).

#![cfg(feature = "ssr")]

use dagstream::engine::{DagSpec, SpecFormat};
use dagstream::protocol::{ClientEvent, ServerEvent, ServerEventBody};
use proptest::prelude::*;

const EVENTS: [&str; 5] = [
    r#"{"type":"human_decision","node_id":"review","decision":"approve"}"#,
    r#"{"type":"human_decision","node_id":"review","decision":"modify","feedback":"shorter"}"#,
    r#"{"type":"pause_execution"}"#,
    r#"{"type":"resume_execution"}"#,
    r#"{"type":"cancel_execution"}"#,
];

/// Events an external engine sends (a body without `seq`), one of each shape.
const ENGINE_EVENTS: [&str; 6] = [
    r#"{"type":"node_state","node_id":"a","status":"completed","output":{"x":[1,2]},"metrics":{"cost":0.5,"attempt":2}}"#,
    r#"{"type":"edge_active","from":"a","to":"b"}"#,
    r#"{"type":"dag_mutated","mutation":{"op":"add_node","node":{"id":"c","label":"C","kind":"task"},"after":["a"]}}"#,
    r#"{"type":"human_gate_waiting","node_id":"g","presentation":{"title":"Go?","prompt":"p","options":["approve","reject"]}}"#,
    r#"{"type":"node_log","node_id":"a","stream":"stderr","line":"warning: \"x\""}"#,
    r#"{"type":"cost_update","spent":1.5,"budget":2.0,"remaining":0.5}"#,
];

const SPEC: &str = r#"name = "fuzz"
budget = 2.5
max_parallel = 2
[[nodes]]
id = "a"
kind = "simulate"
duration = "10ms"
cost = 0.1
[[nodes]]
id = "b"
kind = "command"
needs = ["a"]
run = "echo hi"
retries = 2
timeout = "5s"
env = { MODE = "fast" }
[[nodes]]
id = "review"
kind = "gate"
needs = ["b"]
title = "Go?"
prompt = "Check b."
"#;

/// A valid text mangled by a few edits: cut at a point, a byte replaced, a piece inserted.
fn mangled(valid: &'static str) -> impl Strategy<Value = String> {
    let len = valid.len();
    (0..=len, prop::collection::vec((0..len.max(1), any::<u8>()), 0..4), 0..=len, "\\PC{0,12}").prop_map(
        move |(cut, flips, at, piece)| {
            let mut bytes = valid.as_bytes().to_vec();
            for (i, b) in flips {
                if i < bytes.len() {
                    bytes[i] = b;
                }
            }
            let at = at.min(bytes.len());
            bytes.splice(at..at, piece.into_bytes());
            bytes.truncate(cut.max(at));
            String::from_utf8_lossy(&bytes).into_owned()
        },
    )
}

fn any_event_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(EVENTS.to_vec()).prop_flat_map(mangled),
        "\\PC{0,200}",
        any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// The seeds of the mangler are valid: each parses (else every property below would test only
/// error paths and pass vacuously).
#[test]
fn the_seed_literals_parse() {
    for text in EVENTS {
        serde_json::from_str::<ClientEvent>(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    for text in ENGINE_EVENTS {
        serde_json::from_str::<ServerEventBody>(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    DagSpec::parse(SPEC, SpecFormat::Toml).expect("the seed spec is valid");
}

/// Mangled literals fail for the reason their mangling gives, and say it.
#[test]
fn mangled_literals_fail_for_the_right_reason() {
    let client = [
        (r#"{"type":"human_decision","node_id":"review","decision":"appr"#, "EOF"),
        (r#"{"type":"human_decision","node_id":"review","decision":"maybe"}"#, "maybe"),
        (r#"{"type":"human_decision","decision":"approve"}"#, "node_id"),
        (r#"{"type":"launch_missiles"}"#, "launch_missiles"),
        (r#"{"node_id":"review"}"#, "type"),
        (r#"{"type":"pause_execution""#, "EOF"),
        (r#"{"type":"human_decision","node_id":7,"decision":"approve"}"#, "string"),
    ];
    for (text, reason) in client {
        let error = serde_json::from_str::<ClientEvent>(text).expect_err(text).to_string();
        assert!(error.contains(reason), "{text}: {error:?} should name {reason:?}");
    }
    let engine = [
        (r#"{"type":"node_state","node_id":"a","status":"sleeping"}"#, "sleeping"),
        (r#"{"type":"node_state","status":"completed"}"#, "node_id"),
        (r#"{"type":"cost_update","spent":"lots","budget":2.0,"remaining":0.5}"#, "spent"),
        (r#"{"type":"edge_active","from":"a""#, "EOF"),
        (r#"{"type":"dag_mutated","mutation":{"op":"explode"}}"#, "explode"),
    ];
    for (text, reason) in engine {
        let error = serde_json::from_str::<ServerEventBody>(text).expect_err(text).to_string();
        assert!(error.contains(reason), "{text}: {error:?} should name {reason:?}");
    }
    let specs = [
        (SPEC.replace("needs = [\"a\"]", "needs = [\"ghost\"]"), "ghost"),
        (SPEC.replace("duration = \"10ms\"", "duration = \"soon\""), "soon"),
        (SPEC.replace("kind = \"simulate\"", "kind = \"teleport\""), "teleport"),
        (SPEC.replace("id = \"b\"", "id = \"a\""), "\"a\""),
        (SPEC.replace("retries = 2", "retries = 2\nbogus = 1"), "bogus"),
    ];
    for (text, reason) in specs {
        let error = DagSpec::parse(&text, SpecFormat::Toml).expect_err(&text).to_string();
        assert!(error.contains(reason), "{error:?} should name {reason:?}");
    }
}

/// An error a person can act on: it says what is wrong (a field, a value, where in the text),
/// in words, not as a debug dump of the parser's state.
fn readable(message: &str) -> bool {
    let says_what =
        [" at line ", "missing field", "unknown variant", "invalid type", "invalid value", "EOF", "expected"]
            .iter()
            .any(|words| message.contains(words));
    says_what && !message.contains("Error(")
}

proptest! {
    #[test]
    fn client_event_parsing_never_panics_and_round_trips(text in any_event_text()) {
        match serde_json::from_str::<ClientEvent>(&text) {
            Ok(event) => {
                let again = serde_json::to_string(&event).expect("serializes");
                prop_assert_eq!(serde_json::from_str::<ClientEvent>(&again).expect("reparses"), event);
            }
            Err(error) => prop_assert!(readable(&error.to_string()), "{}", error),
        }
    }

    #[test]
    fn engine_event_parsing_never_panics_and_round_trips(
        text in prop_oneof![prop::sample::select(ENGINE_EVENTS.to_vec()).prop_flat_map(mangled), "\\PC{0,200}"]
    ) {
        match serde_json::from_str::<ServerEventBody>(&text) {
            Ok(body) => {
                let again = serde_json::to_string(&body).expect("serializes");
                prop_assert_eq!(serde_json::from_str::<ServerEventBody>(&again).expect("reparses"), body.clone());
                // With a seq it is a whole event, as stored and sent to dashboards.
                let event = ServerEvent { seq: 7, body };
                let text = serde_json::to_string(&event).expect("serializes");
                prop_assert_eq!(serde_json::from_str::<ServerEvent>(&text).expect("reparses"), event);
            }
            Err(error) => prop_assert!(readable(&error.to_string()), "{}", error),
        }
    }

    #[test]
    fn spec_parsing_never_panics(text in prop_oneof![mangled(SPEC), "\\PC{0,300}"]) {
        match DagSpec::parse(&text, SpecFormat::Toml) {
            Ok(spec) => {
                // What parses is a runnable graph: ids unique, needs known.
                let ids: std::collections::HashSet<&str> = spec.nodes.iter().map(|n| n.id.as_str()).collect();
                prop_assert_eq!(ids.len(), spec.nodes.len());
                for node in &spec.nodes {
                    for need in &node.needs {
                        prop_assert!(ids.contains(need.as_str()));
                    }
                }
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
        // The same text as JSON (mostly invalid) must not panic either.
        let _ = DagSpec::parse(&text, SpecFormat::Json);
    }
}
