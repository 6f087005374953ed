//! `GET /metrics`: Prometheus's text format, read back with a Prometheus text parser after a
//! run with a gate went through; admins only.

#![cfg(feature = "ssr")]

mod common;

use std::time::Duration;

use dagstream::engine::EngineConfig;
use dagstream::hub::RoomLimits;
use dagstream::protocol::{Role, ServerEvent, ServerEventBody};
use dagstream::server::StreamConfig;
use dagstream::server::auth::UsersFile;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use common::{Backend, TOKEN};

/// The value of the sample `name` whose labels include `labels` (0 when absent).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

fn scrape(addr: &str, token: &str) -> (u16, String) {
    let response = common::http_as(addr, token, "GET", "/metrics", None, "");
    let status = common::status_of(&response);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_in_the_prometheus_format_after_a_run() {
    let mut users = UsersFile::default();
    let viewer = users.add("vera", Role::Viewer, &[]).expect("viewer");
    let mut settings = dagstream::server::AuthSettings::with_admin_token(TOKEN);
    settings.users = users.users;
    let engine = EngineConfig::new(std::env::temp_dir().join("dagstream-metrics"));
    let (runs, _database) = common::stored_runs(Backend::Sqlite, "metrics", RoomLimits::default(), engine).await;
    let served = common::serve_in_process(runs, settings, StreamConfig::default()).await;
    let addr = served.addr.to_string();

    let spec = "name = \"m\"\n[[nodes]]\nid = \"work\"\nkind = \"simulate\"\ncost = 0.5\n[[nodes]]\nid = \"review\"\nkind = \"gate\"\nneeds = [\"work\"]\n";
    let dag_id = common::dag_id_of(&common::http(&addr, "POST", "/api/dags", Some("application/toml"), spec));
    let url = format!("ws://{addr}/api/dags/{dag_id}/stream");
    let (mut socket, _) = tokio_tungstenite::connect_async(common::ws_request(&url)).await.expect("a stream");
    // Once the gate waits (it may wait already in the snapshot), it is approved.
    loop {
        let message =
            tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("events").expect("open");
        let Message::Text(text) = message.expect("readable") else { continue };
        let event: ServerEvent = serde_json::from_str(text.as_str()).expect("an event");
        match event.body {
            ServerEventBody::HumanGateWaiting { .. } => break,
            ServerEventBody::Snapshot { run } if run.nodes["review"].gate.is_some() => break,
            _ => {}
        }
    }
    let approve = r#"{"type":"human_decision","node_id":"review","decision":"approve"}"#;
    socket.send(Message::text(approve)).await.expect("sent");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !common::http_get(&addr, &format!("/api/dags/{dag_id}")).contains("\"state\":\"completed\"") {
        assert!(tokio::time::Instant::now() < deadline, "the run did not complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(scrape(&addr, &viewer).0, 403, "viewers read no metrics");
    let (status, text) = scrape(&addr, TOKEN);
    assert_eq!(status, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    assert!(sample(&scrape, "dagstream_runs", &[("state", "completed")]) >= 1.0, "{text}");
    assert!(sample(&scrape, "dagstream_nodes_total", &[("event", "started")]) >= 1.0, "{text}");
    assert!(sample(&scrape, "dagstream_nodes_total", &[("event", "finished")]) >= 2.0, "{text}");
    assert!(sample(&scrape, "dagstream_events_appended_total", &[]) >= 5.0, "{text}");
    assert!(sample(&scrape, "dagstream_commit_seconds", &[]) >= 1.0, "commit latencies: {text}");
    assert!(sample(&scrape, "dagstream_gate_wait_seconds", &[]) >= 1.0, "gate waits: {text}");
    assert!(sample(&scrape, "dagstream_subscribers", &[]) >= 1.0, "this test's stream: {text}");
    assert!(sample(&scrape, "dagstream_spend", &[]) >= 0.5, "{text}");
    assert!(text.contains("dagstream_fanout_queue_depth"), "{text}");
}
