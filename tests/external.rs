//! External engines: a run created with `"external": true` is driven over
//! `/api/dags/{dag_id}/engine` by a program other than dagstream. Driven here from Rust the way
//! `examples/external_engine.py` drives it.

#![cfg(feature = "ssr")]

mod common;

use std::time::Duration;

use dagstream::engine::EngineConfig;
use dagstream::hub::RoomLimits;
use dagstream::protocol::{NodeStatus, Role, ServerEvent, ServerEventBody};
use dagstream::runs::Runs;
use dagstream::server::StreamConfig;
use dagstream::server::auth::UsersFile;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use common::{InProcess, TOKEN};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATIENCE: Duration = Duration::from_secs(10);

struct Setup {
    server: InProcess,
    engine_token: String,
    viewer_token: String,
}

async fn setup(name: &str) -> Setup {
    let mut users = UsersFile::default();
    let engine_token = users.add("robot", Role::Engine, &[]).expect("engine user");
    let viewer_token = users.add("vera", Role::Viewer, &[]).expect("viewer user");
    let mut auth = dagstream::server::AuthSettings::with_admin_token(TOKEN);
    auth.users = users.users;
    let runs =
        Runs::new(RoomLimits::default(), EngineConfig::new(std::env::temp_dir().join(format!("dagstream-ext-{name}"))));
    let server = common::serve_in_process(runs, auth, StreamConfig::default()).await;
    Setup { server, engine_token, viewer_token }
}

/// `POST /api/dags` with a JSON body: the status and the answer.
async fn post_json(setup: &Setup, token: &str, body: &Value) -> (u16, Value) {
    let addr = setup.server.addr;
    let (token, body) = (token.to_owned(), body.to_string());
    let response = tokio::task::spawn_blocking(move || {
        common::http_as(&addr.to_string(), &token, "POST", "/api/dags", Some("application/json"), &body)
    })
    .await
    .expect("request");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (common::status_of(&response), serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn connect(setup: &Setup, path: &str, token: &str) -> Result<Socket, WsError> {
    let mut request = format!("ws://{}{path}", setup.server.addr).into_client_request().expect("url");
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    connect_async(request).await.map(|(socket, _)| socket)
}

async fn next_text(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(PATIENCE, socket.next()).await.expect("in time").expect("open").expect("ok") {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("json"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn next_event(socket: &mut Socket) -> ServerEvent {
    serde_json::from_value(next_text(socket).await).expect("a server event")
}

async fn send(socket: &mut Socket, value: Value) {
    socket.send(Message::text(value.to_string())).await.expect("send");
}

fn three_steps() -> Value {
    json!({"external": true, "name": "three steps", "budget": 1.0, "nodes": [
        {"id": "fetch", "label": "Fetch"},
        {"id": "review", "kind": "gate", "needs": ["fetch"]},
        {"id": "publish", "needs": ["review"]}
    ]})
}

fn node_state(id: &str, status: &str) -> Value {
    json!({"type": "node_state", "node_id": id, "status": status})
}

#[tokio::test]
async fn an_external_engine_drives_a_run_with_a_gate_and_gets_the_decision() {
    let setup = setup("drive").await;
    assert_eq!(post_json(&setup, &setup.viewer_token, &three_steps()).await.0, 403, "viewers create nothing");
    let (status, created) = post_json(&setup, &setup.engine_token, &three_steps()).await;
    assert_eq!(status, 201, "{created}");
    let dag_id = created["dag_id"].as_str().expect("dag_id").to_owned();
    let bad = json!({"external": true, "name": "x", "nodes": [{"id": "a", "needs": ["a"]}]});
    assert_eq!(post_json(&setup, TOKEN, &bad).await.0, 400, "a broken graph is refused");

    let mut engine = connect(&setup, &format!("/api/dags/{dag_id}/engine"), &setup.engine_token).await.expect("engine");
    assert_eq!(next_event(&mut engine).await.seq, 0, "the engine starts from a snapshot");
    let refused = connect(&setup, &format!("/api/dags/{dag_id}/engine"), TOKEN).await;
    assert!(matches!(refused, Err(WsError::Http(ref r)) if r.status() == 409), "one engine at a time");
    let mut dashboard = connect(&setup, &format!("/api/dags/{dag_id}/stream"), TOKEN).await.expect("dashboard");
    assert!(matches!(next_event(&mut dashboard).await.body, ServerEventBody::Snapshot { .. }));

    send(&mut engine, node_state("fetch", "running")).await;
    // Progress on a running node is ordinary traffic.
    send(
        &mut engine,
        json!({"type": "node_state", "node_id": "fetch", "status": "running", "output": {"progress": 0.5}}),
    )
    .await;
    send(&mut engine, json!({"type": "node_state", "node_id": "ghost", "status": "running"})).await;
    let error = next_event(&mut engine).await;
    assert!(matches!(&error.body, ServerEventBody::Error { message, .. } if message.contains("ghost")), "{error:?}");
    send(&mut engine, json!({"type": "dag_mutated", "mutation": {"op": "add_edge", "from": "publish", "to": "fetch"}}))
        .await;
    assert!(
        matches!(next_event(&mut engine).await.body, ServerEventBody::Error { ref message, .. } if message.contains("cycle"))
    );
    send(&mut engine, json!({"type": "cost_update", "spent": 0.25, "budget": 1.0, "remaining": 0.75})).await;
    send(&mut engine, node_state("fetch", "completed")).await;
    send(&mut engine, json!({"type": "edge_active", "from": "fetch", "to": "review"})).await;
    send(
        &mut engine,
        json!({"type": "human_gate_waiting", "node_id": "review",
        "presentation": {"title": "Publish?", "prompt": "Fetched.", "options": ["approve", "reject"]}}),
    )
    .await;

    // The dashboard sees exactly the good events, numbered without gaps.
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let event = next_event(&mut dashboard).await;
        assert_eq!(event.seq, seen.len() as u64 + 1, "contiguous seq: {event:?}");
        seen.push(event);
    }
    assert!(seen.iter().all(|e| !matches!(e.body, ServerEventBody::Error { .. })), "refused events go nowhere");
    assert!(matches!(seen[5].body, ServerEventBody::HumanGateWaiting { .. }));

    // A decision on the dashboard reaches the engine, with who made it.
    send(&mut dashboard, json!({"type": "human_decision", "node_id": "fetch", "decision": "approve"})).await;
    assert!(
        matches!(next_event(&mut dashboard).await.body, ServerEventBody::Error { .. }),
        "fetch is not a waiting gate"
    );
    send(&mut dashboard, json!({"type": "human_decision", "node_id": "review", "decision": "approve"})).await;
    let command = next_text(&mut engine).await;
    assert_eq!(
        command,
        json!({"type": "human_decision", "node_id": "review", "decision": "approve", "actor": "admin"})
    );

    // The engine goes away mid-run: the run says so; it comes back and finishes.
    drop(engine);
    let note = next_event(&mut dashboard).await;
    assert!(
        matches!(&note.body, ServerEventBody::Error { node_id: None, message } if message.contains("disconnected")),
        "{note:?}"
    );
    let mut engine =
        connect(&setup, &format!("/api/dags/{dag_id}/engine"), &setup.engine_token).await.expect("reconnect");
    let resumed = next_event(&mut engine).await;
    match resumed.body {
        ServerEventBody::Snapshot { run } => assert_eq!(run.nodes["review"].status, NodeStatus::Waiting),
        other => panic!("a snapshot first, got {other:?}"),
    }
    send(
        &mut engine,
        json!({"type": "gate_resolved", "node_id": "review", "decision": "approve",
        "decided_by": "admin", "decided_at": "2026-11-26T10:00:00Z"}),
    )
    .await;
    send(&mut engine, node_state("review", "completed")).await;
    send(&mut engine, node_state("publish", "running")).await;
    send(&mut engine, node_state("publish", "completed")).await;
    send(&mut engine, json!({"type": "execution_complete", "results": {"publish": {"url": "https://example.com"}}}))
        .await;
    loop {
        if matches!(next_event(&mut dashboard).await.body, ServerEventBody::ExecutionComplete { .. }) {
            break;
        }
    }
    send(&mut engine, node_state("publish", "running")).await;
    assert!(
        matches!(next_event(&mut engine).await.body, ServerEventBody::Error { ref message, .. } if message.contains("ended"))
    );
    let state = setup.server.state.service.runs().get(&dag_id).expect("run").room.snapshot();
    assert!(state.nodes.values().all(|n| n.status == NodeStatus::Completed));
    assert_eq!(state.decisions.len(), 1);
    assert_eq!(state.cost.spent, 0.25);
}

#[tokio::test]
async fn the_engine_endpoint_is_for_external_runs_and_engine_roles_only() {
    let setup = setup("refusals").await;
    let spec = json!({"name": "internal", "nodes": [{"id": "a", "kind": "simulate", "duration": "1s"}]});
    let (status, created) = post_json(&setup, TOKEN, &spec).await;
    assert_eq!(status, 201, "{created}");
    let internal = created["dag_id"].as_str().expect("dag_id").to_owned();
    let refused = connect(&setup, &format!("/api/dags/{internal}/engine"), TOKEN).await;
    assert!(matches!(refused, Err(WsError::Http(ref r)) if r.status() == 409), "dagstream runs this one itself");
    let (_, created) = post_json(&setup, TOKEN, &three_steps()).await;
    let external = created["dag_id"].as_str().expect("dag_id").to_owned();
    let viewer = connect(&setup, &format!("/api/dags/{external}/engine"), &setup.viewer_token).await;
    assert!(matches!(viewer, Err(WsError::Http(ref r)) if r.status() == 403));
    // Without an engine, a dashboard's decision is refused, not lost silently.
    let mut dashboard = connect(&setup, &format!("/api/dags/{external}/stream"), TOKEN).await.expect("dashboard");
    let _ = next_event(&mut dashboard).await;
    send(&mut dashboard, json!({"type": "pause_execution"})).await;
    match next_event(&mut dashboard).await.body {
        ServerEventBody::Error { message, .. } => assert!(message.contains("not connected"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_external_run_survives_a_restart_and_waits_for_its_engine() {
    use dagstream::external::ExternalRun;
    use dagstream::store::SqliteStore;
    use std::sync::Arc;
    let dir = common::temp_dir("external-restart");
    let open = || async {
        let store = SqliteStore::open(&dir.join("db.sqlite")).await.expect("store");
        Runs::open(RoomLimits::default(), EngineConfig::new(dir.join("runs")), Arc::new(store)).await.expect("runs")
    };
    let runs = open().await;
    let dag_id = runs.start_external(ExternalRun::from_value(three_steps()).expect("valid")).await.expect("created");
    let room = runs.get(&dag_id).expect("run").room;
    room.publish(ServerEventBody::NodeState {
        node_id: "fetch".into(),
        status: NodeStatus::Completed,
        output: None,
        metrics: None,
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while room.snapshot().seq < 1 {
        assert!(tokio::time::Instant::now() < deadline, "committed in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop((room, runs));
    let runs = open().await;
    let entry = runs.get(&dag_id).expect("restored");
    assert!(
        matches!(entry.driver, dagstream::runs::Driver::External(_)),
        "dagstream does not execute it; an engine may connect again"
    );
    let state = entry.room.snapshot();
    assert_eq!((state.name.as_str(), state.seq), ("three steps", 1));
    assert_eq!(state.nodes["fetch"].status, NodeStatus::Completed);
    assert_eq!(state.nodes["review"].kind, dagstream::protocol::NodeKind::Gate);
}

/// The Python example engine (`examples/external_engine.py`) against a real server: it creates
/// its run, reports the first step, waits at the gate; a dashboard approves; it finishes.
/// Needs Python with `websockets` (`make test` sets it up in `end2end/.venv`).
#[tokio::test]
async fn the_python_example_engine_runs_its_dag_through_the_gate() {
    let python = std::env::var("DAGSTREAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_websockets = std::process::Command::new(&python).args(["-c", "import websockets"]).status();
    assert!(
        has_websockets.is_ok_and(|s| s.success()),
        "{python} cannot import websockets: run `make setup-test`, or point DAGSTREAM_PYTHON at a Python that has it"
    );
    let setup = setup("python").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/external_engine.py");
    let mut child = tokio::process::Command::new(&python)
        .arg(script)
        .arg(format!("http://{}", setup.server.addr))
        .env("DAGSTREAM_TOKEN", &setup.engine_token)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let dag_id = loop {
        if let Some(run) = setup.server.state.service.runs().list().first() {
            break run.dag_id.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the example created no run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut dashboard = connect(&setup, &format!("/api/dags/{dag_id}/stream"), TOKEN).await.expect("dashboard");
    loop {
        let event = next_event(&mut dashboard).await;
        let waiting = match &event.body {
            ServerEventBody::Snapshot { run } => run.nodes["review"].status == NodeStatus::Waiting,
            ServerEventBody::HumanGateWaiting { node_id, .. } => node_id == "review",
            _ => false,
        };
        if waiting {
            break;
        }
    }
    send(&mut dashboard, json!({"type": "human_decision", "node_id": "review", "decision": "approve"})).await;
    while !matches!(next_event(&mut dashboard).await.body, ServerEventBody::ExecutionComplete { .. }) {}
    let status = tokio::time::timeout(PATIENCE, child.wait()).await.expect("the example ends").expect("status");
    assert!(status.success(), "the example exits 0");
    let state = setup.server.state.service.runs().get(&dag_id).expect("run").room.snapshot();
    assert!(state.nodes.values().all(|n| n.status == NodeStatus::Completed), "{:?}", state.nodes);
    assert_eq!(state.decisions[0].decided_by, "admin");
}

#[tokio::test]
async fn an_external_gate_with_a_quorum_and_a_form_gets_checked_decisions_with_their_values() {
    let setup = setup("quorum-form").await;
    let (_, created) = post_json(&setup, &setup.engine_token, &three_steps()).await;
    let dag_id = created["dag_id"].as_str().expect("dag_id").to_owned();
    let mut engine = connect(&setup, &format!("/api/dags/{dag_id}/engine"), &setup.engine_token).await.expect("engine");
    next_event(&mut engine).await;
    let mut dashboard = connect(&setup, &format!("/api/dags/{dag_id}/stream"), TOKEN).await.expect("dashboard");
    next_event(&mut dashboard).await;
    send(&mut engine, node_state("fetch", "completed")).await;
    send(
        &mut engine,
        json!({"type": "human_gate_waiting", "node_id": "review", "presentation": {
            "title": "Publish?", "prompt": "", "options": ["approve", "reject"],
            "approvers": ["admin", "abe"], "approvals": 2,
            "inputs": [{"name": "channel", "type": "enum", "options": ["stable", "beta"]}]}}),
    )
    .await;
    loop {
        if matches!(next_event(&mut dashboard).await.body, ServerEventBody::HumanGateWaiting { .. }) {
            break;
        }
    }

    // A value that does not fit the card's form never reaches the engine.
    send(
        &mut dashboard,
        json!({"type": "human_decision", "node_id": "review", "decision": "approve", "inputs": {"channel": "nightly"}}),
    )
    .await;
    let refused = next_event(&mut dashboard).await;
    assert!(
        matches!(&refused.body, ServerEventBody::Error { message, .. } if message.contains("field \"channel\"")),
        "{refused:?}"
    );
    // A fitting one does, with the values and who sent it: the engine counts it.
    let approve =
        json!({"type": "human_decision", "node_id": "review", "decision": "approve", "inputs": {"channel": "stable"}});
    send(&mut dashboard, approve.clone()).await;
    let mut expected = approve.clone();
    expected["actor"] = json!("admin");
    assert_eq!(next_text(&mut engine).await, expected);
    send(&mut engine, json!({"type": "gate_progress", "node_id": "review", "approved_by": ["admin"], "remaining": 1}))
        .await;
    loop {
        if matches!(next_event(&mut dashboard).await.body, ServerEventBody::GateProgress { .. }) {
            break;
        }
    }
    // The same person again is refused here, by the card's quorum.
    send(&mut dashboard, approve).await;
    let again = next_event(&mut dashboard).await;
    assert!(
        matches!(&again.body, ServerEventBody::Error { message, .. } if message.contains("admin already approved")),
        "{again:?}"
    );
}
