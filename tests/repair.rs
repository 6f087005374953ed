//! Repairing a run through the REST API, as each role: retry a failed node (a failed run goes
//! on and completes), re-run from a node (it and what follows run again; upstream outputs are
//! kept), run again (a new run of the same spec, with a changed `env` for admins); what the
//! node's state does not allow is a 409 with the reason, and changes nothing. On SQLite and
//! PostgreSQL, and after a restart (an ended run is reopened from its stored log).

#![cfg(feature = "ssr")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use dagstream::engine::EngineConfig;
use dagstream::hub::RoomLimits;
use dagstream::protocol::{
    ClientEvent, NodeStatus, RepairAction, Role, RunPhase, ServerEvent, ServerEventBody, SignedIn,
};
use dagstream::server::auth::UsersFile;
use dagstream::server::{AuthSettings, StreamConfig};
use rstest::rstest;
use serde_json::Value;

use common::{Backend, TOKEN, json_body, status_of};

const PATIENCE: Duration = Duration::from_secs(20);

/// `flaky` fails on its first attempt (unless `FORCE=yes` is in its env) and works on the next.
const FLAKY: &str = r#"
name = "flaky-pipeline"
[[nodes]]
id = "prepare"
kind = "command"
run = "echo prepared"
[[nodes]]
id = "flaky"
kind = "command"
needs = ["prepare"]
run = '[ "$DAGSTREAM_ATTEMPT" -ge 2 ] || [ "$FORCE" = yes ] || { echo "first try fails" >&2; exit 3; }; echo "attempt $DAGSTREAM_ATTEMPT works"'
[[nodes]]
id = "after"
kind = "simulate"
needs = ["flaky"]
duration = "20ms"
"#;

struct Crew {
    addr: String,
    /// Tokens by user name: ana (approver), vic (viewer), admin.
    tokens: std::collections::HashMap<&'static str, String>,
    _served: common::InProcess,
    _database: common::Scratch,
}

async fn crew(backend: Backend, name: &str) -> Crew {
    let mut users = UsersFile::default();
    let mut tokens = std::collections::HashMap::new();
    tokens.insert("ana", users.add("ana", Role::Approver, &[]).expect("ana"));
    tokens.insert("vic", users.add("vic", Role::Viewer, &[]).expect("vic"));
    tokens.insert("admin", TOKEN.to_owned());
    let mut settings = AuthSettings::with_admin_token(TOKEN);
    settings.users = users.users;
    let dir = common::temp_dir(&format!("repair-{name}-{backend:?}"));
    let (runs, database) = common::stored_runs(backend, name, RoomLimits::default(), EngineConfig::new(dir)).await;
    let served = common::serve_in_process(runs, settings, StreamConfig::default()).await;
    Crew { addr: served.addr.to_string(), tokens, _served: served, _database: database }
}

impl Crew {
    fn post(&self, person: &str, path: &str, body: Option<&str>) -> String {
        let content_type = body.map(|_| "application/json");
        common::http_as(&self.addr, &self.tokens[person], "POST", path, content_type, body.unwrap_or(""))
    }

    fn start(&self, spec: &str) -> String {
        common::dag_id_of(&common::http(&self.addr, "POST", "/api/dags", Some("application/toml"), spec))
    }

    fn run(&self, dag_id: &str) -> Value {
        json_body(&common::http_get(&self.addr, &format!("/api/dags/{dag_id}")))
    }

    fn events(&self, dag_id: &str) -> Vec<ServerEvent> {
        let response = common::http_get(&self.addr, &format!("/api/dags/{dag_id}/events"));
        serde_json::from_value(json_body(&response)).expect("events")
    }

    /// Waits until the run has ended in `state` after `repairs` repairs.
    async fn until_ended(&self, dag_id: &str, state: &str, repairs: usize) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let run = self.run(dag_id);
            let repaired = run.get("repairs").and_then(Value::as_array).map_or(0, Vec::len);
            if run["state"] == state && run.get("results").is_some() && repaired == repairs {
                return run;
            }
            assert!(tokio::time::Instant::now() < deadline, "the run never ended {state}: {run:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn attempt(run: &Value, node: &str) -> u64 {
    run["nodes"][node]["metrics"]["attempt"].as_u64().unwrap_or_else(|| panic!("{node} has no attempt: {run:#}"))
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_retried_re_run_and_run_again(#[case] backend: Backend) {
    let crew = crew(backend, "rest").await;
    let dag_id = crew.start(FLAKY);
    let failed = crew.until_ended(&dag_id, "failed", 0).await;
    assert_eq!(failed["nodes"]["flaky"]["status"], "failed");
    assert_eq!(failed["nodes"]["after"]["status"], "skipped");
    let retry = format!("/api/dags/{dag_id}/nodes/flaky/retry");

    // What is refused changes nothing, and says why.
    let viewer = crew.post("vic", &retry, None);
    assert_eq!(status_of(&viewer), 403, "{viewer}");
    let completed = crew.post("ana", &format!("/api/dags/{dag_id}/nodes/prepare/retry"), None);
    assert_eq!(status_of(&completed), 409, "{completed}");
    assert!(completed.contains("only a failed node is retried; re-run from it instead"), "{completed}");
    let skipped = crew.post("ana", &format!("/api/dags/{dag_id}/nodes/after/rerun"), None);
    assert_eq!(status_of(&skipped), 409, "{skipped}");
    assert!(skipped.contains(r#"needs \"flaky\", which is failed: retry \"flaky\" instead"#), "{skipped}");
    let unknown = crew.post("ana", &format!("/api/dags/{dag_id}/nodes/nope/retry"), None);
    assert_eq!(status_of(&unknown), 409, "{unknown}");
    assert_eq!(crew.run(&dag_id)["seq"], failed["seq"], "nothing happened");

    // Retry: the failed run goes on from the failed node and completes.
    let taken = crew.post("ana", &retry, None);
    assert_eq!(status_of(&taken), 202, "{taken}");
    assert_eq!(json_body(&taken)["dag_id"], dag_id);
    let done = crew.until_ended(&dag_id, "completed", 1).await;
    assert_eq!(attempt(&done, "prepare"), 1, "upstream work is kept, not run again");
    assert_eq!(attempt(&done, "flaky"), 2, "the retry is the node's next attempt");
    assert_eq!(done["nodes"]["after"]["status"], "completed");
    assert_eq!(done["repairs"][0]["action"], "retry");
    assert_eq!(done["repairs"][0]["repaired_by"], "ana");
    assert_eq!(done["repairs"][0]["reset"], serde_json::json!(["flaky", "after"]));

    // The log says it in order: the repair, the reset nodes, the run running again, a second end.
    let log = crew.events(&dag_id);
    let at = log.iter().position(|e| matches!(e.body, ServerEventBody::RunRepaired { .. })).expect("run_repaired");
    let pending = |id: &str| ServerEventBody::NodeState {
        node_id: id.into(),
        status: NodeStatus::Pending,
        output: None,
        metrics: None,
    };
    assert_eq!(log[at + 1].body, pending("flaky"));
    assert_eq!(log[at + 2].body, pending("after"));
    assert_eq!(log[at + 3].body, ServerEventBody::RunStateChanged { state: RunPhase::Running });
    let ends = log.iter().filter(|e| matches!(e.body, ServerEventBody::ExecutionComplete { .. })).count();
    assert_eq!(ends, 2, "one end before the repair, one after");

    // Re-run from a node of the completed run: it runs again, upstream does not.
    let rerun = crew.post("ana", &format!("/api/dags/{dag_id}/nodes/after/rerun"), None);
    assert_eq!(status_of(&rerun), 202, "{rerun}");
    let again_done = crew.until_ended(&dag_id, "completed", 2).await;
    assert_eq!(attempt(&again_done, "after"), 2);
    assert_eq!(attempt(&again_done, "flaky"), 2, "upstream of the re-run node is kept");
    assert_eq!(again_done["repairs"][1]["action"], "rerun");

    // Run again: a new run of the same spec (its flaky node fails again on its first attempt);
    // with a changed env (admins only) it works at once.
    let again = crew.post("ana", &format!("/api/dags/{dag_id}/again"), None);
    assert_eq!(status_of(&again), 201, "{again}");
    let second = json_body(&again)["dag_id"].as_str().expect("a new run").to_owned();
    assert_ne!(second, dag_id);
    let second_run = crew.until_ended(&second, "failed", 0).await;
    assert_eq!(second_run["name"], "flaky-pipeline");
    let env = r#"{"env":{"FORCE":"yes"}}"#;
    let not_admin = crew.post("ana", &format!("/api/dags/{dag_id}/again"), Some(env));
    assert_eq!(status_of(&not_admin), 403, "{not_admin}");
    let bad_env = crew.post("admin", &format!("/api/dags/{dag_id}/again"), Some(r#"{"env":{"1X":"y"}}"#));
    assert_eq!(status_of(&bad_env), 400, "{bad_env}");
    let forced = crew.post("admin", &format!("/api/dags/{dag_id}/again"), Some(env));
    assert_eq!(status_of(&forced), 201, "{forced}");
    let third = json_body(&forced)["dag_id"].as_str().expect("a new run").to_owned();
    let third_run = crew.until_ended(&third, "completed", 0).await;
    assert_eq!(attempt(&third_run, "flaky"), 1, "the changed env made the first attempt work");
    let missing = crew.post("ana", "/api/dags/nope/again", None);
    assert_eq!(status_of(&missing), 404, "{missing}");
}

/// A cancelled run is not repaired; a node whose downstream still runs is not re-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_run_does_not_allow_is_a_409_with_the_reason() {
    let crew = crew(Backend::Sqlite, "refused").await;
    let spec = "name = \"slow\"\n[[nodes]]\nid = \"a\"\nkind = \"simulate\"\nduration = \"10ms\"\n\
                [[nodes]]\nid = \"b\"\nkind = \"simulate\"\nneeds = [\"a\"]\nduration = \"30s\"\n";
    let dag_id = crew.start(spec);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while crew.run(&dag_id)["nodes"]["b"]["status"] != "running" {
        assert!(tokio::time::Instant::now() < deadline, "b never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = crew.post("ana", &format!("/api/dags/{dag_id}/nodes/a/rerun"), None);
    assert_eq!(status_of(&busy), 409, "{busy}");
    assert!(busy.contains(r#"node \"b\", downstream of \"a\", is running"#), "{busy}");
    let running = crew.post("ana", &format!("/api/dags/{dag_id}/nodes/b/rerun"), None);
    assert!(running.contains("it can be re-run once it has finished"), "{running}");

    let run = crew.run(&dag_id);
    let service = crew._served.state.service.clone();
    let entry = service.find(&dag_id).await.expect("the run");
    let admin = SignedIn { name: "admin".into(), role: Role::Admin };
    service.command(&entry, &admin, ClientEvent::CancelExecution).await.expect("cancelled");
    crew.until_ended(&dag_id, "cancelled", 0).await;
    let cancelled = crew.post("ana", &format!("/api/dags/{dag_id}/nodes/a/rerun"), None);
    assert_eq!(status_of(&cancelled), 409, "{cancelled}");
    assert!(cancelled.contains("the run was cancelled: run it again instead"), "{cancelled}");
    assert!(crew.run(&dag_id)["seq"].as_u64() > run["seq"].as_u64(), "the cancel went through");
}

/// A run that failed before the server restarted is loaded as ended; a retry reopens it from its
/// stored log (this server's engine drives it again) and it completes. The store's record says
/// it runs again, then when it ended.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_failed_before_a_restart_is_reopened_by_a_retry(#[case] backend: Backend) {
    let scratch = common::Scratch::new(backend, "reopen").await;
    let dir = common::temp_dir(&format!("repair-reopen-{backend:?}"));
    let open = || async {
        let store = dagstream::store::open(&scratch.database, 4).await.expect("the database opens");
        let runs = dagstream::runs::Runs::open(RoomLimits::default(), EngineConfig::new(&dir), store).await;
        dagstream::service::Service::new(Arc::new(runs.expect("runs load")))
    };
    let first = open().await;
    let spec = dagstream::engine::DagSpec::parse(FLAKY, dagstream::engine::SpecFormat::Toml).expect("valid");
    let dag_id = first.runs().start(spec).await.expect("starts");
    let room = first.runs().get(&dag_id).expect("the run").room;
    tokio::time::timeout(PATIENCE, room.completed()).await.expect("the run ends");
    assert_eq!(room.snapshot().state, RunPhase::Failed);

    // The server restarts: the run is loaded as ended, with nothing driving it.
    let second = open().await;
    let entry = second.find(&dag_id).await.expect("loaded");
    assert!(entry.handle().is_none(), "an ended run has no engine after a restart");
    let ana = SignedIn { name: "ana".into(), role: Role::Approver };
    let refused = second.command(&entry, &ana, ClientEvent::PauseExecution).await.expect_err("ended");
    assert!(refused.to_string().contains("it takes no more commands"), "{refused}");
    second.command(&entry, &ana, ClientEvent::RetryNode { node_id: "flaky".into() }).await.expect("reopened");
    let reopened = second.find(&dag_id).await.expect("loaded");
    assert!(reopened.handle().is_some(), "the engine drives it again");
    let store = second.runs().store().expect("a store").clone();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let state = loop {
        let state = reopened.room.snapshot();
        if state.results.is_some() && !state.repairs.is_empty() {
            break state;
        }
        assert!(tokio::time::Instant::now() < deadline, "the run never ended again: {state:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(state.state, RunPhase::Completed, "{state:#?}");
    assert_eq!(state.nodes["flaky"].metrics.attempt, Some(2));
    assert_eq!(state.repairs[0].action, RepairAction::Retry);
    let record = store.run(&dag_id).await.expect("readable").expect("stored");
    assert_eq!(record.state, "completed");
    assert!(record.finished_at.is_some(), "it ended again: {record:?}");
    // Both lives agree with the store: the log folds to the same state.
    let texts = store.events(&dag_id, 0, u64::MAX).await.expect("events");
    assert_eq!(texts.len() as u64, state.seq, "every event was stored");
}
