//! Every backend behaves the same: what goes in comes out in order, a batch is all or nothing,
//! one decision per gate round however many deciders race, and broken databases are clear
//! errors. Each test runs once per backend (`#[case]`s); PostgreSQL ones on a database of their
//! own ([`testing::Scratch`]).

use std::time::Duration;

use rstest::rstest;

use super::testing::{Backend, Scratch};
use super::*;
use crate::protocol::NodeStatus;

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
        inputs: Some(format!(r#"{{"note":"from {by}"}}"#)),
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

    // A repair reopens an ended run: it runs again with no end, then ends anew; in one batch
    // (ended, reopened) only the last state stands.
    store
        .append(vec![stored("a", 4, ServerEventBody::RunStateChanged { state: RunPhase::Running })])
        .await
        .expect("reopened");
    let reopened = store.run("a").await.expect("readable").expect("stored");
    assert_eq!((reopened.state.as_str(), reopened.finished_at), ("running", None));
    store
        .append(vec![
            stored("a", 5, ServerEventBody::RunStateChanged { state: RunPhase::Failed }),
            stored("a", 6, ServerEventBody::RunStateChanged { state: RunPhase::Running }),
        ])
        .await
        .expect("ended and reopened");
    let again = store.run("a").await.expect("readable").expect("stored");
    assert_eq!((again.state.as_str(), again.finished_at), ("running", None));
    store
        .append(vec![stored("a", 7, ServerEventBody::RunStateChanged { state: RunPhase::Completed })])
        .await
        .expect("ended");
    let ended = store.run("a").await.expect("readable").expect("stored");
    assert_eq!((ended.state.as_str(), ended.finished_at.is_some()), ("completed", true));
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

    // One event goes in as one statement, a few in place, many on a blocking thread (on
    // SQLite): all or nothing each.
    let running = |seq| {
        stored(
            "a",
            seq,
            ServerEventBody::NodeState {
                node_id: "n".into(),
                status: NodeStatus::Running,
                output: None,
                metrics: None,
            },
        )
    };
    assert!(store.append(vec![running(2), running(3), running(1)]).await.is_err());
    assert_eq!(store.events("a", 0, u64::MAX).await.expect("events").len(), 1, "nothing of it");
    let many: Vec<StoredEvent> = (2..=40).chain([1]).map(running).collect();
    assert!(store.append(many).await.is_err());
    assert_eq!(store.events("a", 0, u64::MAX).await.expect("events").len(), 1, "nothing of the big one");
    store.append(Vec::new()).await.expect("an empty batch stores nothing, without error");
    store.append(vec![running(2), running(3)]).await.expect("stored");
    assert_eq!(store.events("a", 0, u64::MAX).await.expect("events").len(), 3);
    store.append((4..=40).map(running).collect()).await.expect("a big batch stored");
    store.append(vec![running(41)]).await.expect("one event stored");
    assert_eq!(store.events("a", 0, u64::MAX).await.expect("events").len(), 41);
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

/// A SQLite store on a scratch file, with run `a` recorded.
async fn sqlite_with_run(name: &str) -> (Scratch, SqliteStore) {
    let scratch = Scratch::new(Backend::Sqlite, name).await;
    let Database::Sqlite(path) = &scratch.database else { unreachable!("a SQLite scratch") };
    let store = SqliteStore::open(path).await.expect("opens");
    store.create_run(record("a")).await.expect("run");
    (scratch, store)
}

/// SQLite: an append that finds another connection writing waits for it on a blocking thread,
/// not on the caller's (which it would hold up to the 5 s busy timeout), then stores its events.
#[tokio::test]
async fn a_sqlite_append_waits_for_another_writer_off_the_callers_thread() {
    let (scratch, store) = sqlite_with_run("busy").await;
    let Database::Sqlite(path) = &scratch.database else { unreachable!("a SQLite scratch") };
    let other = rusqlite::Connection::open(path).expect("another connection");
    other.execute_batch("BEGIN IMMEDIATE").expect("takes the write lock");

    let mut append = store.append(vec![stored("a", 1, ServerEventBody::RunStateChanged { state: RunPhase::Running })]);
    let polled = std::time::Instant::now();
    assert!(futures::poll!(&mut append).is_pending(), "the append waits for the lock");
    let held = polled.elapsed();
    assert!(held < Duration::from_secs(1), "the caller's thread was held {held:?}");
    other.execute_batch("COMMIT").expect("lets go of the lock");
    append.await.expect("stored once the lock is free");
    assert_eq!(store.events("a", 0, u64::MAX).await.expect("events").len(), 1);
    assert_eq!(store.runs().await.expect("runs")[0].state, "running");
}

/// SQLite: the appending connection does not checkpoint (that is where `fsync` happens), yet the
/// event log is copied into the database file as it grows.
#[tokio::test]
async fn the_sqlite_event_log_is_checkpointed_into_the_database_file_as_it_grows() {
    let (scratch, store) = sqlite_with_run("checkpoint").await;
    let Database::Sqlite(path) = &scratch.database else { unreachable!("a SQLite scratch") };
    let before = std::fs::metadata(path).expect("database file").len();
    // 5 MiB of events, past the 4 MiB after which a checkpoint starts.
    let output = serde_json::json!({ "text": "x".repeat(64 * 1024) });
    for first in (1..=80).step_by(8) {
        let batch = (first..first + 8)
            .map(|seq| {
                let body = ServerEventBody::NodeState {
                    node_id: "n".into(),
                    status: NodeStatus::Running,
                    output: Some(output.clone()),
                    metrics: None,
                };
                stored("a", seq, body)
            })
            .collect();
        store.append(batch).await.expect("stored");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut size = std::fs::metadata(path).expect("database file").len();
    while size < before + (4 << 20) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        size = std::fs::metadata(path).expect("database file").len();
    }
    assert!(size >= before + (4 << 20), "the database file holds the events: {before} → {size} bytes");
    assert_eq!(store.events("a", 0, u64::MAX).await.expect("events").len(), 80);
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

mod leases {
    //! Run leases and fencing, PostgreSQL's alone (a cluster keeps its runs there).

    use std::time::Duration;

    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    async fn pg(name: &str) -> (Scratch, Arc<PgStore>) {
        let scratch = Scratch::new(Backend::Postgres, name).await;
        let Database::Postgres(url) = &scratch.database else { unreachable!("a PostgreSQL scratch") };
        let store = Arc::new(PgStore::open(url, 12).await.expect("opens"));
        (scratch, store)
    }

    fn leased(dag_id: &str, seq: Seq, epoch: i64) -> StoredEvent {
        let mut event = stored(dag_id, seq, ServerEventBody::RunStateChanged { state: RunPhase::Running });
        event.epoch = Some(epoch);
        event
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_ten_instances_claiming_a_run_at_once_exactly_one_gets_it() {
        let (_scratch, store) = pg("claim").await;
        store.create_run(record("r")).await.expect("run");
        let claims: Vec<_> = (0..10)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.claim_run("r", &format!("i{i}"), TTL).await.expect("claim") })
            })
            .collect();
        let mut won = Vec::new();
        for claim in claims {
            if let Some(epoch) = claim.await.expect("ran") {
                won.push(epoch);
            }
        }
        assert_eq!(won, [1], "one claim, epoch 1");
        assert_eq!(store.claim_run("r", "late", TTL).await.expect("claim"), None, "a held lease is not claimable");
        assert!(store.claimable_runs("late").await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn an_expired_lease_is_claimed_with_a_new_epoch_and_the_old_owner_is_fenced() {
        let (_scratch, store) = pg("fence").await;
        store.create_run(record("r")).await.expect("run r");
        store.create_run(record("other")).await.expect("run other");
        let old = store.claim_run("r", "a", Duration::from_millis(50)).await.expect("claim").expect("free");
        let other = store.claim_run("other", "a", TTL).await.expect("claim").expect("free");
        store.append(vec![leased("r", 1, old)]).await.expect("the owner appends");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.claimable_runs("b").await.expect("list"), ["r"], "the lease ran out");
        let new = store.claim_run("r", "b", TTL).await.expect("claim").expect("expired");
        assert_eq!(new, old + 1);
        assert_eq!(store.owner("r").await.expect("owner").as_deref(), Some("b"));

        // The old owner wakes up: its events of r are refused, its events of a run it still
        // holds are stored, in the same batch.
        let appended =
            store.append(vec![leased("r", 2, old), leased("other", 1, other)]).await.expect("the batch is stored");
        assert_eq!(appended.fenced, [(Arc::from("r"), old)]);
        assert_eq!(store.events("r", 0, u64::MAX).await.expect("events").len(), 1, "nothing of the old epoch");
        assert_eq!(store.events("other", 0, u64::MAX).await.expect("events").len(), 1);
        assert_eq!(
            store.renew_leases("a", &[("r".into(), old), ("other".into(), other)], TTL).await.expect("renew"),
            ["other"],
            "renewal answers only the leases still held"
        );
        assert!(store.append(vec![leased("r", 2, new)]).await.expect("stored").fenced.is_empty());
    }

    #[tokio::test]
    async fn new_runs_go_to_the_live_instance_with_the_fewest_and_leaving_frees_its_runs() {
        let (_scratch, store) = pg("place").await;
        store.heartbeat("a", "http://a").await.expect("a lives");
        store.heartbeat("b", "http://b").await.expect("b lives");
        store.create_run(record("r1")).await.expect("run");
        store.claim_run("r1", "a", TTL).await.expect("claim").expect("free");
        store.create_run(record("r2")).await.expect("run");
        assert_eq!(store.place_run("r2", TTL).await.expect("placed").as_deref(), Some("b"), "b drives fewer");
        assert_eq!(store.claimable_runs("a").await.expect("list"), Vec::<String>::new(), "held for b");
        assert_eq!(store.claimable_runs("b").await.expect("list"), ["r2"], "b may claim what was placed on it");
        assert_eq!(store.claim_run("r2", "b", TTL).await.expect("claim"), Some(1));
        assert_eq!(store.live_instances(TTL).await.expect("live").len(), 2);

        store.leave("a").await.expect("a leaves");
        assert_eq!(store.live_instances(TTL).await.expect("live"), [("b".to_owned(), "http://b".to_owned())]);
        assert_eq!(store.owner("r1").await.expect("owner"), None, "a's lease ended with it");
        assert_eq!(
            store.claim_run("r1", "b", TTL).await.expect("claim"),
            Some(2),
            "claimed at once, not after the TTL"
        );
    }

    #[tokio::test]
    async fn finished_and_external_runs_are_never_claimed() {
        let (_scratch, store) = pg("unclaimable").await;
        store.create_run(record("done")).await.expect("run");
        store
            .append(vec![stored("done", 1, ServerEventBody::RunStateChanged { state: RunPhase::Completed })])
            .await
            .expect("stored");
        let mut external = record("ext");
        external.spec = r#"{"external": true, "name": "e", "nodes": []}"#.into();
        store.create_run(external).await.expect("run");
        assert!(store.claimable_runs("a").await.expect("list").is_empty());
        assert_eq!(store.claim_run("done", "a", TTL).await.expect("claim"), None);
        assert_eq!(store.claim_run("ext", "a", TTL).await.expect("claim"), None);
        assert_eq!(store.last_seqs(&["done".into(), "ext".into()]).await.expect("seqs"), [("done".to_owned(), 1)]);
    }

    #[tokio::test]
    async fn sqlite_refuses_leased_events_rather_than_ignoring_the_epoch() {
        let scratch = Scratch::new(Backend::Sqlite, "sqlite_epoch").await;
        let store = open(&scratch.database, 1).await.expect("opens");
        store.create_run(record("r")).await.expect("run");
        assert!(store.append(vec![leased("r", 1, 1)]).await.is_err());
        assert!(store.events("r", 0, u64::MAX).await.expect("events").is_empty());
    }
}

fn notification(id: &str, seq: i64, now: i64) -> NotificationRow {
    NotificationRow {
        id: id.into(),
        dag_id: "a".into(),
        seq,
        topic: "gate_waiting".into(),
        url: "http://receiver/hook".into(),
        format: "json".into(),
        secret: Some("0123456789abcdef".into()),
        body: format!(r#"{{"id":"{id}"}}"#),
        created_at: now,
        next_attempt_at: Some(now),
        attempts: 0,
        outcome: "pending".into(),
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_outbox_keeps_a_notification_once_holds_what_is_taken_and_records_attempts(#[case] backend: Backend) {
    let scratch = Scratch::new(backend, "outbox").await;
    let store = open(&scratch.database, 2).await.expect("opens");
    store.create_run(record("a")).await.expect("run");
    let now = 1_000_000;
    let queued = store
        .queue_notifications(vec![notification("n1", 3, now), notification("n2", 4, now), notification("n1", 3, now)])
        .await
        .expect("queued");
    assert_eq!(queued, 2, "the same id is stored once");
    assert_eq!(store.queue_notifications(vec![notification("n1", 3, now)]).await.expect("queued"), 0);

    let taken = store.due_notifications(now, now + 60_000, 10).await.expect("due");
    assert_eq!(taken.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["n1", "n2"]);
    assert!(store.due_notifications(now + 1, now + 60_000, 10).await.expect("due").is_empty(), "held for their sender");

    let attempt = |n: i64, status: i64| AttemptRow {
        notification_id: "n1".into(),
        attempt: n,
        at: now + n,
        status: Some(status),
        error: (status != 200).then(|| format!("the receiver answered {status}")),
    };
    store.record_attempt(attempt(1, 500), Some(now + 5), "pending").await.expect("recorded");
    assert_eq!(store.due_notifications(now + 10, now + 60_000, 10).await.expect("due").len(), 1, "n1 is due again");
    store.record_attempt(attempt(2, 200), None, "delivered").await.expect("recorded");
    let (rows, attempts) = store.notifications("a").await.expect("listed");
    let n1 = rows.iter().find(|n| n.id == "n1").expect("n1");
    assert_eq!((n1.outcome.as_str(), n1.attempts, n1.next_attempt_at), ("delivered", 2, None));
    assert_eq!(n1.secret, None, "the listing never shows a secret");
    assert_eq!(n1.body, "", "a delivered notification's body (and any approval link in it) is forgotten");
    assert_eq!(rows.iter().find(|n| n.id == "n2").expect("n2").body, r#"{"id":"n2"}"#, "a pending one keeps it");
    assert_eq!(attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [Some(500), Some(200)]);
    assert!(store.due_notifications(now + 120_000, now + 180_000, 10).await.expect("due").iter().all(|n| n.id != "n1"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_approval_link_is_kept_by_its_hash_and_used_once(#[case] backend: Backend) {
    let scratch = Scratch::new(backend, "gate_links").await;
    let store = open(&scratch.database, 4).await.expect("opens");
    let link = GateLinkRow {
        token_sha256: "ab".repeat(32),
        dag_id: "a".into(),
        node_id: "review".into(),
        waiting_seq: 7,
        person: "ana".into(),
        created_at: 1_000,
        used_at: None,
    };
    store.add_gate_links(vec![link.clone(), link.clone()]).await.expect("kept");
    assert_eq!(store.gate_link(&link.token_sha256).await.expect("read"), Some(link.clone()));
    assert_eq!(store.gate_link(&"cd".repeat(32)).await.expect("read"), None);

    // Two presses at once: exactly one uses the link.
    let (first, second) =
        tokio::join!(store.use_gate_link(&link.token_sha256, 2_000), store.use_gate_link(&link.token_sha256, 2_001));
    assert!(first.expect("used") ^ second.expect("used"), "exactly one press uses the link");
    assert!(store.gate_link(&link.token_sha256).await.expect("read").expect("kept").used_at.is_some());
    assert!(!store.use_gate_link(&link.token_sha256, 3_000).await.expect("used"));

    // A refused decision gives the link back.
    store.release_gate_link(&link.token_sha256).await.expect("released");
    assert!(store.use_gate_link(&link.token_sha256, 4_000).await.expect("used"));
}
