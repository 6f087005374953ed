//! Every backend behaves the same: what goes in comes out in order, a batch is all or nothing,
//! one decision per gate round however many deciders race, and broken databases are clear
//! errors. Each test runs once per backend (`#[case]`s); PostgreSQL ones on a database of their
//! own ([`testing::Scratch`]).

use rstest::rstest;

use super::testing::{Backend, Scratch};
use super::*;

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

fn decision(node_id: &str, round: i64, by: &str) -> DecisionRow {
    DecisionRow {
        node_id: node_id.into(),
        round,
        decision: "approve".into(),
        feedback: Some(format!("from {by}")),
        decided_by: by.into(),
        decided_at: "2026-11-26T10:00:01.000Z".into(),
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn runs_events_and_decisions_come_back_in_order(#[case] backend: Backend) {
    let scratch = Scratch::new(backend, "roundtrip").await;
    let store = open(&scratch.database, 2).await.expect("opens");
    store.create_run(record("a")).await.expect("run a");
    store.create_run(record("b")).await.expect("run b");
    let batch = vec![
        stored("a", 1, ServerEventBody::RunStateChanged { state: RunPhase::Running }),
        stored("b", 1, ServerEventBody::RunStateChanged { state: RunPhase::Running }),
        stored("a", 2, ServerEventBody::RunStateChanged { state: RunPhase::Paused }),
        stored("a", 3, ServerEventBody::RunStateChanged { state: RunPhase::Completed }),
    ];
    let sent: Vec<String> = batch.iter().filter(|e| &*e.dag_id == "a").map(|e| e.json.to_string()).collect();
    store.append(batch).await.expect("stored");
    let events = store.events("a", 0, u64::MAX).await.expect("events");
    assert_eq!(events, sent, "the bodies come back byte for byte, in seq order");
    assert_eq!(store.events("a", 1, 2).await.expect("range").len(), 1);
    assert_eq!(store.claim_decision("a", decision("g", 1, "alice")).await.expect("claim"), Claim::Won);
    assert_eq!(store.claim_decision("a", decision("g", 2, "bob")).await.expect("claim"), Claim::Won);
    let decisions = store.decisions("a").await.expect("decisions");
    assert_eq!(decisions, [decision("g", 1, "alice"), decision("g", 2, "bob")]);
    assert!(store.decisions("b").await.expect("decisions").is_empty());
    let runs = store.runs().await.expect("runs");
    assert_eq!(runs.iter().map(|r| r.dag_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(
        (runs[0].state.as_str(), runs[0].finished_at.as_deref()),
        ("completed", Some("2026-11-26T10:00:00.000Z"))
    );
    assert_eq!((runs[1].state.as_str(), runs[1].finished_at.as_deref()), ("running", None));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_batch_is_all_or_nothing(#[case] backend: Backend) {
    let scratch = Scratch::new(backend, "atomic").await;
    let store = open(&scratch.database, 2).await.expect("opens");
    store.create_run(record("a")).await.expect("run");
    store
        .append(vec![stored("a", 1, ServerEventBody::RunStateChanged { state: RunPhase::Running })])
        .await
        .expect("first");
    let duplicate = vec![
        stored("a", 2, ServerEventBody::RunStateChanged { state: RunPhase::Completed }),
        stored("a", 1, ServerEventBody::RunStateChanged { state: RunPhase::Running }),
    ];
    assert!(store.append(duplicate).await.is_err());
    assert_eq!(store.events("a", 0, u64::MAX).await.expect("events").len(), 1, "nothing of the failed batch");
    let runs = store.runs().await.expect("runs");
    assert_eq!(runs[0].state, "running", "nor its run state");
}

/// Ten deciders, each with a connection pool of its own (as if in ten processes), decide the
/// same gate round at once: the database lets exactly one win, and the nine others are told
/// the winner's decision. The next round is a new decision.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_decision_per_gate_round_among_ten_concurrent_deciders(#[case] backend: Backend) {
    let scratch = Scratch::new(backend, "decide").await;
    let first = open(&scratch.database, 1).await.expect("opens");
    first.create_run(record("a")).await.expect("run");
    let mut deciders = Vec::new();
    for _ in 0..10 {
        deciders.push(open(&scratch.database, 1).await.expect("a second connection"));
    }
    let start = Arc::new(tokio::sync::Barrier::new(deciders.len()));
    let claims = deciders.into_iter().enumerate().map(|(i, store)| {
        let start = Arc::clone(&start);
        tokio::spawn(async move {
            start.wait().await;
            store.claim_decision("a", decision("g", 1, &format!("decider{i}"))).await
        })
    });
    let mut winners = Vec::new();
    let mut told = Vec::new();
    for (i, claim) in futures::future::join_all(claims).await.into_iter().enumerate() {
        match claim.expect("no panic").expect("the claim is answered") {
            Claim::Won => winners.push(format!("decider{i}")),
            Claim::Taken(row) => told.push(row.decided_by),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    assert_eq!(told.len(), 9);
    assert!(told.iter().all(|by| *by == winners[0]), "the losers learn the winner: {told:?}");
    assert_eq!(first.decisions("a").await.expect("decisions"), [decision("g", 1, &winners[0])]);
    assert_eq!(first.claim_decision("a", decision("g", 2, "late")).await.expect("claim"), Claim::Won);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn sessions_are_kept_and_forgotten(#[case] backend: Backend) {
    let scratch = Scratch::new(backend, "sessions").await;
    let store = open(&scratch.database, 2).await.expect("opens");
    let session = SessionRow { id_hash: "h1".into(), user_name: "alice".into(), expires_at: i64::MAX / 2 };
    let expired = SessionRow { id_hash: "h0".into(), user_name: "bob".into(), expires_at: 1 };
    store.save_session(expired).await.expect("saved");
    store.save_session(session.clone()).await.expect("saved");
    assert_eq!(store.sessions().await.expect("sessions"), [session], "an expired one goes when a new one comes");
    store.delete_session("h1").await.expect("deleted");
    assert!(store.sessions().await.expect("sessions").is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn users_are_kept_once_by_name(#[case] backend: Backend) {
    let scratch = Scratch::new(backend, "users").await;
    let store = open(&scratch.database, 2).await.expect("opens");
    let ana = UserRow { name: "ana".into(), token_sha256: "ab".repeat(32), role: "approver".into() };
    let bo = UserRow { name: "bo".into(), token_sha256: "cd".repeat(32), role: "viewer".into() };
    assert!(store.add_user(bo.clone()).await.expect("added"));
    assert!(store.add_user(ana.clone()).await.expect("added"));
    let again = UserRow { role: "admin".into(), ..ana.clone() };
    assert!(!store.add_user(again).await.expect("answered"), "a name is taken once");
    assert_eq!(store.users().await.expect("users"), [ana, bo], "by name, the first one kept");
}

#[tokio::test]
async fn a_corrupt_or_read_only_file_is_a_clear_error() {
    let scratch = Scratch::new(Backend::Sqlite, "corrupt").await;
    let Database::Sqlite(corrupt) = &scratch.database else { unreachable!("a SQLite scratch") };
    std::fs::write(corrupt, b"this is not a database, just some text that is long enough to matter ....")
        .expect("write");
    let error = SqliteStore::open(corrupt).await.err().expect("refused").to_string();
    assert!(error.contains(&corrupt.display().to_string()), "{error}");

    let scratch = Scratch::new(Backend::Sqlite, "readonly").await;
    let Database::Sqlite(read_only) = &scratch.database else { unreachable!("a SQLite scratch") };
    drop(SqliteStore::open(read_only).await.expect("create it first"));
    let mut permissions = std::fs::metadata(read_only).expect("meta").permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(read_only, permissions).expect("chmod");
    // Root ignores file permissions; only check where they apply.
    if std::fs::OpenOptions::new().write(true).open(read_only).is_err() {
        let error = SqliteStore::open(read_only).await.err().expect("refused").to_string();
        assert!(error.contains("not writable") || error.contains("readonly"), "{error}");
    }
}

/// A PostgreSQL server that is not there, or a database that does not exist, stops opening
/// with the host and what failed, and never the password.
#[tokio::test]
async fn an_unreachable_or_refused_postgres_is_a_clear_error() {
    let closed_port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let url = format!("postgres://dagstream:s3cret@127.0.0.1:{closed_port}/runs");
    let database: Database = url.parse().expect("a well-formed URL");
    let error = open(&database, 1).await.err().expect("refused").to_string();
    assert!(error.contains(&format!("127.0.0.1:{closed_port}/runs")), "{error}");
    assert!(!error.contains("s3cret"), "{error}");

    let missing = testing::with_database(&testing::admin_url(), "no_such_database_here");
    let error = open(&missing.parse().expect("URL"), 1).await.err().expect("refused").to_string();
    assert!(error.contains("no_such_database_here") && error.contains("does not exist"), "{error}");
}

#[test]
fn database_urls_are_read_or_refused_with_a_reason() {
    let table: &[(&str, Result<Database, &str>)] = &[
        ("sqlite://data/x.db", Ok(Database::Sqlite("data/x.db".into()))),
        ("sqlite:///abs/x.db", Ok(Database::Sqlite("/abs/x.db".into()))),
        ("sqlite:x.db", Ok(Database::Sqlite("x.db".into()))),
        ("postgres://u@localhost:5432/db", Ok(Database::Postgres("postgres://u@localhost:5432/db".into()))),
        ("postgresql://u@h/db", Ok(Database::Postgres("postgresql://u@h/db".into()))),
        ("sqlite://", Err("names no file")),
        ("mysql://u:pw@h/db", Err("is not a database URL")),
        ("postgres://u@h:notaport/db", Err("is not a PostgreSQL URL")),
        ("data/x.db", Err("is not a database URL")),
    ];
    for (url, expected) in table {
        match (url.parse::<Database>(), expected) {
            (Ok(got), Ok(want)) => assert_eq!(&got, want, "{url}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{url}: {got}"),
            (got, want) => panic!("{url}: {got:?}, expected {want:?}"),
        }
    }
    assert!(!"mysql://u:pw@h/db".parse::<Database>().unwrap_err().contains("pw"), "no password in messages");
    let shown = "postgres://u:pw@h:5/db".parse::<Database>().expect("URL").to_string();
    assert_eq!(shown, "postgres://u:***@h:5/db");
}
