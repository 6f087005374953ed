//! A run goes on across a restart as it would have without one: a waiting gate keeps what is
//! left of its timeout, a paused run stays paused, a budget gate still holds the rest, nodes
//! added at run time are still there and run, and a damaged log marks the run failed with the
//! reason. Each "process" is a tokio runtime of its own over the same SQLite file; dropping the
//! runtime ends every task of it at once, as a crash would.

#![cfg(feature = "ssr")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagstream::engine::{DagSpec, EngineConfig, SpecFormat};
use dagstream::hub::RoomLimits;
use dagstream::protocol::{ClientEvent, Decision, NodeStatus, RunPhase, RunState};
use dagstream::runs::Runs;
use dagstream::store::testing::{Backend, Scratch};
use dagstream::store::{Claim, Database, DecisionRow};
use rstest::rstest;

const PATIENCE: Duration = Duration::from_secs(20);

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dagstream-restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A fresh database of `backend` for one test (made on a runtime of its own: the tests'
/// servers live and die on theirs).
fn scratch(backend: Backend, name: &str) -> Scratch {
    tokio::runtime::Runtime::new().expect("rt").block_on(Scratch::new(backend, name))
}

/// One life of the server: a runtime, and the runs it loaded from `dir`'s database.
struct Life {
    runtime: tokio::runtime::Runtime,
    runs: Arc<Runs>,
}

impl Life {
    fn start(dir: &Path, database: &Database) -> Life {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let runs = runtime.block_on(async {
            let store = dagstream::store::open(database, 4).await.expect("store opens");
            let mut engine = EngineConfig::new(dir.join("runs"));
            engine.cancel_grace = Duration::from_millis(200);
            Runs::open(RoomLimits::default(), engine, store).await.expect("runs load")
        });
        Life { runtime, runs: Arc::new(runs) }
    }

    fn start_run(&self, spec: &str) -> String {
        let spec = DagSpec::parse(spec, SpecFormat::Toml).expect("test spec is valid");
        self.runtime.block_on(self.runs.start(spec)).expect("starts")
    }

    fn state(&self, dag_id: &str) -> RunState {
        self.runs.get(dag_id).expect("the run is loaded").room.snapshot()
    }

    /// Waits until the run's state satisfies `done`; answers that state.
    fn until(&self, dag_id: &str, what: &str, done: impl Fn(&RunState) -> bool) -> RunState {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let state = self.state(dag_id);
            if done(&state) {
                return state;
            }
            assert!(Instant::now() < deadline, "waited too long for {what}: {state:#?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn command(&self, dag_id: &str, event: ClientEvent) {
        let run = self.runs.get(dag_id).expect("run");
        let handle = run.handle().expect("the run is going");
        self.runtime.block_on(handle.command(event, "tester")).expect("the command is taken");
    }

    /// Ends this life at once (as SIGKILL would: nothing is flushed or said).
    fn crash(self) {
        self.runtime.shutdown_timeout(Duration::ZERO);
    }
}

/// Records a decision the way another server on the same database would, behind this one's back.
fn record_elsewhere(database: &Database, dag_id: &str, decision: &str, by: &str) -> Claim {
    tokio::runtime::Runtime::new().expect("rt").block_on(async {
        let store = dagstream::store::open(database, 1).await.expect("opens");
        let row = DecisionRow {
            node_id: "g".into(),
            round: 1,
            decision: decision.into(),
            feedback: None,
            decided_by: by.into(),
            decided_at: dagstream::protocol::now_rfc3339(),
            inputs: None,
        };
        store.claim_decision(dag_id, row).await.expect("answered")
    })
}

const GATE_THEN_WORK: &str = "name = \"t\"\n[[nodes]]\nid = \"g\"\nkind = \"gate\"\ntitle = \"Go?\"\nprompt = \"p\"\n\
     [[nodes]]\nid = \"after\"\nkind = \"simulate\"\nneeds = [\"g\"]\nduration = \"10ms\"\n";

/// Another server recorded a decision on the gate first: the decision this server's person
/// sends after it is taken, but the one the database holds is the one that applies.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[test]
fn the_decision_the_database_holds_wins_over_a_later_one(#[case] backend: Backend) {
    let dir = data_dir(&format!("elsewhere-{backend:?}"));
    let scratch = scratch(backend, "elsewhere");
    let life = Life::start(&dir, &scratch.database);
    let dag_id = life.start_run(GATE_THEN_WORK);
    life.until(&dag_id, "the gate waits", |s| s.nodes["g"].status == NodeStatus::Waiting);
    assert_eq!(record_elsewhere(&scratch.database, &dag_id, "reject", "other-server"), Claim::Won);
    life.command(&dag_id, approve("g"));
    let done = life.until(&dag_id, "the run ends", |s| s.results.is_some());
    let decided: Vec<(&str, Decision)> = done.decisions.iter().map(|d| (d.decided_by.as_str(), d.decision)).collect();
    assert_eq!(decided, [("other-server", Decision::Reject)], "one decision, the database's");
    assert_eq!(done.nodes["g"].status, NodeStatus::Failed);
    assert_eq!(done.nodes["after"].status, NodeStatus::Skipped);
    life.crash();
}

/// A decision recorded just before a crash, whose `gate_resolved` event was never stored,
/// applies when the run is resumed: nobody has to decide again.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[test]
fn a_decision_recorded_before_a_crash_applies_after_the_restart(#[case] backend: Backend) {
    let dir = data_dir(&format!("recorded-{backend:?}"));
    let scratch = scratch(backend, "recorded");
    let first = Life::start(&dir, &scratch.database);
    let dag_id = first.start_run(GATE_THEN_WORK);
    first.until(&dag_id, "the gate waits", |s| s.nodes["g"].status == NodeStatus::Waiting);
    first.crash();
    assert_eq!(record_elsewhere(&scratch.database, &dag_id, "approve", "abe"), Claim::Won);
    let second = Life::start(&dir, &scratch.database);
    let done = second.until(&dag_id, "the run ends", |s| s.results.is_some());
    assert_eq!(done.state, RunPhase::Completed);
    assert_eq!(done.decisions.len(), 1);
    assert_eq!((done.decisions[0].decided_by.as_str(), done.decisions[0].decision), ("abe", Decision::Approve));
    second.crash();
}

fn approve(gate: &str) -> ClientEvent {
    ClientEvent::HumanDecision { node_id: gate.into(), decision: Decision::Approve, feedback: None, inputs: None }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[test]
fn a_waiting_gate_keeps_what_is_left_of_its_timeout(#[case] backend: Backend) {
    let dir = data_dir(&format!("gate-timeout-{backend:?}"));
    let scratch = scratch(backend, "gate_timeout");
    let first = Life::start(&dir, &scratch.database);
    let dag_id = first.start_run(
        "name = \"t\"\n[[nodes]]\nid = \"g\"\nkind = \"gate\"\ntitle = \"Go?\"\nprompt = \"p\"\n\
         timeout = \"2s\"\non_timeout = \"approve\"\n[[nodes]]\nid = \"after\"\nkind = \"simulate\"\nneeds = [\"g\"]\n",
    );
    let waiting = first.until(&dag_id, "the gate waits", |s| s.nodes["g"].status == NodeStatus::Waiting);
    let timeout_at = waiting.nodes["g"].gate.as_ref().and_then(|g| g.timeout_at.clone()).expect("a timeout");
    let timeout_at = humantime::parse_rfc3339(&timeout_at).expect("RFC 3339");
    // A quarter of the timeout passes before the crash, so what is left of it (1.5 s) and a
    // whole new one (2 s after the restart) are far apart.
    std::thread::sleep(Duration::from_millis(500));
    first.crash();
    let second = Life::start(&dir, &scratch.database);
    let state = second.state(&dag_id);
    assert_eq!(state.nodes["g"].status, NodeStatus::Waiting, "still waiting after the restart");
    let after_restart = std::time::SystemTime::now();
    let done = second.until(&dag_id, "the timeout decides", |s| s.results.is_some());
    let decision = done.decisions.last().expect("decided");
    assert_eq!((decision.decided_by.as_str(), decision.decision), ("timeout", Decision::Approve));
    let decided_at = humantime::parse_rfc3339(&decision.decided_at).expect("RFC 3339");
    // At the original deadline (give or take a tick), not a whole timeout after the restart.
    assert!(decided_at + Duration::from_millis(50) >= timeout_at, "not before its deadline");
    let whole_timeout_after_restart = after_restart + Duration::from_secs(2);
    assert!(
        decided_at + Duration::from_millis(250) < whole_timeout_after_restart,
        "the remaining timeout, not a new one"
    );
    assert_eq!(done.state, RunPhase::Completed);
    second.crash();
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[test]
fn a_paused_run_stays_paused_and_resumes_when_told(#[case] backend: Backend) {
    let dir = data_dir(&format!("paused-{backend:?}"));
    let scratch = scratch(backend, "paused");
    let first = Life::start(&dir, &scratch.database);
    let dag_id = first.start_run(
        "name = \"t\"\n[[nodes]]\nid = \"a\"\nkind = \"simulate\"\nduration = \"50ms\"\n\
         [[nodes]]\nid = \"b\"\nkind = \"simulate\"\nneeds = [\"a\"]\nduration = \"50ms\"\n",
    );
    first.command(&dag_id, ClientEvent::PauseExecution);
    let paused = first.until(&dag_id, "paused", |s| s.state == RunPhase::Paused);
    first.crash();
    let second = Life::start(&dir, &scratch.database);
    let state = second.state(&dag_id);
    assert_eq!(state.state, RunPhase::Paused, "still paused after the restart");
    // Nothing that waited starts while the run is paused (a's attempt may finish and b waits).
    std::thread::sleep(Duration::from_millis(300));
    let still = second.state(&dag_id);
    assert_eq!(paused.nodes["b"].status, NodeStatus::Pending);
    assert_eq!(still.nodes["b"].status, NodeStatus::Pending, "nothing new starts while paused");
    assert_eq!(still.state, RunPhase::Paused);
    second.command(&dag_id, ClientEvent::ResumeExecution);
    let done = second.until(&dag_id, "completed", |s| s.results.is_some());
    assert_eq!(done.state, RunPhase::Completed);
    second.crash();
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[test]
fn a_budget_gate_still_holds_the_rest_after_a_restart(#[case] backend: Backend) {
    let dir = data_dir(&format!("budget-{backend:?}"));
    let scratch = scratch(backend, "budget");
    let first = Life::start(&dir, &scratch.database);
    let dag_id = first.start_run(
        "name = \"t\"\nbudget = 1.0\nbudget_step = 2.0\nmax_parallel = 1\n\
         [[nodes]]\nid = \"a\"\nkind = \"simulate\"\nduration = \"10ms\"\ncost = 1.2\n\
         [[nodes]]\nid = \"b\"\nkind = \"simulate\"\nneeds = [\"a\"]\nduration = \"10ms\"\ncost = 0.5\n",
    );
    first.until(&dag_id, "the budget gate waits", |s| {
        s.nodes.get("budget_1").is_some_and(|n| n.status == NodeStatus::Waiting)
    });
    first.crash();
    let second = Life::start(&dir, &scratch.database);
    let state = second.state(&dag_id);
    assert_eq!(state.nodes["budget_1"].status, NodeStatus::Waiting, "the budget gate still waits");
    assert_eq!(state.nodes["b"].status, NodeStatus::Pending, "and still holds b");
    assert!(state.nodes["b"].needs.contains(&"budget_1".to_owned()));
    second.command(&dag_id, approve("budget_1"));
    let done = second.until(&dag_id, "completed", |s| s.results.is_some());
    assert_eq!(done.state, RunPhase::Completed);
    assert_eq!(done.cost.budget, 3.0, "approving added the step");
    assert!(done.nodes.keys().all(|id| id != "budget_2"), "no second gate: 1.7 spent of 3.0");
    second.crash();
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[test]
fn nodes_added_at_run_time_are_still_there_and_run_after_a_restart(#[case] backend: Backend) {
    let dir = data_dir(&format!("mutated-{backend:?}"));
    let scratch = scratch(backend, "mutated");
    let first = Life::start(&dir, &scratch.database);
    let dag_id = first.start_run(
        "name = \"t\"\n[[nodes]]\nid = \"plan\"\nkind = \"command\"\n\
         run = '''echo '{\"add_node\": {\"id\": \"extra\", \"kind\": \"gate\", \"title\": \"More?\", \"prompt\": \"p\"}, \"after\": [\"plan\"]}' >> \"$DAGSTREAM_REPORT\"'''\n\
         [[nodes]]\nid = \"last\"\nkind = \"simulate\"\nneeds = [\"plan\"]\n",
    );
    first.until(&dag_id, "the added gate waits", |s| {
        s.nodes.get("extra").is_some_and(|n| n.status == NodeStatus::Waiting)
    });
    first.crash();
    let second = Life::start(&dir, &scratch.database);
    let state = second.state(&dag_id);
    assert_eq!(state.nodes["extra"].needs, ["plan"], "the added node and its edge are back");
    assert_eq!(state.nodes["extra"].status, NodeStatus::Waiting);
    second.command(&dag_id, approve("extra"));
    let done = second.until(&dag_id, "completed", |s| s.results.is_some());
    assert_eq!(done.nodes["extra"].status, NodeStatus::Completed, "the added gate was run by the resumed run");
    assert_eq!(done.state, RunPhase::Completed);
    second.crash();
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[test]
fn a_damaged_log_marks_the_run_failed_with_the_reason(#[case] backend: Backend) {
    let dir = data_dir(&format!("damaged-{backend:?}"));
    let scratch = scratch(backend, "damaged");
    let first = Life::start(&dir, &scratch.database);
    let dag_id =
        first.start_run("name = \"t\"\n[[nodes]]\nid = \"g\"\nkind = \"gate\"\ntitle = \"Go?\"\nprompt = \"p\"\n");
    first.until(&dag_id, "the gate waits", |s| s.nodes["g"].status == NodeStatus::Waiting);
    first.crash();
    // Damage one stored event (as a bad disk or a hand edit would): JSON, but not an event.
    tokio::runtime::Runtime::new().expect("rt").block_on(damage_event(&scratch.database, &dag_id, 2));
    let second = Life::start(&dir, &scratch.database);
    let state = second.until(&dag_id, "marked failed", |s| s.results.is_some());
    assert_eq!(state.state, RunPhase::Failed);
    let reason = &state.errors.last().expect("an error says why").message;
    assert!(reason.contains("log is damaged") && reason.contains("event after 1"), "{reason}");
    second.crash();
}

/// Overwrites event `seq` of `dag_id` with JSON that is not an event, behind the store's back.
async fn damage_event(database: &Database, dag_id: &str, seq: i64) {
    const DAMAGE: &str = "UPDATE events SET body = '{\"type\": 1}' WHERE dag_id = ";
    let changed = match database {
        Database::Sqlite(path) => {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.expect("opens");
            let sql = format!("{DAMAGE}? AND seq = ?");
            sqlx::query(&sql).bind(dag_id).bind(seq).execute(&pool).await.expect("damaged").rows_affected()
        }
        Database::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url).await.expect("connects");
            let sql = format!("{DAMAGE}$1 AND seq = $2");
            sqlx::query(&sql).bind(dag_id).bind(seq).execute(&pool).await.expect("damaged").rows_affected()
        }
    };
    assert_eq!(changed, 1, "one event damaged");
}
