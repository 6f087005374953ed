//! Notifications against the real binary and a local receiver: every delivery is signed, a
//! receiver that answers 500 three times gets the fourth try, a notification keeps its id
//! across tries and is delivered once, a spec's own Slack target gets a Slack message, and the
//! run lists who was told what and how each attempt went.

#![cfg(all(feature = "ssr", unix))]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{Served, dag_id_of, http, http_get, json_body, stub_site, temp_dir};
use dagstream::protocol::{ClientEvent, Decision};
use futures::SinkExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "receiver-secret-0123456789";
const SLACK_SECRET: &str = "slack-secret-0123456789";

/// One request the receiver got, and what it answered.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    id: String,
    topic: String,
    timestamp: String,
    signature: String,
    body: String,
    answered: u16,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// A receiver on a free loopback port, taking `/hook` and `/slack`.
    async fn start() -> (Receiver, std::net::SocketAddr) {
        let receiver = Receiver::default();
        let app =
            Router::new().route("/hook", post(receive)).route("/slack", post(receive)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, addr)
    }
}

/// Answers 500 to the first three tries of every `gate_waiting` notification, 200 otherwise.
async fn receive(
    State(receiver): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut got = receiver.got.lock().expect("lock");
    let id = header("x-dagstream-delivery");
    let topic = header("x-dagstream-topic");
    let tries = got.iter().filter(|r| r.id == id).count();
    let answered = if topic == "gate_waiting" && tries < 3 { 500 } else { 200 };
    got.push(Received {
        path: uri.path().to_owned(),
        id,
        topic,
        timestamp: header("x-dagstream-timestamp"),
        signature: header("x-dagstream-signature"),
        body: String::from_utf8_lossy(&body).into_owned(),
        answered,
    });
    StatusCode::from_u16(answered).expect("a status")
}

fn expected_signature(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_until_taken_and_listed_with_every_attempt() {
    let (receiver, receiver_addr) = Receiver::start().await;

    let dir = temp_dir("notify");
    let config = dir.join("dagstream.toml");
    std::fs::write(
        &config,
        format!(
            "public_url = \"https://dagstream.example.com\"\n\n[[notify]]\nurl = \"http://{receiver_addr}/hook\"\nsecret = \"{SECRET}\"\n\n[delivery]\nfirst_retry = \"50ms\"\n"
        ),
    )
    .expect("config");
    let server = Served::start_with(
        &stub_site("notify-site"),
        &dir.join("data"),
        None,
        &["--config", config.to_str().expect("utf-8")],
    );

    let spec = format!(
        r#"
name = "notified"
budget = 1.0

[[notify]]
url = "http://{receiver_addr}/slack"
secret = "{SLACK_SECRET}"
format = "slack"
events = ["run_completed"]

[[nodes]]
id = "spend"
kind = "simulate"
duration = "20ms"
cost = 0.9

[[nodes]]
id = "review"
kind = "gate"
needs = ["spend"]
title = "Ship it?"
prompt = "Check the spend first"

[[nodes]]
id = "last"
kind = "simulate"
needs = ["review"]
duration = "10ms"
"#
    );
    let dag_id = dag_id_of(&http(&server.addr, "POST", "/api/dags", Some("application/toml"), &spec));

    // The gate's notification arrives on its fourth try; then the gate is approved.
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered =
        |topic: &str| receiver.got.lock().expect("lock").iter().any(|r| r.topic == topic && r.answered == 200);
    while !delivered("gate_waiting") {
        assert!(Instant::now() < deadline, "the gate's notification was not delivered: {:#?}", receiver.got.lock());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("ws://{}/api/dags/{dag_id}/stream", server.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(common::ws_request(&url)).await.expect("a stream");
    let approve = ClientEvent::HumanDecision {
        node_id: "review".into(),
        decision: Decision::Approve,
        feedback: None,
        inputs: None,
    };
    socket.send(Message::text(serde_json::to_string(&approve).expect("json"))).await.expect("sent");
    while !(delivered("gate_decided") && delivered("run_completed")) {
        assert!(Instant::now() < deadline, "not every notification arrived: {:#?}", receiver.got.lock());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let got = receiver.got.lock().expect("lock").clone();
    for request in &got {
        let secret = if request.path == "/slack" { SLACK_SECRET } else { SECRET };
        assert_eq!(request.signature, expected_signature(secret, &request.timestamp, &request.body), "{request:?}");
        let timestamp: i64 = request.timestamp.parse().expect("a Unix time");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs() as i64;
        assert!((now - timestamp).abs() < 120, "a fresh timestamp: {timestamp}");
    }
    let gate: Vec<&Received> = got.iter().filter(|r| r.topic == "gate_waiting").collect();
    assert_eq!(gate.iter().map(|r| r.answered).collect::<Vec<_>>(), [500, 500, 500, 200], "the fourth try is taken");
    assert!(gate.iter().all(|r| r.id == gate[0].id), "every try carries the same id");
    // One id per notification and target, delivered once.
    let mut ids: HashMap<(String, String), Vec<String>> = HashMap::new();
    for request in &got {
        ids.entry((request.path.clone(), request.topic.clone())).or_default().push(request.id.clone());
    }
    for ((path, topic), seen) in &ids {
        assert!(seen.iter().all(|id| id == &seen[0]), "{path} {topic}: more than one id: {seen:?}");
        let taken = got.iter().filter(|r| r.id == seen[0] && r.answered == 200).count();
        assert_eq!(taken, 1, "{path} {topic} delivered once");
    }
    let topics: Vec<&str> = got.iter().filter(|r| r.path == "/hook").map(|r| r.topic.as_str()).collect();
    for topic in ["budget_80", "gate_waiting", "gate_decided", "run_completed"] {
        assert!(topics.contains(&topic), "{topic} in {topics:?}");
    }

    // The payload: the run, the gate card, links.
    let gate_body: serde_json::Value = serde_json::from_str(&gate[3].body).expect("JSON");
    assert_eq!(gate_body["id"], gate[3].id.as_str());
    assert_eq!(gate_body["run"]["name"], "notified");
    assert_eq!(gate_body["gate"]["presentation"]["title"], "Ship it?");
    assert_eq!(gate_body["links"]["run"], format!("https://dagstream.example.com/dags/{dag_id}").as_str());
    // The spec's Slack target: only the run's end, as a Slack message.
    let slack: Vec<&Received> = got.iter().filter(|r| r.path == "/slack").collect();
    assert_eq!(slack.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(), ["run_completed"]);
    let message: serde_json::Value = serde_json::from_str(&slack[0].body).expect("JSON");
    assert!(message["blocks"].as_array().is_some_and(|b| !b.is_empty()), "{message}");
    assert!(message["text"].as_str().is_some_and(|t| t.contains("notified")), "{message}");

    // The run lists who was told what, when, with which answer.
    let listed = json_body(&http_get(&server.addr, &format!("/api/dags/{dag_id}/notifications")));
    let rows = listed.as_array().expect("a list");
    let waiting = rows.iter().find(|n| n["topic"] == "gate_waiting").expect("the gate's notification");
    assert_eq!(waiting["outcome"], "delivered");
    assert_eq!(waiting["url"], format!("http://{receiver_addr}/hook").as_str());
    let statuses: Vec<i64> = waiting["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["status"].as_i64().expect("a status"))
        .collect();
    assert_eq!(statuses, [500, 500, 500, 200]);
    assert!(rows.iter().all(|n| n.get("secret").is_none()), "no secret is ever listed");
}

#[test]
fn a_config_or_spec_with_a_bad_target_is_refused_with_the_reason() {
    let dir = temp_dir("notify-bad");
    let config = dir.join("bad.toml");
    std::fs::write(&config, "[[notify]]\nurl = \"ftp://x\"\nsecret = \"0123456789abcdef\"\n").expect("config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dagstream"))
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--site-root")
        .arg(stub_site("notify-bad-config-site"))
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("must start with http:// or https://"), "{stderr}");

    let server = Served::start(&stub_site("notify-bad-site"), &dir.join("data2"));
    let spec = "name = \"n\"\n[[notify]]\nurl = \"http://x/h\"\nsecret = \"short\"\n[[nodes]]\nid = \"a\"\nkind = \"simulate\"\n";
    let response = http(&server.addr, "POST", "/api/dags", Some("application/toml"), spec);
    assert_eq!(common::status_of(&response), 400, "{response}");
    assert!(response.contains("at least 16 characters"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_lost_in_a_crash_is_queued_again_at_restart_with_the_same_id() {
    let (receiver, receiver_addr) = Receiver::start().await;
    let dir = temp_dir("notify-crash");
    let config = dir.join("dagstream.toml");
    std::fs::write(
        &config,
        format!(
            "[[notify]]\nurl = \"http://{receiver_addr}/hook\"\nsecret = \"{SECRET}\"\nevents = [\"gate_decided\", \"run_completed\"]\n\n[delivery]\nfirst_retry = \"50ms\"\n"
        ),
    )
    .expect("config");
    let site = stub_site("notify-crash-site");
    let data = dir.join("data");
    let args = ["--config", config.to_str().expect("utf-8")];
    let server = Served::start_with(&site, &data, None, &args);
    let spec = "name = \"crash\"\n[[nodes]]\nid = \"review\"\nkind = \"gate\"\ntitle = \"Go?\"\n";
    let dag_id = dag_id_of(&http(&server.addr, "POST", "/api/dags", Some("application/toml"), spec));
    let url = format!("ws://{}/api/dags/{dag_id}/stream", server.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(common::ws_request(&url)).await.expect("a stream");
    let approve = ClientEvent::HumanDecision {
        node_id: "review".into(),
        decision: Decision::Approve,
        feedback: None,
        inputs: None,
    };
    socket.send(Message::text(serde_json::to_string(&approve).expect("json"))).await.expect("sent");
    let deadline = Instant::now() + Duration::from_secs(20);
    let taken = |topic: &str| {
        receiver.got.lock().expect("lock").iter().filter(|r| r.topic == topic && r.answered == 200).count()
    };
    while taken("run_completed") < 1 || taken("gate_decided") < 1 {
        assert!(Instant::now() < deadline, "not delivered: {:#?}", receiver.got.lock());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_id =
        receiver.got.lock().expect("lock").iter().find(|r| r.topic == "run_completed").expect("sent").id.clone();
    server.kill_hard();

    // The crash came between storing the run's end and queueing its notification.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("dagstream.db").display()))
        .await
        .expect("the database");
    sqlx::query("DELETE FROM notifications WHERE topic = 'run_completed'").execute(&pool).await.expect("deleted");
    pool.close().await;

    let server = Served::start_with(&site, &data, None, &args);
    while taken("run_completed") < 2 {
        assert!(Instant::now() < deadline + Duration::from_secs(20), "not queued again: {:#?}", receiver.got.lock());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = receiver.got.lock().expect("lock").clone();
    let ends: Vec<&Received> = got.iter().filter(|r| r.topic == "run_completed").collect();
    assert!(ends.iter().all(|r| r.id == first_id), "the same id again, for the receiver to deduplicate");
    assert_eq!(taken("gate_decided"), 1, "what was queued already is not sent again");
    let listed = json_body(&http_get(&server.addr, &format!("/api/dags/{dag_id}/notifications")));
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
}

/// A request with no credentials at all, as a person who follows a link.
fn anonymous(addr: &str, method: &str, path: &str, form: Option<&str>) -> String {
    let body = form.unwrap_or_default();
    let content_type = form.map(|_| "Content-Type: application/x-www-form-urlencoded\r\n").unwrap_or_default();
    common::raw_http(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_links_decide_once_in_their_persons_name_and_only_while_their_gate_waits() {
    let (receiver, receiver_addr) = Receiver::start().await;
    let dir = temp_dir("notify-links");
    let config = dir.join("dagstream.toml");
    std::fs::write(
        &config,
        format!(
            "public_url = \"http://links.example.com/\"\n[[notify]]\nurl = \"http://{receiver_addr}/hook\"\nsecret = \"{SECRET}\"\nevents = [\"gate_waiting\"]\n\n[delivery]\nfirst_retry = \"20ms\"\n"
        ),
    )
    .expect("config");
    let users = dir.join("users.toml");
    let mut file = dagstream::server::auth::UsersFile::default();
    file.add("ana", dagstream::protocol::Role::Approver, &[]).expect("ana");
    file.add("vic", dagstream::protocol::Role::Viewer, &[]).expect("vic");
    file.save(&users).expect("users file");
    let server = Served::start_with(
        &stub_site("notify-links-site"),
        &dir.join("data"),
        None,
        &["--config", config.to_str().expect("utf-8"), "--users", users.to_str().expect("utf-8")],
    );
    let spec = r#"
name = "linked"
[[nodes]]
id = "first"
kind = "gate"
title = "Ship the first?"
prompt = "Look at <b>this</b>"
[[nodes]]
id = "second"
kind = "gate"
title = "Ship the second?"
[[nodes]]
id = "slow"
kind = "gate"
title = "Nobody answers"
timeout = "1500ms"
on_timeout = "approve"
"#;
    let dag_id = dag_id_of(&http(&server.addr, "POST", "/api/dags", Some("application/toml"), spec));

    // Every waiting gate's notification carries one link per person who may decide: the admin
    // and the approver, not the viewer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let links = |gate: &str| -> Option<HashMap<String, String>> {
        let got = receiver.got.lock().expect("lock");
        let body = got.iter().filter(|r| r.answered == 200).find_map(|r| {
            let body: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            (body["gate"]["node_id"] == gate).then_some(body)
        })?;
        let decide = body["links"]["decide"].as_array()?;
        Some(
            decide
                .iter()
                .map(|l| (l["person"].as_str().unwrap_or("").to_owned(), l["url"].as_str().unwrap_or("").to_owned()))
                .collect(),
        )
    };
    let (first, second) = loop {
        if let (Some(first), Some(second)) = (links("first"), links("second")) {
            break (first, second);
        }
        assert!(Instant::now() < deadline, "no links: {:#?}", receiver.got.lock());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut people: Vec<&String> = first.keys().collect();
    people.sort();
    assert_eq!(people, ["admin", "ana"], "one link per person who may decide");
    let path = |url: &String| {
        assert!(url.starts_with("http://links.example.com/gates/"), "{url}");
        url.trim_start_matches("http://links.example.com").to_owned()
    };
    let ana_first = path(&first["ana"]);
    let ana_second = path(&second["ana"]);
    assert_ne!(ana_first, ana_second, "a link per gate");

    // Opening a link needs no sign-in and decides nothing, however often.
    for _ in 0..2 {
        let page = anonymous(&server.addr, "GET", &ana_first, None);
        assert_eq!(common::status_of(&page), 200, "{page}");
        assert!(page.contains(r#"data-standing="open""#), "{page}");
        assert!(page.contains("Ship the first?") && page.contains("Look at &lt;b&gt;this&lt;/b&gt;"), "{page}");
        assert!(page.contains(r#"data-testid="link-person">ana<"#), "{page}");
        assert!(page.to_ascii_lowercase().contains("referrer-policy: no-referrer"), "{page}");
    }
    let waiting = |node: &str| {
        json_body(&http_get(&server.addr, &format!("/api/dags/{dag_id}")))["nodes"][node]["status"] == "waiting"
    };
    assert!(waiting("first"), "opening decided nothing");

    // A form sent for another gate than the link's is refused, and changes nothing.
    let other = anonymous(&server.addr, "POST", &ana_first, Some("node_id=second&decision=approve"));
    assert_eq!(common::status_of(&other), 403, "{other}");
    assert!(waiting("second") && waiting("first"));
    let nonsense = anonymous(&server.addr, "POST", &ana_first, Some("node_id=first&decision=maybe"));
    assert_eq!(common::status_of(&nonsense), 400, "{nonsense}");
    let unknown = anonymous(&server.addr, "GET", &format!("/gates/{}", "0".repeat(64)), None);
    assert_eq!(common::status_of(&unknown), 404, "{unknown}");

    // Approve: signed with ana's name.
    let approved = anonymous(&server.addr, "POST", &ana_first, Some("node_id=first&decision=approve"));
    assert_eq!(common::status_of(&approved), 200, "{approved}");
    assert!(approved.contains("Approved as ana"), "{approved}");
    let decision_of = |node: &str| {
        let decisions = json_body(&http_get(&server.addr, &format!("/api/dags/{dag_id}/decisions")));
        decisions.as_array().expect("a list").iter().find(|d| d["node_id"] == node).cloned()
    };
    let decided = loop {
        if let Some(decided) = decision_of("first") {
            break decided;
        }
        assert!(Instant::now() < deadline, "the decision was not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((decided["decision"].as_str(), decided["decided_by"].as_str()), (Some("approve"), Some("ana")));

    // Used once: ana's link again, and the admin's link of the decided gate, are refused.
    let again = anonymous(&server.addr, "POST", &ana_first, Some("node_id=first&decision=reject"));
    assert_eq!(common::status_of(&again), 410, "{again}");
    assert!(again.contains("already used"), "{again}");
    let admins = anonymous(&server.addr, "GET", &path(&first["admin"]), None);
    assert_eq!(common::status_of(&admins), 410, "{admins}");
    assert!(admins.contains("already decided by ana (approve)"), "{admins}");
    let late = anonymous(&server.addr, "POST", &path(&first["admin"]), Some("node_id=first&decision=reject"));
    assert_eq!(common::status_of(&late), 410, "{late}");

    // The other gate's link still works: reject with feedback.
    let rejected =
        anonymous(&server.addr, "POST", &ana_second, Some("node_id=second&decision=reject&feedback=not+today"));
    assert_eq!(common::status_of(&rejected), 200, "{rejected}");

    // A gate that timed out: its links have expired.
    let slow = loop {
        if let Some(slow) = links("slow") {
            break slow;
        }
        assert!(Instant::now() < deadline, "no links for the slow gate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    while waiting("slow") {
        assert!(Instant::now() < deadline, "the slow gate never timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expired = anonymous(&server.addr, "POST", &path(&slow["ana"]), Some("node_id=slow&decision=reject"));
    assert_eq!(common::status_of(&expired), 410, "{expired}");
    assert!(expired.contains("timed out"), "{expired}");
    // ana's reject of the second gate is applied by the run a moment after her page answered.
    while decision_of("second").is_none() {
        assert!(Instant::now() < deadline, "the second gate's decision was not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let decisions = json_body(&http_get(&server.addr, &format!("/api/dags/{dag_id}/decisions")));
    let by: Vec<(&str, &str)> = decisions
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| (d["node_id"].as_str().unwrap_or(""), d["decided_by"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(by.len(), 3, "one decision per gate: {by:?}");
    assert!(by.contains(&("second", "ana")) && by.contains(&("slow", "timeout")), "{by:?}");
}
