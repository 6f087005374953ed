//! The spec format: the documented example, TOML and JSON alike, and one clear error per mistake.

use super::*;

/// The example of the README and of issue 3, verbatim.
const EXAMPLE: &str = r#"
name = "digest"
budget = 5.0
budget_step = 2.0
max_parallel = 4

[[nodes]]
id = "fetch"
kind = "command"
run = "python3 fetch.py"
timeout = "30s"
retries = 2

[[nodes]]
id = "summarize"
kind = "simulate"
needs = ["fetch"]
duration = "2s"
cost = 0.4
tokens_in = 1200
tokens_out = 300

[[nodes]]
id = "review"
kind = "gate"
needs = ["summarize"]
title = "Publish the summary?"
prompt = "Check the summary before it goes out."
options = ["approve", "reject", "modify"]
timeout = "1h"
on_timeout = "reject"
"#;

#[test]
fn the_documented_example_parses_into_what_it_says() {
    let spec = DagSpec::parse(EXAMPLE, SpecFormat::Toml).expect("valid");
    assert_eq!(spec.name, "digest");
    assert_eq!(spec.budget, Some(5.0));
    assert_eq!(spec.budget_step, 2.0);
    assert_eq!(spec.max_parallel, 4);
    let fetch = &spec.nodes[0];
    assert_eq!(fetch.timeout, Some(Duration::from_secs(30)));
    assert_eq!(fetch.retries, 2);
    assert_eq!(
        fetch.work,
        NodeWork::Command { run: "python3 fetch.py".into(), env: BTreeMap::new(), pool: None, cost: None }
    );
    assert_eq!(
        spec.nodes[1].work,
        NodeWork::Simulate {
            duration: Duration::from_secs(2),
            cost: 0.4,
            tokens_in: Some(1200),
            tokens_out: Some(300),
            fail_rate: 0.0,
            output: None,
        }
    );
    assert_eq!(spec.nodes[2].timeout, Some(Duration::from_secs(3600)));
    assert_eq!(
        spec.nodes[2].work,
        NodeWork::Gate {
            title: "Publish the summary?".into(),
            prompt: "Check the summary before it goes out.".into(),
            options: vec![Decision::Approve, Decision::Reject, Decision::Modify],
            on_timeout: Some(Decision::Reject),
            rules: GateRules::default(),
            inputs: Vec::new(),
        }
    );
}

#[test]
fn the_same_structure_as_json_gives_the_same_spec() {
    let value: Value = toml::from_str(EXAMPLE).expect("toml");
    let json = serde_json::to_string(&value).expect("json");
    assert_eq!(DagSpec::parse(&json, SpecFormat::Json), DagSpec::parse(EXAMPLE, SpecFormat::Toml));
}

fn error_of(toml_text: &str) -> String {
    match DagSpec::parse(toml_text, SpecFormat::Toml) {
        Ok(spec) => panic!("accepted: {spec:?}"),
        Err(error) => error.to_string(),
    }
}

fn node(id: &str, extra: &str) -> String {
    format!("[[nodes]]\nid = \"{id}\"\n{extra}\n")
}

#[test]
fn every_mistake_gets_a_message_naming_the_node_and_field() {
    let head = "name = \"t\"\n";
    let cases: Vec<(String, &[&str])> = vec![
        (
            format!(
                "{head}{}{}{}",
                node("a", "kind = \"simulate\"\nneeds = [\"c\"]"),
                node("b", "kind = \"simulate\"\nneeds = [\"a\"]"),
                node("c", "kind = \"simulate\"\nneeds = [\"b\"]")
            ),
            &["cycle", "a → b → c → a"],
        ),
        (format!("{head}{}", node("a", "kind = \"simulate\"\nneeds = [\"ghost\"]")), &["\"a\"", "needs", "\"ghost\""]),
        (
            format!("{head}{}{}", node("a", "kind = \"simulate\""), node("a", "kind = \"gate\"")),
            &["\"a\"", "more than one"],
        ),
        (format!("{head}{}", node("a", "kind = \"llm\"")), &["\"a\"", "unknown variant `llm`"]),
        (format!("{head}{}", node("a", "kind = \"command\"\nrunn = \"ls\"")), &["\"a\"", "unknown field `runn`"]),
        (format!("{head}{}", node("a", "kind = \"simulate\"\npool = \"gpu\"")), &["\"a\"", "pool"]),
        (
            format!("{head}{}", node("a", "kind = \"command\"\nrun = \"ls\"\npool = \"g p u\"")),
            &["\"a\"", "pool", "letters"],
        ),
        (
            format!("{head}{}", node("a", "kind = \"simulate\"\nduration = \"2 parsecs\"")),
            &["\"a\"", "\"duration\"", "2 parsecs"],
        ),
        (
            format!("{head}{}", node("a", "kind = \"command\"\nrun = \"ls\"\ntimeout = \"soon\"")),
            &["\"a\"", "\"timeout\""],
        ),
        (format!("{head}{}", node("a", "kind = \"simulate\"\nrun = \"ls\"")), &["\"a\"", "\"run\"", "\"simulate\""]),
        (format!("{head}{}", node("a", "kind = \"command\"")), &["\"a\"", "needs field \"run\""]),
        (format!("{head}{}", node("a", "kind = \"simulate\"\nfail_rate = 2.0")), &["\"a\"", "fail_rate"]),
        (format!("{head}{}", node("a", "kind = \"gate\"\noptions = []")), &["\"a\"", "options"]),
        (
            format!("{head}{}", node("a", "kind = \"gate\"\non_timeout = \"approve\"")),
            &["\"a\"", "on_timeout", "timeout"],
        ),
        (format!("{head}{}", node("a", "kind = \"gate\"\noptions = [\"maybe\"]")), &["\"a\"", "maybe"]),
        (format!("{head}{}", node("a", "kind = \"gate\"\napprovals = 0")), &["\"a\"", "approvals", "1 to 20"]),
        (
            format!("{head}{}", node("a", "kind = \"gate\"\napprovers = [\"ana\"]\napprovals = 2")),
            &["\"a\"", "approvals", "2 distinct approvers"],
        ),
        (format!("{head}{}", node("a", "kind = \"gate\"\napprovers = []")), &["\"a\"", "approvers", "empty"]),
        (format!("{head}{}", node("a", "kind = \"gate\"\napprovers = [\"a b\"]")), &["\"a\"", "approvers", "\"a b\""]),
        (format!("{head}{}", node("a", "kind = \"gate\"\nescalate_after = \"1h\"")), &["\"a\"", "escalate_to"]),
        (format!("{head}{}", node("a", "kind = \"gate\"\nescalate_to = [\"bo\"]")), &["\"a\"", "escalate_after"]),
        (format!("{head}{}", node("a", "kind = \"gate\"\nremind_every = \"0s\"")), &["\"a\"", "remind_every"]),
        (format!("{head}{}", node("a", "kind = \"simulate\"\napprovals = 2")), &["\"a\"", "approvals", "\"simulate\""]),
        (
            format!("{head}{}", node("a", "kind = \"gate\"\ninputs = [{ name = \"t\", type = \"enum\" }]")),
            &["\"a\"", "inputs", "needs options"],
        ),
        (
            format!("{head}{}", node("a", "kind = \"gate\"\ninputs = [{ name = \"n\", type = \"text\", min = 1.0 }]")),
            &["\"a\"", "inputs", "min and max"],
        ),
        (
            format!(
                "{head}{}",
                node(
                    "a",
                    "kind = \"gate\"\ninputs = [{ name = \"n\", type = \"integer\" }, { name = \"n\", type = \"text\" }]"
                )
            ),
            &["\"a\"", "inputs", "twice"],
        ),
        (
            format!("{head}{}", node("a", "kind = \"gate\"\ninputs = [{ name = \"n\", type = \"colour\" }]")),
            &["\"a\"", "colour"],
        ),
        (format!("{head}{}", node("a b", "kind = \"simulate\"")), &["node #1", "\"a b\""]),
        (format!("{head}{}", node("a", "kind = \"simulate\"\nneeds = [\"a\"]")), &["\"a\"", "itself"]),
        (format!("{head}max_parallel = 0\n{}", node("a", "kind = \"simulate\"")), &["max_parallel"]),
        (format!("{head}budget = -1.0\n{}", node("a", "kind = \"simulate\"")), &["budget"]),
        (format!("{head}colour = \"red\"\n{}", node("a", "kind = \"simulate\"")), &["unknown field `colour`"]),
        (head.to_string(), &["nodes"]),
        ("name = \"t\"\nnodes = []\n".to_string(), &["no nodes"]),
        ("this is = not toml = at all".to_string(), &["TOML"]),
    ];
    for (text, expected) in cases {
        let message = error_of(&text);
        for part in expected {
            assert!(message.contains(part), "message {message:?} should contain {part:?}\nfor:\n{text}");
        }
    }
}

#[test]
fn json_errors_name_the_node_too() {
    let json = r#"{"name": "t", "nodes": [{"id": "a", "kind": "simulate", "cost": "lots"}]}"#;
    let message = DagSpec::parse(json, SpecFormat::Json).expect_err("bad cost").to_string();
    assert!(message.contains("node \"a\"") && message.contains("invalid type"), "{message}");
    assert!(DagSpec::parse("{", SpecFormat::Json).expect_err("not json").to_string().contains("JSON"));
}

#[test]
fn defaults_apply_when_fields_are_absent() {
    let spec =
        DagSpec::parse("name = \"t\"\n[[nodes]]\nid = \"g\"\nkind = \"gate\"\n", SpecFormat::Toml).expect("valid");
    assert_eq!(spec.budget, None);
    assert_eq!(spec.max_parallel, DEFAULT_MAX_PARALLEL);
    let NodeWork::Gate { options, title, .. } = &spec.nodes[0].work else { panic!("a gate") };
    assert_eq!(options, &[Decision::Approve, Decision::Reject]);
    assert!(title.contains('g'));
}

#[test]
fn the_published_json_schema_is_current() {
    let published = include_str!("../../../schema/dag-spec.schema.json");
    assert!(
        published == json_schema(),
        "schema/dag-spec.schema.json is stale: regenerate it with `cargo run --features ssr -- schema > schema/dag-spec.schema.json`"
    );
    let schema: Value = serde_json::from_str(published).expect("the schema is JSON");
    assert!(schema["properties"]["nodes"].is_object());
}

#[test]
fn a_spec_survives_the_round_trip_through_its_file_form() {
    let spec = DagSpec::parse(EXAMPLE, SpecFormat::Toml).expect("valid");
    let stored = serde_json::to_value(spec.to_file()).expect("serializes");
    assert_eq!(DagSpec::from_value(stored), Ok(spec));
}

/// The README's full example (its first TOML block) is a valid spec, and its gate fields say
/// what the README says they do.
#[test]
fn the_readme_example_is_a_valid_spec() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("```toml\nname = \"digest\"").expect("the README's example") + "```toml\n".len();
    let text = &readme[start..start + readme[start..].find("```").expect("its end")];
    let spec = DagSpec::parse(text, SpecFormat::Toml).unwrap_or_else(|e| panic!("{e}"));
    let fetch = spec.nodes.iter().find(|n| n.id == "fetch").expect("fetch");
    assert!(matches!(fetch.work, NodeWork::Command { cost: Some(_), .. }), "a command's cost hint");
    let publish = spec.nodes.iter().find(|n| n.id == "publish").expect("publish");
    let NodeWork::Gate { rules, inputs, .. } = &publish.work else { panic!("a gate") };
    assert_eq!(rules.approvals, 2);
    assert!(!rules.allow_self_approval);
    assert_eq!(rules.approvers.as_deref(), Some(&["ana".to_owned(), "group:leads".to_owned()][..]));
    assert_eq!(rules.remind_every, Some(Duration::from_secs(1800)));
    assert_eq!(rules.escalate_to, ["group:managers".to_owned()]);
    assert_eq!(inputs.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["tone", "max_rows", "note"]);
}
