//! The cluster against real processes: three `dagstream serve --nats` instances on one
//! PostgreSQL database (`DAGSTREAM_TEST_POSTGRES`) and a NATS server this test starts itself
//! (the binary `scripts/with-nats.sh` exports as `DAGSTREAM_NATS_SERVER`), so it can restart it.
//!
//! Three runs of 40 command nodes (some on two `dagstream worker`s) and a gate each, a viewer
//! of every run on every instance from `since=0`; meanwhile: three decisions at once on three
//! instances, SIGKILL of one run's owner, SIGSTOP of another's past its lease (then SIGCONT),
//! SIGKILL of a worker, and a NATS restart. Every viewer
//! must see `seq` 1..=end with no gap and no duplicate and end equal to the stored fold; every
//! gate has one decision; every node completed once; every run finishes.

#![cfg(all(feature = "ssr", unix))]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, Scratch, Served, dag_id_of, http, http_get, json_body, stub_site, temp_dir};
use dagstream::protocol::{ClientEvent, Decision, NodeStatus, RunState, ServerEvent, ServerEventBody};
use dagstream::runs::StoredRun;
use dagstream::store::{PgStore, Store};
use futures::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_tungstenite::tungstenite::Message;

/// The tests of this file each run several servers and many commands: one at a time, so
/// neither starves the other of the machine's cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Leases this short keep the test quick; takeover is bounded by it.
const LEASE_TTL: Duration = Duration::from_secs(2);
const COMMAND_NODES: usize = 40;

/// A run of `COMMAND_NODES` command nodes (the first, then the rest in parallel, three at a
/// time; every third on the workers of pool `gpu`) and a gate after the first, which the last
/// node waits for.
fn spec() -> String {
    let mut spec = String::from("name = \"clustered\"\nmax_parallel = 3\n\n");
    spec.push_str(
        "[[nodes]]\nid = \"w0\"\nkind = \"command\"\nrun = \"sleep 0.3; echo w0 attempt $DAGSTREAM_ATTEMPT\"\n\n",
    );
    spec.push_str("[[nodes]]\nid = \"review\"\nkind = \"gate\"\nneeds = [\"w0\"]\ntitle = \"Ship it?\"\n\n");
    for i in 1..COMMAND_NODES - 1 {
        // Every third runs on the workers of pool "gpu".
        let pool = if i % 3 == 0 { "pool = \"gpu\"\n" } else { "" };
        spec.push_str(&format!(
            "[[nodes]]\nid = \"w{i}\"\nkind = \"command\"\nneeds = [\"w0\"]\n{pool}run = \"sleep 0.3; echo w{i} attempt $DAGSTREAM_ATTEMPT\"\n\n"
        ));
    }
    let last = COMMAND_NODES - 1;
    let needs: Vec<String> = (0..last).map(|i| format!("\"w{i}\"")).chain(["\"review\"".to_owned()]).collect();
    spec.push_str(&format!(
        "[[nodes]]\nid = \"w{last}\"\nkind = \"command\"\nneeds = [{}]\nrun = \"echo done\"\n",
        needs.join(", ")
    ));
    spec
}

/// A NATS server of this test, on a fixed port, so it can be restarted where it was.
struct Nats {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn start() -> Nats {
        let binary = std::env::var_os("DAGSTREAM_NATS_SERVER").map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "DAGSTREAM_NATS_SERVER is not set: run the tests with `make test`, or with \
                 scripts/with-postgres.sh scripts/with-nats.sh cargo test --features ssr"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        // A store directory of its own: tests of this file run their servers side by side.
        let mut nats = Nats { child: None, binary, port, dir: temp_dir(&format!("cluster-nats-{port}")) };
        nats.spawn();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not listen on {}", self.port);
    }

    fn restart(&mut self) {
        self.stop();
        std::thread::sleep(Duration::from_millis(500));
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An instance of the cluster, by name.
fn member(site: &std::path::Path, name: &str, database: &str, nats: &str) -> Served {
    let data = temp_dir(&format!("cluster-{name}"));
    let ttl = format!("{}s", LEASE_TTL.as_secs());
    Served::start_with(site, &data, Some(database), &["--nats", nats, "--instance-id", name, "--lease-ttl", &ttl])
}

/// Follows a run from `since=0`, starting at `addrs[first]`; when a connection ends (its
/// instance died or stalls), goes on at the next instance with `since` = the last `seq` seen.
/// Answers every event seen, in order; fails on a gap, a duplicate or a snapshot.
async fn view(addrs: Vec<String>, first: usize, dag_id: String) -> Vec<ServerEvent> {
    let mut seen: Vec<ServerEvent> = Vec::new();
    let mut at = first;
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        assert!(Instant::now() < deadline, "run {dag_id} did not finish for its viewer");
        let since = seen.last().map_or(0, |event| event.seq);
        let url = format!("ws://{}/api/dags/{dag_id}/stream?since={since}", addrs[at]);
        let connected =
            tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(common::ws_request(&url)))
                .await;
        let mut socket = match connected {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(_)) | Err(_) => {
                at = (at + 1) % addrs.len();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let message = match tokio::time::timeout(Duration::from_secs(6), socket.next()).await {
                Ok(Some(Ok(message))) => message,
                // Closed, broken, or silent for longer than a ping interval: another instance.
                Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
            };
            let Message::Text(text) = message else { continue };
            let event: ServerEvent = serde_json::from_str(text.as_str()).expect("a valid event");
            assert!(
                !matches!(event.body, ServerEventBody::Snapshot { .. }),
                "{dag_id}: a viewer with since={since} got a snapshot, not the events"
            );
            let expected = seen.last().map_or(1, |last| last.seq + 1);
            assert_eq!(event.seq, expected, "{dag_id}: a gap or a duplicate at instance {}", addrs[at]);
            let complete = matches!(event.body, ServerEventBody::ExecutionComplete { .. });
            seen.push(event);
            if complete {
                return seen;
            }
        }
        at = (at + 1) % addrs.len();
    }
}

/// The run's state as one instance serves it.
fn run_state(addr: &str, dag_id: &str) -> RunState {
    serde_json::from_value(json_body(&http_get(addr, &format!("/api/dags/{dag_id}")))).expect("a run state")
}

/// Waits until `done` holds for the run as `addr` serves it.
async fn wait_until(addr: &str, dag_id: &str, what: &str, done: impl Fn(&RunState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if done(&run_state(addr, dag_id)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen: {:#?}", run_state(addr, dag_id));
}

/// Sends a decision on gate `review` over a stream of `addr`; answers the refusal the sender
/// got, if any, once the gate's decision has been seen. While no instance can take the
/// decision (its run is changing owner, NATS is reconnecting), tries again, as a person would.
async fn decide(addr: String, dag_id: String) -> Option<String> {
    loop {
        match decide_once(&addr, &dag_id).await {
            Err(refusal) if refusal.contains("try again") => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(refusal) => return Some(refusal),
            Ok(()) => return None,
        }
    }
}

async fn decide_once(addr: &str, dag_id: &str) -> Result<(), String> {
    let url = format!("ws://{addr}/api/dags/{dag_id}/stream");
    let (mut socket, _) = tokio_tungstenite::connect_async(common::ws_request(&url)).await.expect("a stream");
    let decision = ClientEvent::HumanDecision {
        node_id: "review".into(),
        decision: Decision::Approve,
        feedback: None,
        inputs: None,
    };
    socket.send(Message::text(serde_json::to_string(&decision).expect("json"))).await.expect("sent");
    let mut resolved = false;
    let mut refusal: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !(resolved && refusal.is_some()) {
        if refusal.as_deref().is_some_and(|r| r.contains("try again")) {
            return Err(refusal.unwrap_or_default());
        }
        let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(2));
        let message = match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(_) => break,
            // Two quiet seconds after the decision was seen: no refusal is coming.
            Err(_) if resolved => break,
            Err(_) => continue,
        };
        let Message::Text(text) = message else { continue };
        let event: ServerEvent = serde_json::from_str(text.as_str()).expect("a valid event");
        match event.body {
            ServerEventBody::GateResolved { node_id, .. } if node_id == "review" => resolved = true,
            ServerEventBody::Snapshot { run } if run.nodes["review"].gate.is_none() => resolved = true,
            // A private reply about this client's own decision.
            ServerEventBody::Error { message, .. } if message.contains("review") || message.contains("try again") => {
                refusal = Some(message)
            }
            _ => {}
        }
    }
    assert!(resolved, "the decision on {dag_id} was not seen at {addr} (refusal: {refusal:?})");
    refusal.map_or(Ok(()), Err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_keep_every_run_going_through_kills_stalls_and_a_nats_restart() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let database = Scratch::new(Backend::Postgres, "cluster").await;
    let url = database.url();
    let mut nats = Nats::start();
    let site = stub_site("cluster-site");
    let mut members: HashMap<String, Served> =
        ["a", "b", "c"].into_iter().map(|name| (name.to_owned(), member(&site, name, &url, &nats.url()))).collect();
    let addrs: Vec<String> = ["a", "b", "c"].iter().map(|name| members[*name].addr.clone()).collect();
    let mut workers: Vec<Worker> = ["w1", "w2"].iter().map(|id| Worker::start(&nats.url(), "gpu", id)).collect();
    let name_of = |addr: &str| ["a", "b", "c"][addrs.iter().position(|a| a == addr).expect("a member")].to_owned();
    let store = PgStore::open(&url, 2).await.expect("the test reads the database");

    // Three runs, all started on a; the cluster spreads them.
    let runs: Vec<String> =
        (0..3).map(|_| dag_id_of(&http(&addrs[0], "POST", "/api/dags", Some("application/toml"), &spec()))).collect();
    let mut viewers = Vec::new();
    for dag_id in &runs {
        for first in 0..addrs.len() {
            viewers.push((dag_id.clone(), first, tokio::spawn(view(addrs.clone(), first, dag_id.clone()))));
        }
    }
    for dag_id in &runs {
        wait_until(&addrs[1], dag_id, "the gate waits", |s| s.nodes["review"].gate.is_some()).await;
    }
    let mut owners = Vec::new();
    for dag_id in &runs {
        owners.push(store.owner(dag_id).await.expect("readable").expect("an owner"));
    }
    eprintln!("owners: {owners:?}");

    // Three decisions at once, one per instance: one wins, the others are told who did.
    let deciders: Vec<_> = addrs.iter().map(|addr| tokio::spawn(decide(addr.clone(), runs[0].clone()))).collect();
    let mut refusals = Vec::new();
    for decider in deciders {
        refusals.push(decider.await.expect("the decider ran"));
    }
    let refused: Vec<&String> = refusals.iter().flatten().collect();
    assert_eq!(refused.len(), 2, "exactly one of three deciders wins: {refusals:?}");
    for refusal in refused {
        assert!(refusal.contains("already decided by admin"), "the loser learns who decided: {refusal}");
    }

    // SIGKILL the owner of the second run while its nodes run.
    wait_until(&addrs[1], &runs[1], "nodes run", |s| {
        s.nodes.values().filter(|n| n.status == NodeStatus::Completed).count() >= 3
    })
    .await;
    let killed = store.owner(&runs[1]).await.expect("readable").expect("an owner");
    let killed_at = Instant::now();
    members.remove(&killed).expect("a member").kill_hard();
    let takeover = loop {
        match store.owner(&runs[1]).await.expect("readable") {
            Some(owner) if owner != killed => break killed_at.elapsed(),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    eprintln!("takeover after SIGKILL of {killed}: {takeover:?} (lease {LEASE_TTL:?})");
    let live: Vec<String> = addrs.iter().filter(|addr| name_of(addr) != killed).cloned().collect();

    // SIGSTOP the owner of the third run past its lease, then let it go on: it must find its
    // appends refused and only follow the run from then on.
    let stalled = store.owner(&runs[2]).await.expect("readable").expect("an owner");
    let stalled_pid = Pid::from_raw(members[&stalled].pid());
    kill(stalled_pid, Signal::SIGSTOP).expect("SIGSTOP");
    let stalled_at = Instant::now();
    loop {
        match store.owner(&runs[2]).await.expect("readable") {
            Some(owner) if owner != stalled => break,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    eprintln!("takeover after SIGSTOP of {stalled}: {:?}", stalled_at.elapsed());
    tokio::time::sleep(LEASE_TTL).await;
    kill(stalled_pid, Signal::SIGCONT).expect("SIGCONT");

    // A worker dies in the middle of its jobs: they go to the other one.
    let mut dead = workers.remove(0);
    dead.child.kill().expect("SIGKILL the worker");

    // NATS goes away and comes back while the runs go on.
    nats.restart();

    // The other gates, decided on whichever instance is alive; the decision goes to the owner.
    for dag_id in &runs[1..] {
        let refusal = decide(live[0].clone(), dag_id.clone()).await;
        assert_eq!(refusal, None, "the only decider of {dag_id} wins");
    }

    let mut finals: HashMap<String, Vec<ServerEvent>> = HashMap::new();
    for (dag_id, first, viewer) in viewers {
        let events =
            viewer.await.unwrap_or_else(|e| panic!("the viewer of {dag_id} from {} failed: {e}", addrs[first]));
        match finals.get(&dag_id) {
            Some(other) => assert_eq!(other.len(), events.len(), "{dag_id}: every viewer saw the same log"),
            None => {
                finals.insert(dag_id.clone(), events);
            }
        }
    }
    for dag_id in &runs {
        let record = store.run(dag_id).await.expect("readable").expect("stored");
        let texts = store.events(dag_id, 0, u64::MAX).await.expect("readable");
        let stored = StoredRun::read(&record, texts);
        let events = &finals[dag_id];
        let mut folded = dagstream::runs::initial_state(
            dag_id,
            &dagstream::engine::DagSpec::parse(&spec(), dagstream::engine::SpecFormat::Toml).expect("the spec"),
            &record.started_at,
        );
        for event in events {
            folded.apply(event);
        }
        assert_eq!(folded, stored.state, "{dag_id}: what the viewers folded is the stored log's fold");
        assert_eq!(stored.state.state.as_str(), "completed", "{dag_id} finished");
        let decisions = store.decisions(dag_id).await.expect("readable");
        assert_eq!(decisions.len(), 1, "{dag_id}: one decision for its one gate");
        // Every node completed exactly once: one accepted result each.
        let mut completions: HashMap<&str, usize> = HashMap::new();
        for event in events {
            if let ServerEventBody::NodeState { node_id, status: NodeStatus::Completed, .. } = &event.body {
                *completions.entry(node_id.as_str()).or_default() += 1;
            }
        }
        assert_eq!(completions.len(), COMMAND_NODES + 1, "{dag_id}: every node completed");
        assert!(completions.values().all(|&n| n == 1), "{dag_id}: a node completed twice: {completions:?}");
    }
    drop(members);
    drop(workers);
}

/// A `dagstream worker` child process, killed when dropped.
struct Worker {
    child: Child,
}

impl Worker {
    fn start(nats: &str, pool: &str, id: &str) -> Worker {
        let log = std::env::var("WORKER_LOG").unwrap_or_else(|_| "warn".into());
        Worker::spawn(nats, pool, id, &[], &log, Stdio::inherit())
    }

    /// A worker that logs JSON lines into the file `log`.
    fn start_logged(nats: &str, pool: &str, id: &str, log: &std::path::Path) -> Worker {
        let log = std::fs::File::create(log).expect("a log file");
        Worker::spawn(nats, pool, id, &["--log-format", "json"], "dagstream=debug", Stdio::from(log))
    }

    fn spawn(nats: &str, pool: &str, id: &str, more: &[&str], rust_log: &str, stderr: Stdio) -> Worker {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let work = temp_dir(&format!("cluster-worker-{id}-{n}"));
        let child = Command::new(env!("CARGO_BIN_EXE_dagstream"))
            .args(["worker", "--nats", nats, "--pool", pool, "--id", id, "--ack-wait", "2s", "--concurrency", "2"])
            .args(more)
            .arg("--work")
            .arg(&work)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the worker starts");
        Worker { child }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a file a command writes; answers its text.
async fn wait_for_file(path: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} was not written", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_nodes_run_on_workers_a_killed_workers_job_goes_to_another_and_cancel_and_timeout_reach_them() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let database = Scratch::new(Backend::Postgres, "workers").await;
    let nats = Nats::start();
    let site = stub_site("workers-site");
    let server = member(&site, "solo", &database.url(), &nats.url());
    let marks = temp_dir("workers-marks");
    let mut workers: HashMap<String, Worker> =
        ["w1", "w2"].into_iter().map(|id| (id.to_owned(), Worker::start(&nats.url(), "gpu", id))).collect();

    // A pool node whose worker dies mid-node: the job goes to the other worker after ack_wait,
    // and the node's attempt counter shows it.
    let spec = format!(
        r#"
name = "on-workers"
[[nodes]]
id = "train"
kind = "command"
pool = "gpu"
env = {{ MARK = "{marks}" }}
run = '''
echo "$DAGSTREAM_WORKER" > "$MARK/train-$DAGSTREAM_ATTEMPT"
sleep 3
echo '{{"cost": 0.5}}' >> "$DAGSTREAM_REPORT"
echo "trained by $DAGSTREAM_WORKER"
'''
[[nodes]]
id = "local"
kind = "command"
needs = ["train"]
run = "echo here"
"#,
        marks = marks.display()
    );
    let dag_id = dag_id_of(&http(&server.addr, "POST", "/api/dags", Some("application/toml"), &spec));
    let first = wait_for_file(&marks.join("train-1")).await.trim().to_owned();
    workers.remove(&first).expect("one of the workers took it").child.kill().expect("SIGKILL");
    let second = wait_for_file(&marks.join("train-2")).await.trim().to_owned();
    assert_ne!(second, first, "the job went to the other worker");
    wait_until(&server.addr, &dag_id, "the run completes", |s| s.state.as_str() == "completed").await;
    let state = run_state(&server.addr, &dag_id);
    assert_eq!(state.nodes["train"].metrics.attempt, Some(2), "the redelivery is the node's second attempt");
    assert!((state.cost.spent - 0.5).abs() < 1e-9, "the worker's report counts once: {}", state.cost.spent);
    let log: Vec<&str> = state.nodes["train"].log_tail.iter().map(|l| l.line.as_str()).collect();
    assert!(log.contains(&format!("trained by {second}").as_str()), "the worker's output streams back: {log:?}");
    assert!(
        !log.iter().any(|l| l.contains(&format!("trained by {first}"))),
        "the dead worker's attempt sent no result"
    );

    // Cancelling the run kills the command on the worker.
    let spec = format!(
        r#"
name = "cancelled-on-workers"
[[nodes]]
id = "long"
kind = "command"
pool = "gpu"
env = {{ MARK = "{marks}" }}
run = 'echo $$ > "$MARK/long.pid"; exec sleep 60'
"#,
        marks = marks.display()
    );
    let dag_id = dag_id_of(&http(&server.addr, "POST", "/api/dags", Some("application/toml"), &spec));
    let pid: i32 = wait_for_file(&marks.join("long.pid")).await.trim().parse().expect("a pid");
    let url = format!("ws://{}/api/dags/{dag_id}/stream", server.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(common::ws_request(&url)).await.expect("a stream");
    let cancel = serde_json::to_string(&ClientEvent::CancelExecution).expect("json");
    socket.send(Message::text(cancel)).await.expect("sent");
    wait_until(&server.addr, &dag_id, "the run is cancelled", |s| s.state.as_str() == "cancelled").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while kill(Pid::from_raw(pid), None).is_ok() {
        assert!(Instant::now() < deadline, "the command on the worker was not killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The node's timeout is applied on the worker.
    let spec = "name = \"timed-out-on-workers\"\n[[nodes]]\nid = \"slow\"\nkind = \"command\"\npool = \"gpu\"\ntimeout = \"1s\"\nrun = \"sleep 30\"\n";
    let dag_id = dag_id_of(&http(&server.addr, "POST", "/api/dags", Some("application/toml"), spec));
    wait_until(&server.addr, &dag_id, "the run fails", |s| s.state.as_str() == "failed").await;
    let failed = run_state(&server.addr, &dag_id);
    let errors: Vec<&str> =
        failed.errors.iter().filter(|e| e.node_id.as_deref() == Some("slow")).map(|e| e.message.as_str()).collect();
    assert!(errors.iter().any(|e| e.contains("timed out")), "the timeout is reported: {errors:?}");
}

/// A run that fails on one instance is repaired from both at once: exactly one instance
/// reopens it (the other's retry is judged by that one's coordinator), the run goes on there
/// and completes, and both instances serve the same run; a re-run asked at the other instance
/// later reopens it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_run_is_reopened_by_a_repair_on_any_instance_exactly_once() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let database = Scratch::new(Backend::Postgres, "cluster_repair").await;
    let url = database.url();
    let nats = Nats::start();
    let site = stub_site("cluster-repair-site");
    let a = member(&site, "ra", &url, &nats.url());
    let b = member(&site, "rb", &url, &nats.url());
    let marker = temp_dir("cluster-repair-marker").join("fixed");
    let spec = format!(
        "name = \"repaired\"\n[[nodes]]\nid = \"flaky\"\nkind = \"command\"\nrun = '[ -f {} ] || exit 1'\n\n\
         [[nodes]]\nid = \"after\"\nkind = \"command\"\nneeds = [\"flaky\"]\nrun = \"echo after\"\n",
        marker.display()
    );
    let started = http(&a.addr, "POST", "/api/dags", Some("application/toml"), &spec);
    let dag_id = dag_id_of(&started);
    for addr in [&a.addr, &b.addr] {
        wait_until(addr, &dag_id, "the run failing", |run| run.state.as_str() == "failed" && run.results.is_some())
            .await;
    }
    std::fs::write(&marker, "").expect("the fix");

    // The same retry at both instances at once.
    let retry = format!("/api/dags/{dag_id}/nodes/flaky/retry");
    let asked: Vec<String> = futures::future::join_all([a.addr.clone(), b.addr.clone()].map(|addr| {
        let retry = retry.clone();
        tokio::task::spawn_blocking(move || http(&addr, "POST", &retry, None, ""))
    }))
    .await
    .into_iter()
    .map(|answer| answer.expect("asked"))
    .collect();
    let statuses: Vec<u16> = asked.iter().map(|answer| common::status_of(answer)).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 202).count(), 1, "exactly one retry is taken: {asked:#?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 409).count(), 1, "the other is refused: {asked:#?}");
    // Refused by the coordinator that took the first one, with the node's state as the reason.
    let refused = asked.iter().find(|answer| common::status_of(answer) == 409).map(|a| json_body(a));
    let reason = refused.as_ref().and_then(|body| body["error"].as_str()).unwrap_or_default();
    assert!(reason.contains("only a failed node is retried") || reason.contains("is changing right now"), "{reason}");
    for addr in [&a.addr, &b.addr] {
        wait_until(addr, &dag_id, "the repaired run completing", |run| {
            run.state.as_str() == "completed" && run.results.is_some()
        })
        .await;
    }
    let repaired = run_state(&a.addr, &dag_id);
    assert_eq!(repaired.repairs.len(), 1, "one repair: {:#?}", repaired.repairs);
    assert_eq!(repaired.nodes["flaky"].metrics.attempt, Some(2));

    // A re-run of `after`, asked at whichever instance did not take the retry.
    let other = if statuses[0] == 202 { &b.addr } else { &a.addr };
    let rerun = http(other, "POST", &format!("/api/dags/{dag_id}/nodes/after/rerun"), None, "");
    assert_eq!(common::status_of(&rerun), 202, "{rerun}");
    for addr in [&a.addr, &b.addr] {
        wait_until(addr, &dag_id, "the re-run completing", |run| {
            run.repairs.len() == 2 && run.state.as_str() == "completed" && run.results.is_some()
        })
        .await;
    }

    // Both instances serve the stored run, event for event.
    let store = PgStore::open(&url, 2).await.expect("the store");
    let texts = store.events(&dag_id, 0, u64::MAX).await.expect("events");
    let record = store.run(&dag_id).await.expect("readable").expect("stored");
    assert_eq!(record.state, "completed");
    assert!(record.finished_at.is_some(), "ended again in the store");
    let stored = StoredRun::read(&record, texts).state;
    for addr in [&a.addr, &b.addr] {
        let served = run_state(addr, &dag_id);
        assert_eq!(served.seq, stored.seq, "{addr} is at the stored end");
        assert_eq!(served.nodes["after"].metrics.attempt, Some(2), "{addr}");
    }
    let repaired = stored.repairs.iter().filter(|r| r.node_id == "flaky" || r.node_id == "after").count();
    assert_eq!(repaired, 2);
}

/// With traces exported, every log line about a run carries the run's trace id: on the
/// instance that drives it (its coordinator's lines, its lease's end), on the instance that
/// mirrors it (the owner sends the id with each event), and on the worker that runs its pool
/// node (the job carries it). The one line before the run has a trace, its placement, is the
/// exception.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_line_about_a_run_carries_its_trace_id_on_its_owner_its_mirror_and_its_worker() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let database = Scratch::new(Backend::Postgres, "cluster_traces").await;
    let url = database.url();
    let nats = Nats::start();
    let site = stub_site("cluster-traces-site");
    let (collector, exported) = common::otlp_collector();
    let logs = temp_dir("cluster-traces-logs");
    let nats_url = nats.url();
    let start = |name: &str| {
        let more = ["--nats", &nats_url, "--instance-id", name, "--lease-ttl", "2s", "--otlp-endpoint", &collector];
        let data = temp_dir(&format!("cluster-traces-{name}"));
        Served::start_logged(&site, &data, Some(&url), &more, &logs.join(name))
    };
    let (a, b) = (start("ta"), start("tb"));
    let _worker = Worker::start_logged(&nats.url(), "gpu", "tw", &logs.join("worker"));
    let spec = "name = \"traced\"\n[[nodes]]\nid = \"remote\"\nkind = \"command\"\npool = \"gpu\"\nrun = \"echo remote\"\n\n\
                [[nodes]]\nid = \"local\"\nkind = \"command\"\nneeds = [\"remote\"]\nrun = \"echo local\"\n";
    let dag_id = dag_id_of(&http(&a.addr, "POST", "/api/dags", Some("application/toml"), spec));
    for addr in [&a.addr, &b.addr] {
        wait_until(addr, &dag_id, "the run completing", |run| run.results.is_some()).await;
    }
    // A line about the run on whichever instance is asked: it runs the spec again.
    let again = http(&b.addr, "POST", &format!("/api/dags/{dag_id}/again"), None, "");
    assert_eq!(common::status_of(&again), 201, "{again}");
    let again_id = dag_id_of(&again);
    for addr in [&a.addr, &b.addr] {
        wait_until(addr, &again_id, "the second run completing", |run| run.results.is_some()).await;
    }

    let about_the_run = |name: &str| -> Vec<serde_json::Value> {
        common::json_log(&logs.join(name))
            .into_iter()
            .filter(|line| common::log_values(line, "dag_id").contains(&dag_id))
            .collect()
    };
    let (on_a, on_b, on_worker) = (about_the_run("ta"), about_the_run("tb"), about_the_run("worker"));
    let ended = on_a
        .iter()
        .chain(&on_b)
        .find(|line| line["fields"]["message"] == "run ended")
        .unwrap_or_else(|| panic!("no instance logged the run's end: {on_a:#?} {on_b:#?}"));
    let trace_id = common::log_values(ended, "trace_id").pop().expect("the end line names the trace");
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    for line in on_a.iter().chain(&on_b).chain(&on_worker) {
        if line["fields"]["message"] == "run placed on another instance" {
            continue;
        }
        assert_eq!(
            common::log_values(line, "trace_id"),
            std::slice::from_ref(&trace_id),
            "a line without the run's trace: {line}"
        );
    }
    let said = |lines: &[serde_json::Value], message: &str| lines.iter().any(|l| l["fields"]["message"] == message);
    // The owner's, the mirror's and the worker's own lines are among them.
    let (owner, mirror) = if said(&on_a, "run ended") { (&on_a, &on_b) } else { (&on_b, &on_a) };
    assert!(said(owner, "run ended: its lease is over"), "{owner:#?}");
    assert!(said(mirror, "following the run's trace"), "{mirror:#?}");
    assert!(said(&on_worker, "job started"), "{on_worker:#?}");
    assert!(said(&on_a, "run started again") || said(&on_b, "run started again"));
    // And it is the trace the spans were exported in.
    let raw: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).expect("hex")).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exported.lock().expect("lock").concat().windows(16).any(|w| w == raw.as_slice()) {
        assert!(Instant::now() < deadline, "trace {trace_id} was not exported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_server_without_workers_refuses_a_pool_node_with_the_reason() {
    let site = stub_site("no-workers-site");
    let server = Served::start(&site, &temp_dir("no-workers"));
    let spec = "name = \"p\"\n[[nodes]]\nid = \"a\"\nkind = \"command\"\npool = \"gpu\"\nrun = \"true\"\n";
    let response = http(&server.addr, "POST", "/api/dags", Some("application/toml"), spec);
    assert_eq!(common::status_of(&response), 403, "{response}");
    assert!(response.contains("pools need a cluster"), "{response}");
    assert_eq!(json_body(&http_get(&server.addr, "/api/dags")), serde_json::json!([]), "nothing started");
}

#[test]
fn signing_in_on_one_instance_works_on_another_and_signing_out_ends_it_on_both() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let database = runtime.block_on(Scratch::new(Backend::Postgres, "sessions"));
    let nats = Nats::start();
    let site = stub_site("sessions-site");
    let a = member(&site, "sa", &database.url(), &nats.url());
    let b = member(&site, "sb", &database.url(), &nats.url());
    let login = common::raw_http(
        &a.addr,
        &format!("GET /login?token={} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", common::TOKEN, a.addr),
    );
    assert_eq!(common::status_of(&login), 303, "{login}");
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .and_then(|l| l.split_once(':'))
        .and_then(|(_, v)| v.split(';').next())
        .expect("a session cookie")
        .trim()
        .to_owned();
    let me = |addr: &str| {
        common::raw_http(
            addr,
            &format!("GET /api/me HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(common::status_of(&me(&b.addr)), 200, "the session opened on a works on b");
    let logout = common::raw_http(
        &a.addr,
        &format!(
            "POST /logout HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            a.addr
        ),
    );
    assert_eq!(common::status_of(&logout), 303, "{logout}");
    assert_eq!(common::status_of(&me(&a.addr)), 401, "signed out on a");
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::status_of(&me(&b.addr)) != 401 {
        assert!(Instant::now() < deadline, "the sign-out on a did not reach b");
        std::thread::sleep(Duration::from_millis(50));
    }
}
