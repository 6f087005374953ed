//! Durability against the real binary and a real SQLite file: SIGKILL in the middle of a run,
//! start again, and everything is where it was; broken database files are clear errors.

#![cfg(all(feature = "ssr", unix))]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Backend, Scratch, Served, dag_id_of, http, http_get, json_body, stub_site, temp_dir};
use dagstream::protocol::{ClientEvent, Decision, RunState, ServerEvent, ServerEventBody};
use futures::{SinkExt, StreamExt};
use rstest::rstest;
use tokio_tungstenite::tungstenite::Message;

const SPEC: &str = r#"
name = "restartable"
budget = 10.0
max_parallel = 2

[[nodes]]
id = "first"
kind = "simulate"
duration = "50ms"
cost = 0.5

[[nodes]]
id = "review"
kind = "gate"
needs = ["first"]
title = "Go on?"

[[nodes]]
id = "slow"
kind = "command"
needs = ["first"]
run = '''
echo "$DAGSTREAM_ATTEMPT" >> attempts.txt
sleep 3
'''

[[nodes]]
id = "last"
kind = "simulate"
needs = ["review", "slow"]
duration = "50ms"
cost = 0.25
"#;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_event(socket: &mut Socket) -> ServerEvent {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("readable");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("valid event");
        }
    }
}

fn run_state(addr: &str, dag_id: &str) -> RunState {
    serde_json::from_value(json_body(&http_get(addr, &format!("/api/dags/{dag_id}")))).expect("a run state")
}

async fn wait_for(addr: &str, dag_id: &str, what: &str, done: impl Fn(&RunState) -> bool) -> RunState {
    for _ in 0..400 {
        let state = run_state(addr, dag_id);
        if done(&state) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen: {:#?}", run_state(addr, dag_id));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn sigkill_in_the_middle_of_a_run_then_restart_resumes_it_exactly(#[case] backend: Backend) {
    let database = Scratch::new(backend, "sigkill").await;
    let site = stub_site(&format!("durable-site-{backend:?}"));
    let data = temp_dir(&format!("durable-data-{backend:?}"));
    let served = Served::start_on(&site, &data, Some(&database.url()));
    let dag_id = dag_id_of(&http(&served.addr, "POST", "/api/dags", Some("application/toml"), SPEC));

    // A dashboard follows the run until the gate waits and the command runs.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(common::ws_request(&format!("ws://{}/api/dags/{dag_id}/stream", served.addr)))
            .await
            .expect("ws");
    let mut client = match next_event(&mut socket).await.body {
        ServerEventBody::Snapshot { run } => *run,
        other => panic!("snapshot first, got {other:?}"),
    };
    let workdir = data.join("runs").join(&dag_id);
    while !(client.nodes["review"].gate.is_some() && client.nodes["slow"].status.as_str() == "running") {
        let event = next_event(&mut socket).await;
        client.apply(&event);
    }
    for _ in 0..100 {
        if workdir.join("attempts.txt").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = run_state(&served.addr, &dag_id);
    assert!(before.seq >= client.seq);
    served.kill_hard();

    let served = Served::start_on(&site, &data, Some(&database.url()));
    let after = run_state(&served.addr, &dag_id);
    assert_eq!(after.nodes["first"].status.as_str(), "completed");
    assert_eq!(after.nodes["review"].status.as_str(), "waiting", "the gate still waits");
    assert!(after.nodes["review"].gate.is_some());
    assert_eq!(after.cost.spent, before.cost.spent, "spend is what it was");

    // The dashboard reconnects with since: exactly the events after what it had, no gap.
    let url = format!("ws://{}/api/dags/{dag_id}/stream?since={}", served.addr, client.seq);
    let (mut socket, _) = tokio_tungstenite::connect_async(common::ws_request(&url)).await.expect("ws after restart");
    let slow_again = wait_for(&served.addr, &dag_id, "slow runs again", |s| {
        s.nodes["slow"].status.as_str() == "running" && s.nodes["slow"].metrics.attempt == Some(2)
    })
    .await;
    assert_eq!(slow_again.nodes["first"].metrics.attempt, Some(1), "completed nodes are not run again");
    let decide = ClientEvent::HumanDecision {
        node_id: "review".into(),
        decision: Decision::Approve,
        feedback: None,
        inputs: None,
    };
    socket.send(Message::text(serde_json::to_string(&decide).expect("json"))).await.expect("send");
    loop {
        let event = next_event(&mut socket).await;
        assert_eq!(event.seq, client.seq + 1, "no gap, no duplicate across the restart");
        client.apply(&event);
        if matches!(event.body, ServerEventBody::ExecutionComplete { .. }) {
            break;
        }
    }
    assert_eq!(client.state.as_str(), "completed");
    assert_eq!(client, run_state(&served.addr, &dag_id), "the dashboard matches the server");
    let attempts = std::fs::read_to_string(workdir.join("attempts.txt")).expect("attempts");
    assert_eq!(attempts.lines().collect::<Vec<_>>(), ["1", "2"], "the interrupted command ran again as attempt 2");
    assert!((client.cost.spent - 0.75).abs() < 1e-9, "{}", client.cost.spent);

    // History: after another hard kill the finished run is still listed, as it ended.
    served.kill_hard();
    let served = Served::start_on(&site, &data, Some(&database.url()));
    let listed = json_body(&http_get(&served.addr, "/api/dags"));
    let row = listed.as_array().expect("a list").iter().find(|r| r["dag_id"] == dag_id.as_str()).cloned();
    assert_eq!(row.map(|r| r["state"].clone()), Some("completed".into()));
    assert_eq!(run_state(&served.addr, &dag_id), client, "the final state is intact");
    let decisions = json_body(&http_get(&served.addr, &format!("/api/dags/{dag_id}/decisions")));
    assert_eq!(decisions[0]["decision"], "approve");
    let timeline = json_body(&http_get(&served.addr, &format!("/api/dags/{dag_id}/events?after=0")));
    assert_eq!(timeline.as_array().map(Vec::len), Some(client.seq as usize), "the whole log is there");
}

#[test]
fn a_corrupt_database_or_one_that_cannot_be_opened_is_a_clear_startup_error() {
    let site = stub_site("baddb-site");
    let corrupt = temp_dir("baddb-corrupt");
    std::fs::write(corrupt.join("dagstream.db"), "not a database at all, only text ".repeat(100)).expect("write");
    let blocked = temp_dir("baddb-dir");
    std::fs::create_dir_all(blocked.join("dagstream.db")).expect("a directory where the file should be");
    for data in [corrupt, blocked] {
        let output = Command::new(env!("CARGO_BIN_EXE_dagstream"))
            .args(["serve", "--addr", "127.0.0.1:0", "--data"])
            .arg(&data)
            .arg("--site-root")
            .arg(&site)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("dagstream.db"), "names the file: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `serve --database` with a URL dagstream cannot use, a PostgreSQL server that is not there,
/// or a database whose migration fails: exit 1 with the host and what failed, no panic, no
/// password, and a failed migration leaves the schema as it was.
#[tokio::test]
async fn a_bad_database_url_an_unreachable_server_or_a_failed_migration_stops_the_start() {
    let site = stub_site("baddb-url-site");
    let data = temp_dir("baddb-url-data");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let blocked = Scratch::new(Backend::Postgres, "blocked").await;
    let pool = sqlx::PgPool::connect(&blocked.url()).await.expect("connects");
    // A table of the same name as one the first migration makes, but not dagstream's.
    sqlx::query("CREATE TABLE sessions (unrelated INT)").execute(&pool).await.expect("created");
    let blocked_at = blocked.url().split('@').nth(1).expect("host part").to_owned();
    let cases = [
        ("mysql://someone:s3cret@db.example/runs".to_owned(), "is not a database URL".to_owned()),
        (format!("postgres://dagstream:s3cret@127.0.0.1:{closed_port}/runs"), format!("127.0.0.1:{closed_port}/runs")),
        (blocked.url(), format!("cannot prepare the database at {blocked_at}")),
    ];
    for (url, says) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_dagstream"))
            .args(["serve", "--addr", "127.0.0.1:0", "--database", &url, "--data"])
            .arg(&data)
            .arg("--site-root")
            .arg(&site)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{url}: {stderr}");
        assert!(stderr.contains(&says), "{url}: says {says:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("s3cret"), "{stderr}");
    }
    let (runs_table, meta_table): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT to_regclass('public.runs')::text, to_regclass('public.meta')::text")
            .fetch_one(&pool)
            .await
            .expect("asked");
    assert_eq!((runs_table, meta_table), (None, None), "the failed migration left nothing behind");
}
