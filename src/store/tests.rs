//! The SQLite store: what goes in comes out in order, and broken files are clear errors.

use super::*;
use crate::protocol::Decision;

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dagstream-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("test.db")
}

fn record(dag_id: &str) -> RunRecord {
    RunRecord {
        dag_id: dag_id.into(),
        name: "t".into(),
        spec: "{}".into(),
        state: "running".into(),
        started_at: "2026-11-26T10:00:00.000Z".into(),
        finished_at: None,
    }
}

fn stored(dag_id: &str, seq: Seq, body: ServerEventBody) -> StoredEvent {
    let event = ServerEvent { seq, body };
    let json: Arc<str> = serde_json::to_string(&event).expect("json").into();
    StoredEvent::new(dag_id.into(), &event, json, "2026-11-26T10:00:00.000Z".into())
}

#[tokio::test]
async fn runs_events_and_decisions_come_back_in_order() {
    let store = SqliteStore::open(&temp_db("roundtrip")).await.expect("opens");
    store.create_run(record("a")).await.expect("run a");
    store.create_run(record("b")).await.expect("run b");
    let batch = vec![
        stored("a", 1, ServerEventBody::RunStateChanged { state: RunPhase::Running }),
        stored("b", 1, ServerEventBody::RunStateChanged { state: RunPhase::Running }),
        stored(
            "a",
            2,
            ServerEventBody::GateResolved {
                node_id: "g".into(),
                decision: Decision::Approve,
                feedback: Some("ok".into()),
                decided_by: "alice".into(),
                decided_at: "t".into(),
            },
        ),
        stored("a", 3, ServerEventBody::RunStateChanged { state: RunPhase::Completed }),
    ];
    store.append(batch).await.expect("stored");
    let events = store.events("a", 0, u64::MAX).await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|t| serde_json::from_str::<ServerEvent>(t).expect("valid").seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(store.events("a", 1, 2).await.expect("range").len(), 1);
    let decisions = store.decisions("a").await.expect("decisions");
    assert_eq!(decisions.len(), 1);
    assert_eq!((decisions[0].decided_by.as_str(), decisions[0].feedback.as_deref()), ("alice", Some("ok")));
    let runs = store.runs().await.expect("runs");
    let a = runs.iter().find(|r| r.dag_id == "a").expect("a");
    assert_eq!(a.state, "completed");
    assert!(a.finished_at.is_some());
}

#[tokio::test]
async fn a_batch_is_all_or_nothing() {
    let store = SqliteStore::open(&temp_db("atomic")).await.expect("opens");
    store.create_run(record("a")).await.expect("run");
    store
        .append(vec![stored("a", 1, ServerEventBody::RunStateChanged { state: RunPhase::Running })])
        .await
        .expect("first");
    let duplicate = vec![
        stored("a", 2, ServerEventBody::RunStateChanged { state: RunPhase::Paused }),
        stored("a", 1, ServerEventBody::RunStateChanged { state: RunPhase::Running }),
    ];
    assert!(store.append(duplicate).await.is_err());
    assert_eq!(store.events("a", 0, u64::MAX).await.expect("events").len(), 1, "nothing of the failed batch");
}

#[tokio::test]
async fn a_corrupt_or_read_only_file_is_a_clear_error() {
    let corrupt = temp_db("corrupt");
    std::fs::write(&corrupt, b"this is not a database, just some text that is long enough to matter ....")
        .expect("write");
    let error = SqliteStore::open(&corrupt).await.err().expect("refused").to_string();
    assert!(error.contains(&corrupt.display().to_string()), "{error}");

    let read_only = temp_db("readonly");
    drop(SqliteStore::open(&read_only).await.expect("create it first"));
    let mut permissions = std::fs::metadata(&read_only).expect("meta").permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&read_only, permissions).expect("chmod");
    // Root ignores file permissions; only check where they apply.
    if std::fs::OpenOptions::new().write(true).open(&read_only).is_err() {
        let error = SqliteStore::open(&read_only).await.err().expect("refused").to_string();
        assert!(error.contains("not writable") || error.contains("readonly"), "{error}");
    }
}
