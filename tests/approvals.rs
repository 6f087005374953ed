//! Who may approve a gate, and how many must: `approvers` (names and `group:NAME`s of the users
//! file), `approvals = N` (N distinct people; any reject rejects), `allow_self_approval =
//! false` (the run's starter may not approve). Through the real HTTP and WebSocket paths, as
//! each user.

#![cfg(feature = "ssr")]

mod common;

use std::time::Duration;

use dagstream::engine::EngineConfig;
use dagstream::hub::RoomLimits;
use dagstream::protocol::{ClientEvent, Decision, Role, ServerEvent, ServerEventBody};
use dagstream::server::auth::UsersFile;
use dagstream::server::{AuthSettings, StreamConfig};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::{Backend, TOKEN};

const PATIENCE: Duration = Duration::from_secs(10);

struct Team {
    addr: std::net::SocketAddr,
    /// Tokens by user name; `admin` is [`TOKEN`].
    tokens: std::collections::HashMap<&'static str, String>,
    _served: common::InProcess,
    _database: common::Scratch,
}

/// A server whose users are ana and bo (group `leads`), cy, all approvers.
async fn team(name: &str) -> Team {
    let mut users = UsersFile::default();
    let leads = ["leads".to_owned()];
    let mut tokens = std::collections::HashMap::new();
    tokens.insert("ana", users.add("ana", Role::Approver, &leads).expect("ana"));
    tokens.insert("bo", users.add("bo", Role::Approver, &leads).expect("bo"));
    tokens.insert("cy", users.add("cy", Role::Approver, &[]).expect("cy"));
    tokens.insert("admin", TOKEN.to_owned());
    let mut settings = AuthSettings::with_admin_token(TOKEN);
    settings.users = users.users;
    let engine = EngineConfig::new(std::env::temp_dir().join(format!("dagstream-approvals-{name}")));
    let (runs, database) = common::stored_runs(Backend::Sqlite, name, RoomLimits::default(), engine).await;
    let served = common::serve_in_process(runs, settings, StreamConfig::default()).await;
    Team { addr: served.addr, tokens, _served: served, _database: database }
}

impl Team {
    /// Starts `spec` as the admin: the response.
    fn start(&self, spec: &str) -> String {
        common::http(&self.addr.to_string(), "POST", "/api/dags", Some("application/toml"), spec)
    }

    /// `person` sends `decision` on gate `node`: `Err(message)` when refused, `Ok(event)` with
    /// the gate's next event (`gate_progress` or `gate_resolved`) when taken.
    async fn decide(
        &self,
        person: &str,
        dag_id: &str,
        node: &str,
        decision: Decision,
    ) -> Result<ServerEventBody, String> {
        let event = ClientEvent::HumanDecision { node_id: node.into(), decision, feedback: None, inputs: None };
        self.send_decision(person, dag_id, serde_json::to_value(&event).expect("json")).await
    }

    /// `person` approves gate `node` with these form values; answered as [`Team::decide`].
    async fn decide_with(
        &self,
        person: &str,
        dag_id: &str,
        node: &str,
        inputs: serde_json::Value,
    ) -> Result<ServerEventBody, String> {
        let event =
            serde_json::json!({ "type": "human_decision", "node_id": node, "decision": "approve", "inputs": inputs });
        self.send_decision(person, dag_id, event).await
    }

    /// Sends a decision as `person` on the run's stream and waits for what it did.
    async fn send_decision(
        &self,
        person: &str,
        dag_id: &str,
        event: serde_json::Value,
    ) -> Result<ServerEventBody, String> {
        let mut request =
            format!("ws://{}/api/dags/{dag_id}/stream", self.addr).into_client_request().expect("a ws:// url");
        let bearer = format!("Bearer {}", self.tokens[person]);
        request.headers_mut().insert("authorization", bearer.parse().expect("a header"));
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("a stream");
        socket.send(Message::text(event.to_string())).await.expect("sent");
        loop {
            let message = tokio::time::timeout(PATIENCE, socket.next()).await.expect("an answer").expect("open");
            let Message::Text(text) = message.expect("readable") else { continue };
            let event: ServerEvent = serde_json::from_str(text.as_str()).expect("an event");
            match event.body {
                ServerEventBody::Error { node_id: None, message } => return Err(message),
                body @ (ServerEventBody::GateProgress { .. } | ServerEventBody::GateResolved { .. }) => {
                    return Ok(body);
                }
                _ => {}
            }
        }
    }

    fn run(&self, dag_id: &str) -> serde_json::Value {
        common::json_body(&common::http_get(&self.addr.to_string(), &format!("/api/dags/{dag_id}")))
    }

    async fn wait_for_status(&self, dag_id: &str, node: &str, status: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.run(dag_id)["nodes"][node]["status"] != status {
            assert!(tokio::time::Instant::now() < deadline, "{node} never became {status}: {}", self.run(dag_id));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const QUORUM: &str = r#"
name = "release"
[[nodes]]
id = "deploy"
kind = "gate"
title = "Deploy?"
approvers = ["group:leads", "admin"]
approvals = 2
allow_self_approval = false
[[nodes]]
id = "after"
kind = "simulate"
needs = ["deploy"]
duration = "5ms"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_distinct_approvals_decide_once_the_same_person_counts_once_and_the_starter_may_not_approve() {
    let team = team("quorum").await;
    let dag_id = common::dag_id_of(&team.start(QUORUM));
    team.wait_for_status(&dag_id, "deploy", "waiting").await;
    let card = &team.run(&dag_id)["nodes"]["deploy"]["gate"];
    assert_eq!(card["approvers"], serde_json::json!(["ana", "bo", "admin"]), "the group is expanded at start");
    assert_eq!(card["approvals"], 2);
    assert_eq!(card["may_not_approve"], serde_json::json!(["admin"]), "the admin started the run");

    // The starter may not approve; someone not named may not decide at all.
    let own = team.decide("admin", &dag_id, "deploy", Decision::Approve).await;
    assert!(own.as_ref().is_err_and(|m| m.contains("admin started this run and may not approve")), "{own:?}");
    let stranger = team.decide("cy", &dag_id, "deploy", Decision::Approve).await;
    assert!(stranger.as_ref().is_err_and(|m| m.contains("cy may not decide gate \"deploy\"")), "{stranger:?}");

    // ana: one of two.
    let first = team.decide("ana", &dag_id, "deploy", Decision::Approve).await;
    assert_eq!(
        first,
        Ok(ServerEventBody::GateProgress { node_id: "deploy".into(), approved_by: vec!["ana".into()], remaining: 1 })
    );
    assert_eq!(team.run(&dag_id)["nodes"]["deploy"]["status"], "waiting");
    assert_eq!(team.run(&dag_id)["nodes"]["deploy"]["approved_by"], serde_json::json!(["ana"]));
    // ana again counts once.
    let again = team.decide("ana", &dag_id, "deploy", Decision::Approve).await;
    assert!(again.as_ref().is_err_and(|m| m.contains("ana already approved")), "{again:?}");

    // bo completes the quorum: one decision, signed by both.
    let second = team.decide("bo", &dag_id, "deploy", Decision::Approve).await;
    let Ok(ServerEventBody::GateResolved { decision, decided_by, .. }) = second else { panic!("{second:?}") };
    assert_eq!((decision, decided_by.as_str()), (Decision::Approve, "ana, bo"));
    team.wait_for_status(&dag_id, "after", "completed").await;
    let decisions =
        common::json_body(&common::http_get(&team.addr.to_string(), &format!("/api/dags/{dag_id}/decisions")));
    assert_eq!(decisions.as_array().map(Vec::len), Some(1), "exactly one decision: {decisions}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_after_one_approval_rejects() {
    let team = team("quorum_reject").await;
    let dag_id = common::dag_id_of(&team.start(QUORUM));
    team.wait_for_status(&dag_id, "deploy", "waiting").await;
    assert!(team.decide("ana", &dag_id, "deploy", Decision::Approve).await.is_ok());
    let rejected = team.decide("bo", &dag_id, "deploy", Decision::Reject).await;
    let Ok(ServerEventBody::GateResolved { decision, decided_by, .. }) = rejected else { panic!("{rejected:?}") };
    assert_eq!((decision, decided_by.as_str()), (Decision::Reject, "bo"));
    team.wait_for_status(&dag_id, "deploy", "failed").await;
    team.wait_for_status(&dag_id, "after", "skipped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_naming_a_group_nobody_is_in_or_too_few_approvers_starts_nothing() {
    let team = team("quorum_refused").await;
    let unknown = team.start(&QUORUM.replace("group:leads", "group:owners"));
    assert_eq!(common::status_of(&unknown), 400, "{unknown}");
    assert!(unknown.contains("group \\\"owners\\\" has no members"), "{unknown}");
    let few = team.start(&QUORUM.replace("approvals = 2", "approvals = 4"));
    assert_eq!(common::status_of(&few), 400, "{few}");
    assert!(few.contains("approvals = 4 needs as many approvers"), "{few}");
    let listed = common::json_body(&common::http_get(&team.addr.to_string(), "/api/dags"));
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "nothing started: {listed}");
}

const FORM: &str = r#"
name = "report"
[[nodes]]
id = "review"
kind = "gate"
title = "Shape the report"
inputs = [
  { name = "tone", type = "enum", options = ["short", "long"] },
  { name = "max_rows", type = "integer", min = 1, max = 1000 },
  { name = "note", type = "text", required = false },
]
[[nodes]]
id = "write"
kind = "command"
needs = ["review"]
run = 'printf "{\"output\": %s}\n" "$(tr -d "\n" < "$DAGSTREAM_INPUTS")" >> "$DAGSTREAM_REPORT"'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_form_is_checked_recorded_with_the_decision_and_read_by_what_follows() {
    let team = team("form").await;
    let dag_id = common::dag_id_of(&team.start(FORM));
    team.wait_for_status(&dag_id, "review", "waiting").await;
    let card = &team.run(&dag_id)["nodes"]["review"]["gate"];
    assert_eq!(card["inputs"][0]["options"], serde_json::json!(["short", "long"]), "the card carries the form");

    // Bad values are refused, naming the field, and change nothing.
    let table = [
        (serde_json::json!({ "tone": "medium", "max_rows": 5 }), r#"field "tone": "medium" is not one of short, long"#),
        (serde_json::json!({ "tone": "short", "max_rows": 5000 }), r#"field "max_rows": 5000 is outside 1 to 1000"#),
        (serde_json::json!({ "tone": "short" }), r#"field "max_rows": needed to approve"#),
        (
            serde_json::json!({ "tone": "short", "max_rows": 5, "colour": 1 }),
            r#"field "colour": this gate's form has no such field"#,
        ),
    ];
    for (values, expected) in table {
        let refused = team.decide_with("ana", &dag_id, "review", values.clone()).await;
        assert!(refused.as_ref().is_err_and(|m| m.contains(expected)), "{values}: {refused:?}");
    }
    assert_eq!(team.run(&dag_id)["nodes"]["review"]["status"], "waiting");
    assert!(team.run(&dag_id)["decisions"].as_array().is_some_and(Vec::is_empty));

    // Good values: recorded with the decision, and in what the next node reads.
    let values = serde_json::json!({ "tone": "short", "max_rows": 250 });
    let decided = team.decide_with("ana", &dag_id, "review", values.clone()).await;
    let Ok(ServerEventBody::GateResolved { inputs, .. }) = decided else { panic!("{decided:?}") };
    assert_eq!(inputs.map(serde_json::Value::Object), Some(values.clone()));
    team.wait_for_status(&dag_id, "write", "completed").await;
    let run = team.run(&dag_id);
    assert_eq!(run["decisions"][0]["inputs"], values, "the record keeps the values");
    assert_eq!(run["nodes"]["write"]["output"]["review"]["inputs"], values, "DAGSTREAM_INPUTS has them: {run}");
}

/// The next inbox feed message of `socket`.
async fn next_inbox(socket: &mut common::Socket) -> dagstream::protocol::InboxFeedEvent {
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next()).await.expect("a message").expect("open");
        if let Message::Text(text) = message.expect("readable") {
            return serde_json::from_str(text.as_str()).expect("an inbox message");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_feed_lists_what_waits_for_each_person_and_follows_their_approvals() {
    use dagstream::protocol::InboxFeedEvent;
    let team = team("inbox").await;
    let dag_id = common::dag_id_of(&team.start(QUORUM));
    team.wait_for_status(&dag_id, "deploy", "waiting").await;
    let feed = |person: &str| {
        let mut request = format!("ws://{}/api/inbox/stream", team.addr).into_client_request().expect("a ws:// url");
        let bearer = format!("Bearer {}", team.tokens[person]);
        request.headers_mut().insert("authorization", bearer.parse().expect("a header"));
        request
    };
    let (mut ana, _) = tokio_tungstenite::connect_async(feed("ana")).await.expect("ana's feed");
    let InboxFeedEvent::Inbox { gates } = next_inbox(&mut ana).await else { panic!("the whole inbox first") };
    assert_eq!(gates.iter().map(|g| g.node_id.as_str()).collect::<Vec<_>>(), ["deploy"]);
    assert_eq!(gates[0].run_name, "release");
    assert!(gates[0].waiting_since.is_some());
    // cy is no approver of it, and the admin started the run (self-approval is off).
    for person in ["cy", "admin"] {
        let (mut other, _) = tokio_tungstenite::connect_async(feed(person)).await.expect("a feed");
        let InboxFeedEvent::Inbox { gates } = next_inbox(&mut other).await else { panic!("the whole inbox first") };
        assert!(gates.is_empty(), "nothing waits for {person}: {gates:?}");
    }

    // Once ana approved, the gate waits for bo only.
    let (mut bo, _) = tokio_tungstenite::connect_async(feed("bo")).await.expect("bo's feed");
    next_inbox(&mut bo).await;
    assert!(team.decide("ana", &dag_id, "deploy", Decision::Approve).await.is_ok());
    let InboxFeedEvent::RunGates { dag_id: changed, gates } = next_inbox(&mut ana).await else {
        panic!("a run's change")
    };
    assert_eq!((changed.as_str(), gates.len()), (dag_id.as_str(), 0), "not ana's any more");
    let InboxFeedEvent::RunGates { gates, .. } = next_inbox(&mut bo).await else { panic!("a run's change") };
    assert_eq!(gates.len(), 1);
    assert_eq!(gates[0].approved_by, ["ana".to_owned()]);
}

const PRICED: &str = r#"
name = "priced"
[[nodes]]
id = "go"
kind = "gate"
title = "Spend on the crawl?"
[[nodes]]
id = "crawl"
kind = "command"
needs = ["go"]
run = 'echo "{\"cost\": 0.5}" >> "$DAGSTREAM_REPORT"'
[[nodes]]
id = "summarize"
kind = "simulate"
needs = ["crawl"]
cost = 0.25
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_forecast_draws_on_the_spec_hints_and_on_past_runs_of_the_same_spec() {
    let team = team("forecast").await;
    let forecast_of = |dag_id: &str| team.run(dag_id)["nodes"]["go"]["gate"]["forecast"].clone();
    // First run: the command has no hint and never ran; only the simulate node's cost counts.
    let first = common::dag_id_of(&team.start(PRICED));
    team.wait_for_status(&first, "go", "waiting").await;
    let forecast = forecast_of(&first);
    assert_eq!(forecast["after_gate"]["mean"], 0.25, "{forecast}");
    assert_eq!((forecast["based_on_runs"].as_u64(), forecast["unpriced"].as_u64()), (Some(0), Some(1)), "{forecast}");
    assert!(team.decide("ana", &first, "go", Decision::Approve).await.is_ok());
    team.wait_for_status(&first, "summarize", "completed").await;
    let second = common::dag_id_of(&team.start(PRICED));
    team.wait_for_status(&second, "go", "waiting").await;
    assert!(team.decide("ana", &second, "go", Decision::Approve).await.is_ok());
    team.wait_for_status(&second, "summarize", "completed").await;

    // Third run: the crawl cost 0.50 in each of the two past runs.
    let third = common::dag_id_of(&team.start(PRICED));
    team.wait_for_status(&third, "go", "waiting").await;
    let forecast = forecast_of(&third);
    assert_eq!(
        (forecast["after_gate"]["mean"].as_f64(), forecast["after_gate"]["p90"].as_f64()),
        (Some(0.75), Some(0.75)),
        "{forecast}"
    );
    assert_eq!(forecast["rest_of_run"]["mean"], 0.75, "{forecast}");
    assert_eq!((forecast["based_on_runs"].as_u64(), forecast["unpriced"].as_u64()), (Some(2), Some(0)), "{forecast}");
}
