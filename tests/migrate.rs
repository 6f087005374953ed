//! `dagstream migrate`: a SQLite database with a user, a finished run (a decision in it) and a
//! run waiting at a gate is copied to PostgreSQL by the real binary; the copy folds to the same
//! states, a server on the copy shows the same runs, a second copy is refused without
//! `--append` and copies nothing with it.

#![cfg(feature = "ssr")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Backend, Scratch};
use dagstream::engine::{DagSpec, EngineConfig, SpecFormat};
use dagstream::hub::RoomLimits;
use dagstream::protocol::{ClientEvent, Decision, NodeStatus, RunState};
use dagstream::runs::Runs;

const GATED: &str = r#"
name = "gated"
[[nodes]]
id = "work"
kind = "simulate"
duration = "10ms"
cost = 0.25
[[nodes]]
id = "review"
kind = "gate"
needs = ["work"]
title = "Ship it?"
"#;

async fn until(runs: &Runs, dag_id: &str, done: impl Fn(&RunState) -> bool) -> RunState {
    for _ in 0..1000 {
        let state = runs.get(dag_id).expect("run").room.snapshot();
        if done(&state) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the run did not get there");
}

fn migrate(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dagstream")).arg("migrate").args(args).output().expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_copies_every_run_and_checks_the_copy() {
    let source = Scratch::new(Backend::Sqlite, "migrate_from").await;
    let target = Scratch::new(Backend::Postgres, "migrate_to").await;
    let work = std::env::temp_dir().join(format!("dagstream-migrate-{}", std::process::id()));
    let (finished, waiting, before) = {
        let store = dagstream::store::open(&source.database, 2).await.expect("opens");
        let ana =
            dagstream::store::UserRow { name: "ana".into(), token_sha256: "ab".repeat(32), role: "viewer".into() };
        assert!(store.add_user(ana).await.expect("added"));
        let runs = Runs::open(RoomLimits::default(), EngineConfig::new(work.join("runs")), store).await.expect("runs");
        let spec = || DagSpec::parse(GATED, SpecFormat::Toml).expect("valid");
        let finished = runs.start(spec()).await.expect("starts");
        let waiting = runs.start(spec()).await.expect("starts");
        for dag_id in [&finished, &waiting] {
            until(&runs, dag_id, |s| s.nodes["review"].status == NodeStatus::Waiting).await;
        }
        let approve = ClientEvent::HumanDecision {
            node_id: "review".into(),
            decision: Decision::Approve,
            feedback: Some("looks good".into()),
            inputs: None,
        };
        let run = runs.get(&finished).expect("run");
        run.handle().expect("going").command(approve, "abe").await.expect("taken");
        until(&runs, &finished, |s| s.results.is_some()).await;
        let before: Vec<RunState> =
            [&finished, &waiting].iter().map(|id| runs.get(id).expect("run").room.snapshot()).collect();
        (finished, waiting, before)
    };
    // The source's writer has committed everything it showed (the snapshots above).
    let (from, to) = (source.url(), target.url());
    let (code, out, err) = migrate(&["--from", &from, "--to", &to]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("copied 2 runs (2 new, 0 completed)") && out.contains("1 decisions and 1 users"), "{out}");
    assert!(out.contains("each of the 2 runs folds to the same state"), "{out}");

    let (code, _, err) = migrate(&["--from", &from, "--to", &to]);
    assert_eq!(code, Some(1), "a target with runs is refused without --append: {err}");
    assert!(err.contains("already holds 2 runs") && err.contains("--append"), "{err}");
    let (code, out, err) = migrate(&["--from", &from, "--to", &to, "--append"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("copied 2 runs (0 new, 2 completed), 0 events, 0 decisions and 0 users"), "idempotent: {out}");

    // A server on the copy has the same runs: the finished one as it ended, the waiting one
    // still waiting (resumed), with the decision where it was.
    let store = dagstream::store::open(&target.database, 2).await.expect("opens");
    assert_eq!(store.users().await.expect("users").len(), 1, "the user came along");
    let decisions = store.decisions(&finished).await.expect("decisions");
    assert_eq!(decisions.len(), 1);
    assert_eq!((decisions[0].decided_by.as_str(), decisions[0].round), ("abe", 1));
    let runs = Runs::open(RoomLimits::default(), EngineConfig::new(work.join("copy")), store).await.expect("runs");
    let after: Vec<RunState> =
        [&finished, &waiting].iter().map(|id| runs.get(id).expect("copied").room.snapshot()).collect();
    assert_eq!(after, before, "the copy folds to the states the source showed");
    let run = runs.get(&waiting).expect("run");
    let reject = ClientEvent::HumanDecision {
        node_id: "review".into(),
        decision: Decision::Reject,
        feedback: None,
        inputs: None,
    };
    run.handle().expect("resumed on the copy").command(reject, "abe").await.expect("taken");
    let state = until(&runs, &waiting, |s| s.results.is_some()).await;
    assert_eq!(state.nodes["review"].status, NodeStatus::Failed);

    let (code, _, err) = migrate(&["--from", "sqlite:///no/such/file.db", "--to", &to]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no database to copy at /no/such/file.db"), "{err}");
}
