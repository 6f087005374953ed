//! The whole server path over real sockets: REST, the WebSocket stream, resync and commands.
//! Each test serves `app()` on port 0 and talks to it with tokio-tungstenite.

#![cfg(feature = "ssr")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Backend, Scratch, TOKEN, ws_request};
use dagstream::engine::{DagSpec, EngineConfig, SpecFormat};
use dagstream::hub::RoomLimits;
use dagstream::protocol::{ClientEvent, Decision, NodeStatus, RunPhase, RunState, Seq, ServerEvent, ServerEventBody};
use dagstream::runs::Runs;
use dagstream::server::{AppState, AuthSettings, StreamConfig, app};
use futures::{SinkExt, StreamExt};
use rstest::rstest;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tower::ServiceExt;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

struct TestServer {
    addr: SocketAddr,
    state: AppState,
    /// Held so streams are not told to shut down.
    _shutdown: watch::Sender<bool>,
    /// The database of a stored server, dropped with it.
    _database: Option<Scratch>,
}

impl TestServer {
    async fn start() -> Self {
        let runs = Runs::new(RoomLimits::default(), EngineConfig::new(std::env::temp_dir().join("dagstream-tests")));
        Self::start_with(runs, StreamConfig::default()).await
    }

    /// A server over a fresh database of `backend`, with these room limits.
    async fn start_stored(backend: Backend, name: &str, limits: RoomLimits, stream: StreamConfig) -> Self {
        let dir = std::env::temp_dir().join(format!("dagstream-stream-{name}-{}", std::process::id()));
        let (runs, database) = common::stored_runs(backend, name, limits, EngineConfig::new(dir.join("runs"))).await;
        let mut server = Self::start_with(runs, stream).await;
        server._database = Some(database);
        server
    }

    async fn start_with(runs: Runs, stream: StreamConfig) -> Self {
        let served = common::serve_in_process(runs, AuthSettings::with_admin_token(TOKEN), stream).await;
        TestServer { addr: served.addr, state: served.state, _shutdown: served.shutdown, _database: None }
    }

    async fn start_run(&self, spec: DagSpec) -> String {
        self.state.service.runs().start(spec).await.expect("test spec is valid")
    }

    fn server_state(&self, dag_id: &str) -> RunState {
        self.state.service.runs().get(dag_id).expect("run exists").room.snapshot()
    }

    async fn connect(&self, dag_id: &str, since: Option<Seq>) -> Socket {
        let query = since.map(|s| format!("?since={s}")).unwrap_or_default();
        let url = format!("ws://{}/api/dags/{dag_id}/stream{query}", self.addr);
        connect_async(ws_request(&url)).await.expect("websocket connects").0
    }
}

/// a, b → review (gate) → c
fn gated_spec() -> DagSpec {
    spec(
        r#"
        name = "gated"
        budget = 1.0
        max_parallel = 2
        [[nodes]]
        id = "a"
        kind = "simulate"
        duration = "20ms"
        cost = 0.1
        [[nodes]]
        id = "b"
        kind = "simulate"
        duration = "30ms"
        cost = 0.2
        [[nodes]]
        id = "review"
        label = "Review"
        kind = "gate"
        needs = ["a", "b"]
        title = "Go on?"
        prompt = "Check a and b."
        [[nodes]]
        id = "c"
        kind = "simulate"
        needs = ["review"]
        duration = "20ms"
        cost = 0.05
        "#,
    )
}

fn spec(toml_text: &str) -> DagSpec {
    DagSpec::parse(toml_text, SpecFormat::Toml).expect("test spec is valid")
}

/// The next event, skipping pings; fails the test after [`PATIENCE`].
async fn next_event(socket: &mut Socket) -> ServerEvent {
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("an event within the patience window")
            .expect("the stream is open")
            .expect("the frame is readable");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("server sends valid events"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads events until `stop` matches one (inclusive); checks `seq` is contiguous on the way.
async fn events_until(socket: &mut Socket, after: Seq, stop: impl Fn(&ServerEvent) -> bool) -> Vec<ServerEvent> {
    let mut events = Vec::new();
    let mut last = after;
    loop {
        let event = next_event(socket).await;
        assert_eq!(event.seq, last + 1, "seq must be contiguous: {event:?}");
        last = event.seq;
        let done = stop(&event);
        events.push(event);
        if done {
            return events;
        }
    }
}

fn is_gate_waiting(event: &ServerEvent) -> bool {
    matches!(event.body, ServerEventBody::HumanGateWaiting { .. })
}

fn is_complete(event: &ServerEvent) -> bool {
    matches!(event.body, ServerEventBody::ExecutionComplete { .. })
}

async fn send(socket: &mut Socket, event: &ClientEvent) {
    let text = serde_json::to_string(event).expect("client events serialize");
    socket.send(Message::text(text)).await.expect("send");
}

/// Expects the snapshot that opens a stream without `since`; returns the state it carries.
async fn expect_snapshot(socket: &mut Socket) -> RunState {
    let event = next_event(socket).await;
    match event.body {
        ServerEventBody::Snapshot { run } => {
            assert_eq!(run.seq, event.seq, "a snapshot carries the seq of its last event");
            *run
        }
        other => panic!("the first message must be a snapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn snapshot_first_then_contiguous_events_and_approve_completes_the_run() {
    let server = TestServer::start().await;
    let dag_id = server.start_run(gated_spec()).await;
    let mut socket = server.connect(&dag_id, None).await;
    let mut client = expect_snapshot(&mut socket).await;

    let before_gate = events_until(&mut socket, client.seq, is_gate_waiting).await;
    send(
        &mut socket,
        &ClientEvent::HumanDecision {
            node_id: "review".into(),
            decision: Decision::Approve,
            feedback: None,
            inputs: None,
        },
    )
    .await;
    let after_gate = events_until(&mut socket, before_gate.last().map_or(client.seq, |e| e.seq), is_complete).await;

    for event in before_gate.iter().chain(&after_gate) {
        client.apply(event);
    }
    assert_eq!(client.state, RunPhase::Completed);
    assert!(client.nodes.values().all(|n| n.status == NodeStatus::Completed), "{:?}", client.nodes);
    assert_eq!(client.decisions.len(), 1);
    assert_eq!(client.decisions[0].decision, Decision::Approve);
    let results = client.results.clone().expect("execution_complete carries results");
    assert!(results.contains_key("c") && results.contains_key("review"));
    assert!((client.cost.spent - 0.35).abs() < 1e-9, "spend is the sum of node costs: {}", client.cost.spent);
    assert_eq!(client, server.server_state(&dag_id), "the folded stream equals the server's state");
    let completes = after_gate.iter().filter(|e| is_complete(e)).count();
    assert_eq!(completes, 1, "execution_complete exactly once");
}

#[tokio::test]
async fn since_replays_exactly_the_missed_events_without_a_snapshot() {
    let server = TestServer::start().await;
    let dag_id = server.start_run(gated_spec()).await;
    // since=0: the whole log from seq 1, as long as the server holds it.
    let mut full = server.connect(&dag_id, Some(0)).await;
    let log = events_until(&mut full, 0, is_gate_waiting).await;
    let gate_seq = log.last().expect("events before the gate").seq;
    assert!(gate_seq > 4, "the run emits several events before its gate");

    // A client that had applied up to seq 3 comes back and gets exactly 4..=gate_seq.
    let mut second = server.connect(&dag_id, Some(3)).await;
    let replay = events_until(&mut second, 3, |e| e.seq == gate_seq).await;
    assert_eq!(replay, log[3..], "the replay is the same events, in order, nothing else");

    // Up to date: nothing is replayed, the next live event follows directly.
    let mut third = server.connect(&dag_id, Some(gate_seq)).await;
    send(&mut third, &ClientEvent::PauseExecution).await;
    let next = next_event(&mut third).await;
    assert_eq!(next.seq, gate_seq + 1);
    assert_eq!(next.body, ServerEventBody::RunStateChanged { state: RunPhase::Paused });

    // A since in the future gets a snapshot.
    let mut fourth = server.connect(&dag_id, Some(gate_seq + 100)).await;
    assert_eq!(expect_snapshot(&mut fourth).await.seq, gate_seq + 1);
}

#[tokio::test]
async fn bad_client_messages_get_a_private_error_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let dag_id = server.start_run(gated_spec()).await;
    let mut socket = server.connect(&dag_id, None).await;
    let mut watcher = server.connect(&dag_id, None).await;
    let start = expect_snapshot(&mut socket).await.seq;
    // The run goes on meanwhile: the watcher's snapshot may be a later one.
    let watcher_start = expect_snapshot(&mut watcher).await.seq;
    let seen = events_until(&mut socket, start, is_gate_waiting).await;
    let position = seen.last().expect("events").seq;

    let bad: [&str; 5] = [
        "this is not json",
        r#"{"type":"launch_missiles"}"#,
        r#"{"type":"human_decision","node_id":"review","decision":"maybe"}"#,
        r#"{"type":"human_decision","node_id":"c","decision":"approve"}"#,
        r#"{"type":"resume_execution"}"#,
    ];
    for text in bad {
        socket.send(Message::text(text)).await.expect("send");
        let reply = next_event(&mut socket).await;
        match &reply.body {
            ServerEventBody::Error { node_id: None, message } => assert!(!message.is_empty()),
            other => panic!("{text:?} must get an error, got {other:?}"),
        }
        assert_eq!(reply.seq, position, "a private reply carries the client's position, never a new seq");
    }
    socket.send(Message::binary(vec![1u8, 2, 3])).await.expect("send");
    assert!(matches!(next_event(&mut socket).await.body, ServerEventBody::Error { node_id: None, .. }));

    // Still open, and nothing changed: the run is still waiting at its gate.
    assert_eq!(server.server_state(&dag_id).seq, position);
    send(&mut socket, &ClientEvent::PauseExecution).await;
    assert_eq!(next_event(&mut socket).await.body, ServerEventBody::RunStateChanged { state: RunPhase::Paused });

    // The other client saw none of the errors, only the pause.
    let watched = events_until(&mut watcher, watcher_start, |e| e.seq == position + 1).await;
    assert!(watched.iter().all(|e| !matches!(e.body, ServerEventBody::Error { .. })));
}

#[tokio::test]
async fn reject_skips_downstream_and_fails_the_run() {
    let server = TestServer::start().await;
    let dag_id = server.start_run(gated_spec()).await;
    let mut socket = server.connect(&dag_id, None).await;
    let mut client = expect_snapshot(&mut socket).await;
    for event in events_until(&mut socket, client.seq, is_gate_waiting).await {
        client.apply(&event);
    }
    send(
        &mut socket,
        &ClientEvent::HumanDecision {
            node_id: "review".into(),
            decision: Decision::Reject,
            feedback: Some("not good enough".into()),
            inputs: None,
        },
    )
    .await;
    for event in events_until(&mut socket, client.seq, is_complete).await {
        client.apply(&event);
    }
    assert_eq!(client.state, RunPhase::Failed);
    assert_eq!(client.nodes["review"].status, NodeStatus::Failed);
    assert_eq!(client.nodes["c"].status, NodeStatus::Skipped);
    assert_eq!(client.decisions[0].feedback.as_deref(), Some("not good enough"));
    assert!(!client.results.expect("results").contains_key("c"));

    // A decided gate takes no second decision.
    send(
        &mut socket,
        &ClientEvent::HumanDecision {
            node_id: "review".into(),
            decision: Decision::Approve,
            feedback: None,
            inputs: None,
        },
    )
    .await;
    assert!(matches!(next_event(&mut socket).await.body, ServerEventBody::Error { node_id: None, .. }));
}

#[tokio::test]
async fn pause_starts_nothing_new_and_resume_goes_on() {
    let server = TestServer::start().await;
    let dag_id = server
        .start_run(spec(
            r#"
        name = "chain"
        max_parallel = 1
        [[nodes]]
        id = "first"
        kind = "simulate"
        duration = "100ms"
        [[nodes]]
        id = "second"
        kind = "simulate"
        needs = ["first"]
        duration = "10ms"
        "#,
        ))
        .await;
    let mut socket = server.connect(&dag_id, None).await;
    let snapshot = expect_snapshot(&mut socket).await;
    send(&mut socket, &ClientEvent::PauseExecution).await;
    let paused = events_until(&mut socket, snapshot.seq, |e| {
        matches!(e.body, ServerEventBody::RunStateChanged { state: RunPhase::Paused })
    })
    .await;
    let first_done = |e: &ServerEvent| matches!(&e.body, ServerEventBody::NodeState { node_id, status: NodeStatus::Completed, .. } if node_id == "first");
    let mut position = paused.last().expect("paused").seq;
    if !paused.iter().any(first_done) {
        position = events_until(&mut socket, position, first_done).await.last().expect("first done").seq;
    }
    // Well past the time "second" would have needed: it has not started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = server.server_state(&dag_id);
    assert_eq!(state.nodes["second"].status, NodeStatus::Pending);
    assert_eq!(state.state, RunPhase::Paused);
    send(&mut socket, &ClientEvent::PauseExecution).await;
    loop {
        // Events published with "first"'s completion (its cost) may still be queued before the reply.
        let event = next_event(&mut socket).await;
        match event.body {
            ServerEventBody::Error { node_id: None, .. } => break,
            ServerEventBody::CostUpdate { .. } => position = event.seq,
            other => panic!("pausing twice must be refused, got {other:?}"),
        }
    }

    send(&mut socket, &ClientEvent::ResumeExecution).await;
    let rest = events_until(&mut socket, position, is_complete).await;
    assert_eq!(rest[0].body, ServerEventBody::RunStateChanged { state: RunPhase::Running });
    assert_eq!(server.server_state(&dag_id).state, RunPhase::Completed);
}

#[tokio::test]
async fn cancel_stops_every_node_and_completes_once() {
    let server = TestServer::start().await;
    let dag_id = server.start_run(gated_spec()).await;
    let mut socket = server.connect(&dag_id, None).await;
    let mut client = expect_snapshot(&mut socket).await;
    send(&mut socket, &ClientEvent::CancelExecution).await;
    for event in events_until(&mut socket, client.seq, is_complete).await {
        client.apply(&event);
    }
    assert_eq!(client.state, RunPhase::Cancelled);
    assert!(client.nodes.values().all(|n| n.status.is_terminal()));
    assert_eq!(client.nodes["c"].status, NodeStatus::Cancelled);
    send(&mut socket, &ClientEvent::ResumeExecution).await;
    assert!(matches!(next_event(&mut socket).await.body, ServerEventBody::Error { .. }));
}

#[tokio::test]
async fn unknown_run_is_refused_with_404_before_the_upgrade() {
    let server = TestServer::start().await;
    let url = format!("ws://{}/api/dags/no-such-run/stream", server.addr);
    match connect_async(ws_request(&url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::NOT_FOUND)
        }
        other => panic!("expected a 404, got {other:?}"),
    }
}

async fn request(router: axum::Router, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
    request_with(router, method, uri, None, "").await
}

async fn request_with(
    router: axum::Router,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut builder = Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {TOKEN}"));
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    let request = builder.body(Body::from(body.to_owned())).expect("request");
    let response = router.oneshot(request).await.expect("router answers");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// A page as the browser gets it: status and HTML.
async fn page(router: axum::Router, uri: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("accept", "text/html")
        .body(Body::empty())
        .expect("request");
    let response = router.oneshot(request).await.expect("router answers");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn the_path_picks_the_page_and_other_paths_are_not_found() {
    let server = TestServer::start().await;
    let dag_id = server.start_run(gated_spec()).await;
    let router = app(server.state.clone());

    let (status, list) = page(router.clone(), "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(list.contains("data-testid=\"start-panel\""), "the run list");
    assert!(list.contains(&format!("href=\"/dags/{dag_id}\"")), "the list links to the run's page");
    assert!(!list.contains("data-testid=\"run-view\""));

    let (status, run) = page(router.clone(), &format!("/dags/{dag_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(run.contains("data-testid=\"run-view\"") && run.contains("<h1>gated</h1>"), "the run's page");
    assert!(!run.contains("data-testid=\"start-panel\""));

    let (status, missing_run) = page(router.clone(), "/dags/no-such-run").await;
    assert_eq!(status, StatusCode::OK);
    assert!(missing_run.contains("There is no such run."));

    for path in ["/elsewhere", "/dags/", &format!("/dags/{dag_id}/more")] {
        let (status, html) = page(router.clone(), path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(html.contains("Page not found.") && !html.contains("data-testid=\"run-view\""), "{path}: {html}");
    }
}

#[tokio::test]
async fn rest_starts_lists_and_reads_runs() {
    let server = TestServer::start().await;
    let router = app(server.state.clone());

    let (status, body) = request(router.clone(), "POST", "/api/dags?example=demo").await;
    assert_eq!(status, StatusCode::CREATED);
    let dag_id = body["dag_id"].as_str().expect("dag_id in the answer").to_owned();

    let (status, body) = request(router.clone(), "GET", "/api/dags").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["dag_id"], dag_id.as_str());
    assert_eq!(body[0]["name"], "demo");
    assert_eq!(body[0]["nodes_total"], 8);

    let (status, body) = request(router.clone(), "GET", &format!("/api/dags/{dag_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["nodes"]["review"].is_object());

    for (uri, expected) in [("/api/dags", StatusCode::BAD_REQUEST), ("/api/dags?example=nope", StatusCode::BAD_REQUEST)]
    {
        let (status, body) = request(router.clone(), "POST", uri).await;
        assert_eq!(status, expected, "{uri}");
        assert!(body["error"].as_str().is_some_and(|m| !m.is_empty()), "{uri} explains itself");
    }
    assert_eq!(server.state.service.runs().list().len(), 1, "bad requests started nothing");

    // A spec in the body, as TOML or as JSON.
    let toml_spec = "name = \"posted\"\n[[nodes]]\nid = \"only\"\nkind = \"simulate\"\n";
    let (status, body) = request_with(router.clone(), "POST", "/api/dags", Some("application/toml"), toml_spec).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let json_spec = r#"{"name": "posted-json", "nodes": [{"id": "only", "kind": "simulate"}]}"#;
    let (status, _) = request_with(router.clone(), "POST", "/api/dags", Some("application/json"), json_spec).await;
    assert_eq!(status, StatusCode::CREATED);
    let invalid = "name = \"bad\"\n[[nodes]]\nid = \"a\"\nkind = \"simulate\"\nneeds = [\"ghost\"]\n";
    let (status, body) = request_with(router.clone(), "POST", "/api/dags", Some("application/toml"), invalid).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"].as_str().expect("a message");
    assert!(message.contains("\"a\"") && message.contains("needs") && message.contains("ghost"), "{message}");
    let (status, _) = request_with(router.clone(), "POST", "/api/dags", Some("text/plain"), toml_spec).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(server.state.service.runs().list().len(), 3, "only the two valid specs started");
    let (status, _) = request(router.clone(), "GET", "/api/dags/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = request(router.clone(), "GET", "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = request(router, "GET", &format!("/api/dags/{dag_id}/stream?since=abc")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_run_page_is_rendered_on_the_server_with_node_names_and_statuses() {
    let server = TestServer::start().await;
    let dag_id = server.start_run(gated_spec()).await;
    let router = app(server.state.clone());
    let request = Request::builder()
        .uri(format!("/dags/{dag_id}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request");
    let response = router.oneshot(request).await.expect("router answers");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.expect("body");
    let html = String::from_utf8_lossy(&bytes);
    assert!(html.contains("Review"), "node labels are in the HTML");
    assert!(html.contains(r#"data-testid="node-a""#));
    assert!(html.contains("data-status="), "statuses are in the HTML");
}

#[tokio::test]
async fn server_functions_answer_at_their_fixed_endpoints() {
    let server = TestServer::start().await;
    let dag_id = server.start_run(gated_spec()).await;
    let mut subscription = server.state.service.runs().get(&dag_id).expect("run").room.subscribe(Some(0));
    if subscription.backlog.is_empty() {
        tokio::time::timeout(PATIENCE, subscription.live.recv())
            .await
            .expect("the run's first event within the patience")
            .expect("the room is open");
    }
    let router = app(server.state.clone());
    let form = Some("application/x-www-form-urlencoded");
    let (status, events) =
        request_with(router.clone(), "POST", "/api/run_events", form, &format!("dag_id={dag_id}&up_to=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(events.as_array().is_some_and(|e| e.len() == 1), "one event as JSON, not a page: {events}");
    let (status, run) = request_with(router, "POST", "/api/get_run", form, &format!("dag_id={dag_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["state"]["dag_id"], dag_id.as_str());
    assert_eq!(run["partial"], false, "a small run's page comes with every node");
}

/// A client's mistake through a server function is a 4xx with the reason, as through REST,
/// never a 500 (the server logs a 500 as its own failure).
#[tokio::test]
async fn server_functions_answer_a_clients_mistake_with_a_4xx_and_the_reason() {
    let server = TestServer::start().await;
    let router = app(server.state.clone());
    let form = Some("application/x-www-form-urlencoded");
    let bad_spec = "text=name+%3D+%22x%22%0A%5B%5Bnodes%5D%5D%0Aid+%3D+%22only%22%0Akind+%3D+%22simulate%22%0Aneeds+%3D+%5B%22ghost%22%5D%0A&format=toml";
    let (status, error) = request_with(router.clone(), "POST", "/api/start_spec", form, bad_spec).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let (status, _) = request_with(router.clone(), "POST", "/api/start_example", form, "name=nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, events) =
        request_with(router.clone(), "POST", "/api/run_events", form, "dag_id=nothing&up_to=3").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{events}");
    let (status, run) = request_with(router, "POST", "/api/get_run", form, "dag_id=nothing").await;
    assert_eq!((status, run), (StatusCode::OK, serde_json::Value::Null), "an unknown run is no run, not an error");
    assert!(server.state.service.list().is_empty(), "nothing started");
}

/// `n` zero-cost simulate nodes, each after one or two random earlier ones.
fn wide_random_spec(n: usize, duration: &str, seed: u64) -> DagSpec {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut text = String::from("name = \"many\"\nmax_parallel = 4\n");
    for i in 0..n {
        text.push_str(&format!("[[nodes]]\nid = \"n{i}\"\nkind = \"simulate\"\nduration = \"{duration}\"\n"));
        if i > 0 {
            let a = rng.random_range(0..i);
            let b = rng.random_range(0..i);
            let needs: Vec<String> =
                if a == b { vec![format!("\"n{a}\"")] } else { vec![format!("\"n{a}\""), format!("\"n{b}\"")] };
            text.push_str(&format!("needs = [{}]\n", needs.join(", ")));
        }
    }
    spec(&text)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_hundred_forced_disconnects_never_lose_or_repeat_an_event(#[case] backend: Backend) {
    use rand::{Rng, SeedableRng};
    // A small window, so most reconnects replay from the database.
    let limits = RoomLimits { log_window: 16, subscriber_queue: 1024, ..RoomLimits::default() };
    let server = TestServer::start_stored(backend, "disconnects", limits, StreamConfig::default()).await;
    let dag_id = server.start_run(wide_random_spec(160, "3ms", 11)).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut client: Option<RunState> = None;
    let mut disconnects = 0;
    loop {
        let mut socket = server.connect(&dag_id, client.as_ref().map(|c| c.seq)).await;
        if client.is_none() {
            client = Some(expect_snapshot(&mut socket).await);
        }
        let state = client.as_mut().expect("have a state");
        let take = rng.random_range(1..=5);
        let mut complete = false;
        for _ in 0..take {
            let event = next_event(&mut socket).await;
            assert_eq!(event.seq, state.seq + 1, "after {disconnects} disconnects: gap or duplicate at {event:?}");
            assert_eq!(state.apply(&event), dagstream::protocol::Applied::Folded);
            if matches!(event.body, ServerEventBody::ExecutionComplete { .. }) {
                complete = true;
                break;
            }
        }
        drop(socket);
        if complete {
            break;
        }
        disconnects += 1;
    }
    assert!(disconnects >= 100, "only {disconnects} disconnects; make the run longer");
    let client = client.expect("state");
    assert_eq!(client, server.server_state(&dag_id), "after {disconnects} disconnects the client equals the server");
}

#[tokio::test]
async fn two_decisions_on_one_gate_at_the_same_moment_apply_exactly_once() {
    let server = TestServer::start().await;
    let dag_id = server.start_run(gated_spec()).await;
    let mut first = server.connect(&dag_id, None).await;
    let mut second = server.connect(&dag_id, None).await;
    let start = expect_snapshot(&mut first).await.seq;
    // The run goes on meanwhile: the second snapshot may be a later one.
    let second_start = expect_snapshot(&mut second).await.seq;
    let waiting = events_until(&mut first, start, is_gate_waiting).await;
    let position = waiting.last().expect("events").seq;
    events_until(&mut second, second_start, |e| e.seq == position).await;

    let approve = ClientEvent::HumanDecision {
        node_id: "review".into(),
        decision: Decision::Approve,
        feedback: None,
        inputs: None,
    };
    let reject = ClientEvent::HumanDecision {
        node_id: "review".into(),
        decision: Decision::Reject,
        feedback: None,
        inputs: None,
    };
    tokio::join!(send(&mut first, &approve), send(&mut second, &reject));

    let resolved_in = |events: &[ServerEvent]| {
        events.iter().filter(|e| matches!(e.body, ServerEventBody::GateResolved { .. })).count()
    };
    let mut seen = [Vec::new(), Vec::new()];
    for (socket, seen) in [&mut first, &mut second].into_iter().zip(seen.iter_mut()) {
        // Read until the run has ended (either decision ends it: approve completes, reject fails).
        loop {
            let event = next_event(socket).await;
            let done = is_complete(&event);
            seen.push(event);
            if done {
                break;
            }
        }
    }
    assert_eq!(resolved_in(&seen[0]), 1, "every viewer gets gate_resolved once");
    assert_eq!(resolved_in(&seen[1]), 1);
    let state = server.server_state(&dag_id);
    assert_eq!(state.decisions.len(), 1, "exactly one decision is applied and recorded");
    let refusals: Vec<String> = seen
        .iter()
        .flatten()
        .filter_map(|e| match &e.body {
            ServerEventBody::Error { node_id: None, message } => Some(message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(refusals.len(), 1, "the other sender is told: {refusals:?}");
    assert!(refusals[0].contains("already decided by admin"), "{}", refusals[0]);
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_dropped_with_4008_while_another_keeps_up() {
    let limits = RoomLimits { log_window: 64, subscriber_queue: 32, socket_backlog: 32 * 1024 };
    let runs = Runs::new(limits, EngineConfig::new(std::env::temp_dir().join("dagstream-tests-slow")));
    let server = TestServer::start_with(runs, StreamConfig::default()).await;
    let mut text = String::from("name = \"flood\"\n");
    for i in 0..20_000 {
        text.push_str(&format!("[[nodes]]\nid = \"n{i}\"\nkind = \"simulate\"\n"));
        if i > 0 {
            text.push_str(&format!("needs = [\"n{}\"]\n", i - 1));
        }
    }
    let spec = spec(&text);
    // The slow client reads nothing, with a small receive buffer so the server's writes back up.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(server.addr).await.expect("connect");
    let dag_id = server.start_run(spec).await;
    let url = format!("ws://{}/api/dags/{dag_id}/stream", server.addr);
    let (mut slow, _) =
        tokio_tungstenite::client_async(ws_request(&url), MaybeTlsStream::Plain(stream)).await.expect("slow ws");
    let mut fast = server.connect(&dag_id, None).await;
    let start = expect_snapshot(&mut fast).await.seq;
    let fast_events = events_until(&mut fast, start, is_complete).await;
    assert!(fast_events.len() > 50_000, "the reader that keeps up gets everything");

    let mut last_seq = 0;
    let code = loop {
        let message = tokio::time::timeout(PATIENCE, slow.next()).await.expect("in time").expect("open").expect("ok");
        match message {
            Message::Text(text) => {
                let event: ServerEvent = serde_json::from_str(text.as_str()).expect("event");
                last_seq = event.seq;
            }
            Message::Close(frame) => break frame.map(|f| u16::from(f.code)),
            _ => {}
        }
    };
    assert_eq!(code, Some(dagstream::protocol::CLOSE_CODE_TOO_SLOW));
    assert!(last_seq < server.server_state(&dag_id).seq, "it was dropped before the end, not slowed down for");
}

#[tokio::test]
async fn an_idle_connection_that_stops_answering_is_closed_within_two_ping_intervals() {
    let interval = Duration::from_millis(200);
    let runs = Runs::new(RoomLimits::default(), EngineConfig::new(std::env::temp_dir().join("dagstream-tests-ping")));
    let server =
        TestServer::start_with(runs, StreamConfig { ping_interval: interval, ..StreamConfig::default() }).await;
    let dag_id = server.start_run(gated_spec()).await;
    // Both wait at the gate: no events, only pings.
    let mut answering = server.connect(&dag_id, None).await;
    let mut silent = server.connect(&dag_id, None).await;
    let start = expect_snapshot(&mut answering).await.seq;
    events_until(&mut answering, start, is_gate_waiting).await;

    // The silent client does not read (so it answers no ping) for five intervals.
    let watch_answering = async {
        let deadline = tokio::time::Instant::now() + interval * 5;
        while let Ok(message) = tokio::time::timeout_at(deadline, answering.next()).await {
            if let Some(Ok(Message::Close(frame))) = message {
                panic!("a client that answers pings must stay open, got {frame:?}");
            }
        }
    };
    watch_answering.await;
    let closed = loop {
        match tokio::time::timeout(PATIENCE, silent.next()).await.expect("in time") {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    assert_eq!(closed, Some(1001), "closed for not answering");
}

/// Ten dashboards approve or reject the same waiting gate at the same moment, each on its own
/// connection, on a stored server: the database records one decision, the run applies it once,
/// and each of the nine others is answered with an error naming the winner.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_deciders_at_once_make_exactly_one_decision(#[case] backend: Backend) {
    let server =
        TestServer::start_stored(backend, "ten_deciders", RoomLimits::default(), StreamConfig::default()).await;
    let dag_id = server.start_run(gated_spec()).await;
    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(server.connect(&dag_id, None).await);
    }
    for socket in &mut sockets {
        loop {
            let event = next_event(socket).await;
            let waiting = match &event.body {
                ServerEventBody::Snapshot { run } => run.nodes["review"].status == NodeStatus::Waiting,
                ServerEventBody::HumanGateWaiting { .. } => true,
                _ => false,
            };
            if waiting {
                break;
            }
        }
    }
    let decisions = [Decision::Approve, Decision::Reject];
    let sent = futures::future::join_all(sockets.iter_mut().enumerate().map(|(i, socket)| {
        let command = ClientEvent::HumanDecision {
            node_id: "review".into(),
            decision: decisions[i % 2],
            feedback: None,
            inputs: None,
        };
        socket.send(Message::text(serde_json::to_string(&command).expect("json")))
    }))
    .await;
    assert!(sent.iter().all(Result::is_ok));
    // Each socket sees the one gate_resolved; the nine losers also get an error naming the
    // winner. Read round the sockets until that is so (or the patience runs out).
    let mut resolved: Vec<Option<(String, Decision)>> = vec![None; sockets.len()];
    let mut refused = vec![false; sockets.len()];
    let deadline = std::time::Instant::now() + PATIENCE;
    while (resolved.iter().any(Option::is_none) || refused.iter().filter(|r| **r).count() < 9)
        && std::time::Instant::now() < deadline
    {
        for (i, socket) in sockets.iter_mut().enumerate() {
            let Ok(Some(Ok(Message::Text(text)))) =
                tokio::time::timeout(Duration::from_millis(20), socket.next()).await
            else {
                continue;
            };
            match serde_json::from_str::<ServerEvent>(text.as_str()).expect("valid event").body {
                ServerEventBody::GateResolved { decided_by, decision, .. } => {
                    assert!(resolved[i].replace((decided_by, decision)).is_none(), "resolved once")
                }
                ServerEventBody::Error { message, .. } => {
                    assert!(message.contains("already decided by admin"), "{message}");
                    assert!(!std::mem::replace(&mut refused[i], true), "refused once");
                }
                _ => {}
            }
        }
    }
    let resolved: Vec<(String, Decision)> = resolved.into_iter().map(|r| r.expect("every dashboard sees it")).collect();
    assert!(resolved.windows(2).all(|pair| pair[0] == pair[1]), "the same decision for all: {resolved:?}");
    assert_eq!(refused.iter().filter(|r| **r).count(), 9, "nine deciders are told they were late");
    let state = server.server_state(&dag_id);
    assert_eq!(state.decisions.len(), 1, "one decision in the run");
    let store = server.state.service.runs().store().expect("stored").clone();
    assert_eq!(store.decisions(&dag_id).await.expect("decisions").len(), 1, "one decision in the database");
}
