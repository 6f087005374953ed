//! Who may watch and who may decide, and hostile input: credentials on every route, the origin
//! check, roles, message and rate limits, garbage frames, slow request heads, tokens kept out
//! of logs. Each test serves the app on port 0 the way `serve` does (`listen::serve`).

#![cfg(feature = "ssr")]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dagstream::engine::{DagSpec, EngineConfig, SpecFormat};
use dagstream::hub::RoomLimits;
use dagstream::protocol::{ClientEvent, Decision, NodeStatus, Role, ServerEvent, ServerEventBody};
use dagstream::runs::Runs;
use dagstream::server::auth::UsersFile;
use dagstream::server::{AppState, AuthSettings, StreamConfig, listen};
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use common::{Backend, Scratch, TOKEN, raw_http, status_of};
use rstest::rstest;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATIENCE: Duration = Duration::from_secs(15);

struct Server {
    addr: SocketAddr,
    state: AppState,
    /// Tokens of vera (viewer), abe (approver) and robot (engine); the admin's is [`TOKEN`].
    viewer_token: String,
    approver_token: String,
    engine_token: String,
    _shutdown: watch::Sender<bool>,
    /// Dropped with the server (a PostgreSQL one is dropped from the server).
    _database: Scratch,
}

async fn serve(name: &str, backend: Backend) -> Server {
    serve_with(name, StreamConfig::default(), backend).await
}

/// The app over runs kept in a fresh database of `backend` (sessions too), as `serve` runs it.
async fn serve_with(name: &str, stream: StreamConfig, backend: Backend) -> Server {
    let mut users = UsersFile::default();
    let viewer_token = users.add("vera", Role::Viewer, &[]).expect("viewer");
    let approver_token = users.add("abe", Role::Approver, &[]).expect("approver");
    let engine_token = users.add("robot", Role::Engine, &[]).expect("engine");
    let mut settings = AuthSettings::with_admin_token(TOKEN);
    settings.users = users.users;
    let engine = EngineConfig::new(std::env::temp_dir().join(format!("dagstream-sec-{name}-{backend:?}")));
    let (runs, database) = common::stored_runs(backend, &name.replace('-', "_"), RoomLimits::default(), engine).await;
    let served = common::serve_in_process(runs, settings, stream).await;
    Server {
        addr: served.addr,
        state: served.state,
        viewer_token,
        approver_token,
        engine_token,
        _shutdown: served.shutdown,
        _database: database,
    }
}

fn gated() -> DagSpec {
    let text = r#"
        name = "gated"
        [[nodes]]
        id = "a"
        kind = "simulate"
        duration = "10ms"
        [[nodes]]
        id = "review"
        kind = "gate"
        needs = ["a"]
        title = "Go on?"
        prompt = "Check a."
        [[nodes]]
        id = "c"
        kind = "simulate"
        needs = ["review"]
        duration = "10ms"
    "#;
    DagSpec::parse(text, SpecFormat::Toml).expect("valid")
}

fn ws_request(server: &Server, dag_id: &str, headers: &[(&'static str, String)]) -> Request {
    let mut request = format!("ws://{}/api/dags/{dag_id}/stream", server.addr).into_client_request().expect("url");
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().expect("header value"));
    }
    request
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// The HTTP status a refused WebSocket upgrade gets (panics if it was accepted).
async fn refused_status(request: Request) -> u16 {
    match connect_async(request).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Ok(_) => panic!("the upgrade was accepted"),
        Err(other) => panic!("unexpected failure {other:?}"),
    }
}

async fn next_event(socket: &mut Socket) -> ServerEvent {
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next()).await.expect("in time").expect("open").expect("ok");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("valid event"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn wait_for_status(server: &Server, dag_id: &str, node: &str, status: NodeStatus) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.state.service.runs().get(dag_id).expect("run").room.snapshot().nodes[node].status != status {
        assert!(tokio::time::Instant::now() < deadline, "{node} never became {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn without_credentials_pages_rest_and_websockets_answer_401(#[case] backend: Backend) {
    let server = serve("no-credentials", backend).await;
    let dag_id = server.state.service.runs().start(gated()).await.expect("start");
    let addr = server.addr;
    let page = tokio::task::spawn_blocking(move || {
        raw_http(
            addr,
            &format!("GET /dags/{dag_id} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"),
        )
    })
    .await
    .expect("page");
    assert_eq!(status_of(&page), 401, "{page}");
    assert!(page.contains("data-testid=\"login\""), "a browser is shown the sign-in form");
    let rest = tokio::task::spawn_blocking(move || {
        raw_http(addr, &format!("GET /api/dags HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
    })
    .await
    .expect("rest");
    assert_eq!(status_of(&rest), 401);
    assert!(rest.to_ascii_lowercase().contains("www-authenticate: bearer"));
    let dag_id = server.state.service.runs().list()[0].dag_id.clone();
    assert_eq!(refused_status(ws_request(&server, &dag_id, &[])).await, 401);
    assert_eq!(refused_status(ws_request(&server, &dag_id, &[bearer("wrong-token")])).await, 401);
    let health = tokio::task::spawn_blocking(move || {
        raw_http(addr, &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
    })
    .await
    .expect("health");
    assert_eq!(status_of(&health), 200, "health needs no credentials");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_foreign_origin_is_refused_even_with_a_valid_session_cookie(#[case] backend: Backend) {
    let server = serve("origin", backend).await;
    let dag_id = server.state.service.runs().start(gated()).await.expect("start");
    let addr = server.addr;
    let login = tokio::task::spawn_blocking(move || {
        raw_http(addr, &format!("GET /login?token={TOKEN} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
    })
    .await
    .expect("login");
    assert_eq!(status_of(&login), 303, "{login}");
    let set_cookie =
        login.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect("a session cookie").to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split_once(':').expect("header").1.split(';').next().expect("pair").trim().to_owned();
    let own = ("origin", format!("http://{addr}"));
    let foreign = ("origin", "http://evil.example".to_owned());
    assert_eq!(refused_status(ws_request(&server, &dag_id, &[("cookie", cookie.clone()), foreign])).await, 403);
    assert_eq!(
        refused_status(ws_request(&server, &dag_id, &[("cookie", cookie.clone())])).await,
        403,
        "no Origin is only for bearer tokens"
    );
    let (mut socket, _) =
        connect_async(ws_request(&server, &dag_id, &[("cookie", cookie), own])).await.expect("own origin");
    assert!(matches!(next_event(&mut socket).await.body, ServerEventBody::Snapshot { .. }));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_viewer_decision_is_refused_and_changes_nothing(#[case] backend: Backend) {
    let server = serve("viewer", backend).await;
    let dag_id = server.state.service.runs().start(gated()).await.expect("start");
    wait_for_status(&server, &dag_id, "review", NodeStatus::Waiting).await;
    let (mut socket, _) =
        connect_async(ws_request(&server, &dag_id, &[bearer(&server.viewer_token)])).await.expect("viewer watches");
    let snapshot = next_event(&mut socket).await;
    let decide = ClientEvent::HumanDecision {
        node_id: "review".into(),
        decision: Decision::Approve,
        feedback: None,
        inputs: None,
    };
    socket.send(Message::text(serde_json::to_string(&decide).expect("json"))).await.expect("send");
    match next_event(&mut socket).await.body {
        ServerEventBody::Error { node_id: None, message } => {
            assert!(message.contains("forbidden") && message.contains("vera"), "{message}")
        }
        other => panic!("expected a forbidden error, got {other:?}"),
    }
    socket.send(Message::text(r#"{"type":"cancel_execution"}"#)).await.expect("send");
    assert!(matches!(next_event(&mut socket).await.body, ServerEventBody::Error { .. }), "control is refused too");
    let state = server.state.service.runs().get(&dag_id).expect("run").room.snapshot();
    assert!(state.decisions.is_empty());
    assert_eq!(state.nodes["review"].status, NodeStatus::Waiting);
    assert_eq!(state.seq, snapshot.seq, "no event was produced");
    // An approver's decision goes through and is signed with their name.
    let (mut approver, _) =
        connect_async(ws_request(&server, &dag_id, &[bearer(&server.approver_token)])).await.expect("approver");
    let _ = next_event(&mut approver).await;
    approver.send(Message::text(serde_json::to_string(&decide).expect("json"))).await.expect("send");
    loop {
        if let ServerEventBody::GateResolved { decided_by, .. } = next_event(&mut approver).await.body {
            assert_eq!(decided_by, "abe");
            break;
        }
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_message_over_64_kib_closes_with_1009_and_others_are_still_served(#[case] backend: Backend) {
    let server = serve("too-big", backend).await;
    let dag_id = server.state.service.runs().start(gated()).await.expect("start");
    let (mut big, _) = connect_async(ws_request(&server, &dag_id, &[bearer(TOKEN)])).await.expect("ws");
    let _ = next_event(&mut big).await;
    big.send(Message::text("x".repeat(64 * 1024 + 1))).await.expect("send");
    let code = loop {
        match tokio::time::timeout(PATIENCE, big.next()).await.expect("in time") {
            Some(Ok(Message::Close(Some(frame)))) => break frame.code,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, CloseCode::Size, "1009");
    let (mut other, _) = connect_async(ws_request(&server, &dag_id, &[bearer(TOKEN)])).await.expect("another client");
    assert!(matches!(next_event(&mut other).await.body, ServerEventBody::Snapshot { .. }));
    // Exactly 64 KiB is still a message (answered: it is not an event). The run's own events
    // may come first.
    other.send(Message::text("y".repeat(64 * 1024))).await.expect("send");
    while !matches!(next_event(&mut other).await.body, ServerEventBody::Error { .. }) {}
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn client_events_beyond_the_rate_get_an_error_and_are_dropped(#[case] backend: Backend) {
    let server = serve("rate", backend).await;
    let dag_id = server.state.service.runs().start(gated()).await.expect("start");
    let (mut socket, _) = connect_async(ws_request(&server, &dag_id, &[bearer(TOKEN)])).await.expect("ws");
    let _ = next_event(&mut socket).await;
    for _ in 0..40 {
        socket.send(Message::text(r#"{"type":"no_such_event"}"#)).await.expect("send");
    }
    let mut limited = 0;
    let mut other = 0;
    while limited + other < 40 {
        if let ServerEventBody::Error { message, .. } = next_event(&mut socket).await.body {
            if message.starts_with("too many messages") { limited += 1 } else { other += 1 }
        }
    }
    assert!(limited >= 15, "most of the burst beyond 20 is dropped: {limited} limited, {other} read");
    assert!(other >= 20, "the first 20 are read: {other}");
}

/// A frame a hostile or broken client might send.
fn hostile_frame(rng: &mut StdRng) -> Message {
    const VALID: [&str; 4] = [
        r#"{"type":"human_decision","node_id":"review","decision":"approve"}"#,
        r#"{"type":"pause_execution"}"#,
        r#"{"type":"resume_execution"}"#,
        r#"{"type":"human_decision","node_id":"nope","decision":"modify","feedback":"x"}"#,
    ];
    match rng.random_range(0..6) {
        // Truncated valid events.
        0 => {
            let valid = VALID[rng.random_range(0..VALID.len())];
            Message::text(&valid[..rng.random_range(0..valid.len())])
        }
        // Wrong types in the right shape.
        1 => Message::text(r#"{"type":"human_decision","node_id":7,"decision":["approve"]}"#),
        2 => Message::text(r#"{"type":42}"#),
        // Random text and random bytes.
        3 => Message::text((0..rng.random_range(0..200)).map(|_| rng.random::<char>()).collect::<String>()),
        4 => {
            let mut bytes = vec![0u8; rng.random_range(0..300)];
            rng.fill_bytes(&mut bytes);
            Message::binary(bytes)
        }
        _ => Message::text(format!(
            "{{\"type\":\"human_decision\",\"node_id\":\"{}\"",
            "z".repeat(rng.random_range(0..5000))
        )),
    }
}

/// Ten thousand hostile frames from an approver (who could change the run, were one of them an
/// event), under a rate limit raised so every frame reaches the parser: each gets exactly one
/// answer, the parser's or the frame checker's, and nothing changes.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_garbage_frames_are_answered_while_another_run_completes(#[case] backend: Backend) {
    let stream = StreamConfig { client_events_per_second: 1_000_000, ..StreamConfig::default() };
    let server = Arc::new(serve_with("garbage", stream, backend).await);
    let target = server.state.service.runs().start(gated()).await.expect("start");
    wait_for_status(&server, &target, "review", NodeStatus::Waiting).await;
    // Meanwhile another client drives its own run to the end.
    let honest = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let dag_id = server.state.service.runs().start(gated()).await.expect("start");
            wait_for_status(&server, &dag_id, "review", NodeStatus::Waiting).await;
            let (mut socket, _) = connect_async(ws_request(&server, &dag_id, &[bearer(TOKEN)])).await.expect("ws");
            let _ = next_event(&mut socket).await;
            let approve = ClientEvent::HumanDecision {
                node_id: "review".into(),
                decision: Decision::Approve,
                feedback: None,
                inputs: None,
            };
            socket.send(Message::text(serde_json::to_string(&approve).expect("json"))).await.expect("send");
            while !matches!(next_event(&mut socket).await.body, ServerEventBody::ExecutionComplete { .. }) {}
            dag_id
        })
    };
    let mut rng = StdRng::seed_from_u64(6);
    let (socket, _) =
        connect_async(ws_request(&server, &target, &[bearer(server.approver_token.as_str())])).await.expect("ws");
    let (mut write, mut read) = socket.split();
    let _snapshot = tokio::time::timeout(PATIENCE, read.next()).await.expect("snapshot in time");
    // Reads the answers while the writer sends, so neither side blocks the other.
    let reader = tokio::spawn(async move {
        let mut answers: Vec<String> = Vec::new();
        while answers.len() < 10_000
            && let Ok(Some(Ok(message))) = tokio::time::timeout(PATIENCE, read.next()).await
        {
            match message {
                Message::Text(text) => match serde_json::from_str::<ServerEvent>(text.as_str()) {
                    Ok(ServerEvent { body: ServerEventBody::Error { node_id: None, message }, .. }) => {
                        answers.push(message)
                    }
                    other => panic!("only private errors answer garbage, got {other:?}"),
                },
                Message::Close(_) => break,
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        answers
    });
    let mut sent = 0usize;
    while sent < 10_000 {
        write.send(hostile_frame(&mut rng)).await.expect("the connection stays open");
        sent += 1;
    }
    let answers = reader.await.expect("reader");
    write.send(Message::Close(None)).await.expect("close");
    assert_eq!(answers.len(), sent, "one answer per frame");
    for answer in &answers {
        let from_parser = answer.starts_with("could not read your message");
        let from_checker = answer == "binary messages are not accepted: send JSON text";
        assert!(from_parser || from_checker, "an answer from the parser or the frame checker: {answer}");
    }
    let dag_id = tokio::time::timeout(Duration::from_secs(60), honest).await.expect("in time").expect("honest run");
    let state = server.state.service.runs().get(&dag_id).expect("run").room.snapshot();
    assert!(state.nodes.values().all(|n| n.status == NodeStatus::Completed), "the honest run completed");
    let target_state = server.state.service.runs().get(&target).expect("run").room.snapshot();
    assert_eq!(target_state.nodes["review"].status, NodeStatus::Waiting, "the viewer's garbage changed nothing");
    assert!(target_state.decisions.is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_request_head_sent_slowly_is_cut_off(#[case] backend: Backend) {
    let server = serve("slowloris", backend).await;
    let addr = server.addr;
    let started = std::time::Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("partial head");
        // ...and never finish it.
        let mut buf = [0u8; 256];
        stream.read(&mut buf)
    })
    .await
    .expect("join");
    let waited = started.elapsed();
    assert!(matches!(outcome, Ok(0)), "the server closed the connection without an answer: {outcome:?}");
    assert!(waited >= listen::HEADER_READ_TIMEOUT - Duration::from_secs(1), "not before the deadline: {waited:?}");
    assert!(waited < listen::HEADER_READ_TIMEOUT + Duration::from_secs(5), "cut off at the head deadline: {waited:?}");
}

#[test]
fn tokens_never_reach_the_log() {
    let site = common::stub_site("sec-log-site");
    let data = common::temp_dir("sec-log-data");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dagstream"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(&data)
        .arg("--site-root")
        .arg(&site)
        .env("RUST_LOG", "trace")
        .env("DAGSTREAM_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let addr = loop {
        let line = lines.next().expect("announces").expect("readable");
        if let Some(rest) = line.split("dashboard on http://").nth(1) {
            break rest.trim().to_owned();
        }
    };
    let mut stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let addr: SocketAddr = addr.parse().expect("address");
    let login =
        raw_http(addr, &format!("GET /login?token={TOKEN} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"));
    assert_eq!(status_of(&login), 303);
    let rest = raw_http(
        addr,
        &format!(
            "GET /api/dags HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status_of(&rest), 200);
    let wrong =
        raw_http(addr, &format!("GET /api/dags?token={TOKEN} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"));
    assert_eq!(status_of(&wrong), 401, "a token in the query string signs nothing in but /login");
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join().expect("log");
    assert!(log.contains("signed in"), "the log was captured: {log}");
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn only_admins_start_runs_and_no_commands_refuses_command_specs(#[case] backend: Backend) {
    let server = serve("roles-rest", backend).await;
    let addr = server.addr;
    let viewer = server.viewer_token.clone();
    let body = "name = \"x\"\n[[nodes]]\nid = \"a\"\nkind = \"simulate\"\n";
    let post = move |token: String| {
        raw_http(
            addr,
            &format!(
                "POST /api/dags HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/toml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let refused = tokio::task::spawn_blocking(move || post(viewer)).await.expect("post");
    assert_eq!(status_of(&refused), 403, "{refused}");
    assert!(server.state.service.runs().list().is_empty(), "nothing started");
    let accepted = tokio::task::spawn_blocking(move || post(TOKEN.to_owned())).await.expect("post");
    assert_eq!(status_of(&accepted), 201, "{accepted}");

    let mut config = EngineConfig::new(std::env::temp_dir().join("dagstream-sec-no-commands"));
    config.allow_commands = false;
    let runs = Runs::new(RoomLimits::default(), config);
    let with_command = "name = \"c\"\n[[nodes]]\nid = \"sh\"\nkind = \"command\"\nrun = \"echo hi\"\n";
    let spec = DagSpec::parse(with_command, SpecFormat::Toml).expect("valid");
    let error = runs.start(spec).await.expect_err("refused");
    assert!(error.to_string().contains("--no-commands") && error.to_string().contains("\"sh\""), "{error}");
    assert!(runs.list().is_empty());
    assert!(runs.start(gated()).await.is_ok(), "specs without commands still run");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_viewer_sees_the_run_but_not_the_controls_or_gate_buttons(#[case] backend: Backend) {
    let server = serve("viewer-page", backend).await;
    let dag_id = server.state.service.runs().start(gated()).await.expect("start");
    wait_for_status(&server, &dag_id, "review", NodeStatus::Waiting).await;
    let addr = server.addr;
    let page_for = move |token: String, dag_id: String| {
        raw_http(
            addr,
            &format!(
                "GET /dags/{dag_id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let (viewer, admin) = {
        let (v, d) = (server.viewer_token.clone(), dag_id.clone());
        let viewer = tokio::task::spawn_blocking(move || page_for(v, d)).await.expect("viewer page");
        let d = dag_id.clone();
        let admin = tokio::task::spawn_blocking(move || page_for(TOKEN.to_owned(), d)).await.expect("admin page");
        (viewer, admin)
    };
    assert_eq!(status_of(&viewer), 200);
    assert!(viewer.contains("data-testid=\"gate-review\""), "the viewer sees the waiting gate");
    assert!(viewer.contains("data-testid=\"watch-only\""));
    assert!(!viewer.contains("data-testid=\"approve\"") && !viewer.contains("data-testid=\"pause\""));
    assert!(admin.contains("data-testid=\"approve\"") && admin.contains("data-testid=\"pause\""));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn signing_out_closes_the_sessions_open_sockets(#[case] backend: Backend) {
    let server = serve("logout", backend).await;
    let dag_id = server.state.service.runs().start(gated()).await.expect("start");
    let addr = server.addr;
    let login = tokio::task::spawn_blocking(move || {
        raw_http(addr, &format!("POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\ntoken={TOKEN}", TOKEN.len() + 6))
    })
    .await
    .expect("login");
    assert_eq!(status_of(&login), 303, "{login}");
    let cookie = login
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let (mut socket, _) = connect_async(ws_request(
        &server,
        &dag_id,
        &[("cookie", cookie.clone()), ("origin", format!("http://{addr}"))],
    ))
    .await
    .expect("signed-in socket");
    let _ = next_event(&mut socket).await;
    let logout = tokio::task::spawn_blocking({
        let cookie = cookie.clone();
        move || raw_http(addr, &format!("POST /logout HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
    })
    .await
    .expect("logout");
    assert_eq!(status_of(&logout), 303);
    let code = loop {
        match tokio::time::timeout(PATIENCE, socket.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 4001, "closed as signed out");
    let again =
        connect_async(ws_request(&server, &dag_id, &[("cookie", cookie), ("origin", format!("http://{addr}"))])).await;
    assert!(matches!(again, Err(WsError::Http(ref r)) if r.status() == 401), "the cookie no longer works");
}

/// Every role against every operation, through the interfaces people use: what `Role::allows`
/// says is what each interface does. (Two workers: the plain HTTP requests block one.)
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_do_exactly_what_its_role_allows(#[case] backend: Backend) {
    let server = serve("roles", backend).await;
    let addr = server.addr.to_string();
    let roles = [
        (Role::Viewer, server.viewer_token.clone()),
        (Role::Approver, server.approver_token.clone()),
        (Role::Admin, TOKEN.to_owned()),
        (Role::Engine, server.engine_token.clone()),
    ];
    let spec = "name = \"r\"\n[[nodes]]\nid = \"a\"\nkind = \"simulate\"\nduration = \"5s\"\n";
    let external = r#"{"external": true, "name": "ext", "nodes": [{"id": "a"}]}"#;
    let external_id = common::dag_id_of(&common::http(&addr, "POST", "/api/dags", Some("application/json"), external));
    for (role, token) in &roles {
        let status = |method: &str, path: &str, content_type: Option<&str>, body: &str| {
            status_of(&common::http_as(&addr, token, method, path, content_type, body))
        };
        let expect = |needed: Role, ok: u16| if role.allows(needed) { ok } else { 403 };
        // REST and server functions.
        assert_eq!(status("GET", "/api/dags", None, ""), 200, "{role:?} lists runs");
        assert_eq!(status("GET", &format!("/api/dags/{external_id}"), None, ""), 200, "{role:?} reads a run");
        assert_eq!(
            status("POST", "/api/dags", Some("application/toml"), spec),
            expect(Role::Admin, 201),
            "{role:?} submits a spec"
        );
        assert_eq!(
            status("POST", "/api/dags?example=demo", None, ""),
            expect(Role::Admin, 201),
            "{role:?} starts an example"
        );
        assert_eq!(
            status("POST", "/api/dags", Some("application/json"), external),
            expect(Role::Engine, 201),
            "{role:?} creates an external run"
        );
        let form = Some("application/x-www-form-urlencoded");
        let started = status("POST", "/api/start_example", form, "name=demo");
        // A server function that starts a run answers with a redirect to it.
        assert_eq!(started == 403, !role.allows(Role::Admin), "{role:?} starts an example from the page: {started}");
        // The engine socket of an external run.
        let mut request = format!("ws://{addr}/api/dags/{external_id}/engine").into_client_request().expect("url");
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
        match connect_async(request).await {
            Ok((mut socket, _)) => {
                assert!(role.allows(Role::Engine), "{role:?} may not drive an external run");
                socket.close(None).await.expect("close");
                // The engine's slot is free again once the server saw the close.
                let deadline = tokio::time::Instant::now() + PATIENCE;
                while server.state.service.entry(&external_id).map(|run| match run.driver {
                    dagstream::runs::Driver::External(link) => link.is_attached(),
                    dagstream::runs::Driver::Engine(_)
                    | dagstream::runs::Driver::Remote
                    | dagstream::runs::Driver::Ended => false,
                }) == Ok(true)
                {
                    assert!(tokio::time::Instant::now() < deadline, "the engine detaches");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(WsError::Http(response)) => {
                assert!(!role.allows(Role::Engine), "{role:?} is refused the engine socket");
                assert_eq!(response.status().as_u16(), 403);
            }
            Err(other) => panic!("unexpected failure {other:?}"),
        }
        // Controls on the dashboard stream of a run of ours.
        let dag_id = server.state.service.runs().start(gated()).await.expect("start");
        wait_for_status(&server, &dag_id, "review", NodeStatus::Waiting).await;
        let (mut socket, _) = connect_async(ws_request(&server, &dag_id, &[bearer(token)])).await.expect("watches");
        let _snapshot = next_event(&mut socket).await;
        for command in [
            r#"{"type":"pause_execution"}"#,
            r#"{"type":"resume_execution"}"#,
            r#"{"type":"human_decision","node_id":"review","decision":"approve"}"#,
        ] {
            socket.send(Message::text(command)).await.expect("send");
            let answer = loop {
                match next_event(&mut socket).await.body {
                    ServerEventBody::Error { node_id: None, message } => break Err(message),
                    ServerEventBody::RunStateChanged { .. } | ServerEventBody::GateResolved { .. } => break Ok(()),
                    _ => continue,
                }
            };
            match (role.allows(Role::Approver), answer) {
                (true, Ok(())) => {}
                (false, Err(message)) => assert!(message.starts_with("forbidden"), "{role:?}: {message}"),
                (allowed, answer) => panic!("{role:?} (allowed: {allowed}) sent {command}: {answer:?}"),
            }
        }
        let state = server.state.service.state(&dag_id).await.expect("run");
        assert_eq!(state.decisions.len(), usize::from(role.allows(Role::Approver)), "{role:?}'s decision");
    }
}
