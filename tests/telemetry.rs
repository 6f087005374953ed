//! Traces: a run's span, a span per node attempt (cost and tokens as attributes, a retried
//! attempt its own span) and per gate wait, all children of the run's, in one trace; caught by
//! the OpenTelemetry SDK's in-memory exporter. And the binary with `--otlp-endpoint`: its spans
//! reach an OTLP/HTTP collector (one served here), and its JSON log lines carry the trace id.

#![cfg(feature = "ssr")]

mod common;

use std::time::Duration;

use dagstream::engine::{DagSpec, EngineConfig, SpecFormat};
use dagstream::hub::RoomLimits;
use dagstream::protocol::{ClientEvent, Decision, NodeStatus};
use dagstream::runs::Runs;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

/// `flaky` fails its first attempt and reports a cost on its second; a gate; then `after`.
const SPEC: &str = r#"
name = "traced"
[[nodes]]
id = "flaky"
kind = "command"
retries = 1
run = '[ "$DAGSTREAM_ATTEMPT" -ge 2 ] || exit 1; echo "{\"cost\": 0.25, \"tokens_in\": 40, \"tokens_out\": 2}" >> "$DAGSTREAM_REPORT"'
[[nodes]]
id = "review"
kind = "gate"
needs = ["flaky"]
title = "Go on?"
[[nodes]]
id = "after"
kind = "simulate"
needs = ["review"]
duration = "10ms"
"#;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

/// Everything runs on this test's one thread, where the tracing subscriber is set.
#[tokio::test(flavor = "current_thread")]
async fn a_run_exports_its_span_each_node_attempt_and_each_gate_wait() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(dagstream::telemetry::exported()),
    );
    let _default = tracing::subscriber::set_default(subscriber);

    let runs = Runs::new(RoomLimits::default(), EngineConfig::new(common::temp_dir("telemetry")));
    let dag_id = runs.start(DagSpec::parse(SPEC, SpecFormat::Toml).expect("valid")).await.expect("starts");
    let run = runs.get(&dag_id).expect("the run");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while run.room.snapshot().nodes["review"].status != NodeStatus::Waiting {
        assert!(tokio::time::Instant::now() < deadline, "the gate never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let approve = ClientEvent::HumanDecision {
        node_id: "review".into(),
        decision: Decision::Approve,
        feedback: None,
        inputs: None,
    };
    run.handle().expect("driven here").command(approve, "ana").await.expect("taken");
    tokio::time::timeout(Duration::from_secs(20), run.room.completed()).await.expect("the run ends");
    // The coordinator closes the run's span as its last child ends: let it get there.
    tokio::time::sleep(Duration::from_millis(100)).await;
    provider.force_flush().expect("flushed");
    let spans = exporter.get_finished_spans().expect("spans");

    let named = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let [run_span] = named("run")[..] else { panic!("one run span: {spans:#?}") };
    assert_eq!(attribute(run_span, "dag_id").as_deref(), Some(dag_id.as_str()));
    assert_eq!(attribute(run_span, "state").as_deref(), Some("completed"));
    let trace_id = run_span.span_context.trace_id();
    assert_eq!(attribute(run_span, "trace_id"), Some(trace_id.to_string()), "the run's span names its trace");
    let children: Vec<&SpanData> = spans.iter().filter(|s| s.name != "run").collect();
    assert!(!children.is_empty());
    for child in &children {
        assert_eq!(child.parent_span_id, run_span.span_context.span_id(), "{} is a child of the run", child.name);
        assert_eq!(child.span_context.trace_id(), trace_id, "one trace");
    }
    let of = |name: &str, node: &str| {
        let mut spans: Vec<&SpanData> =
            named(name).into_iter().filter(|s| attribute(s, "node_id").as_deref() == Some(node)).collect();
        spans.sort_by_key(|s| s.start_time);
        spans
    };
    let flaky = of("node", "flaky");
    let outcomes: Vec<Option<String>> = flaky.iter().map(|s| attribute(s, "status")).collect();
    assert_eq!(outcomes, [Some("retried".into()), Some("completed".into())], "each attempt its own span");
    assert_eq!(attribute(flaky[1], "cost").as_deref(), Some("0.25"));
    assert_eq!(attribute(flaky[1], "tokens_in").as_deref(), Some("40"));
    assert_eq!(attribute(flaky[1], "attempt").as_deref(), Some("2"));
    let gate = of("gate", "review");
    assert_eq!(gate.len(), 1);
    assert_eq!(attribute(gate[0], "status").as_deref(), Some("completed"));
    assert_eq!(of("node", "after").len(), 1);
}

#[test]
fn the_binary_exports_to_an_otlp_collector_and_logs_the_trace_id() {
    let (endpoint, bodies) = common::otlp_collector();
    let spec = std::env::temp_dir().join(format!("dagstream-traced-{}.toml", std::process::id()));
    std::fs::write(&spec, SPEC).expect("spec");
    let data = common::temp_dir("telemetry-bin");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dagstream"))
        .args(["run", "--approve-all", "--log-format", "json", "--otlp-endpoint", &endpoint, "--data"])
        .arg(&data)
        .arg(&spec)
        .env("RUST_LOG", "dagstream=info")
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // The spans arrived before the process ended (it flushes on the way out).
    let bodies = bodies.lock().expect("lock").clone();
    let all: Vec<u8> = bodies.concat();
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!bodies.is_empty(), "nothing reached the collector");
    for needle in ["dagstream", "run", "node", "gate", "flaky", "review", "after"] {
        assert!(has(needle), "{needle:?} is not in what was exported");
    }
    // The run's lines carry its trace id, the one the spans have.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let ended =
        stderr.lines().find(|line| line.contains("run ended")).unwrap_or_else(|| panic!("no end line: {stderr}"));
    let line: serde_json::Value = serde_json::from_str(ended).expect("a JSON line");
    let trace_id = line["span"]["trace_id"].as_str().unwrap_or_else(|| panic!("no trace id: {ended}")).to_owned();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    let raw = (0..16).map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).expect("hex")).collect::<Vec<u8>>();
    assert!(all.windows(16).any(|w| w == raw.as_slice()), "the exported spans are in trace {trace_id}");
}
