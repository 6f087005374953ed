//! The engine end to end, without HTTP: a run is started in a registry and its room's event
//! stream is read back. Timers run under `tokio::time::pause()` where only time is involved;
//! command nodes run real `sh -c` processes.

#![cfg(feature = "ssr")]

use std::path::PathBuf;
use std::time::Duration;

use dagstream::engine::{DagSpec, EngineConfig, Rejected, SpecFormat};
use dagstream::hub::RoomLimits;
use dagstream::protocol::{
    ClientEvent, DagMutation, Decision, NodeKind, NodeStatus, RunPhase, RunState, ServerEvent, ServerEventBody,
};
use dagstream::runs::{RunEntry, Runs};
use tokio::sync::broadcast;

/// A started run and everything it has published so far.
struct Probe {
    run: RunEntry,
    live: broadcast::Receiver<dagstream::hub::Frame>,
    events: Vec<ServerEvent>,
    /// How long to wait for one expected event (long under paused time, where it costs nothing).
    patience: Duration,
    work_root: PathBuf,
    dag_id: String,
}

fn work_root(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dagstream-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Probe {
    async fn start(name: &str, spec_toml: &str) -> Self {
        let spec = DagSpec::parse(spec_toml, SpecFormat::Toml).expect("test spec is valid");
        let work_root = work_root(name);
        let mut config = EngineConfig::new(&work_root);
        config.cancel_grace = Duration::from_millis(500);
        // Leaked on purpose: the registry outlives the test's runtime only as long as the test.
        let runs: &'static Runs = Box::leak(Box::new(Runs::new(
            RoomLimits { log_window: 100_000, subscriber_queue: 100_000, ..RoomLimits::default() },
            config,
        )));
        let dag_id = runs.start(spec).await.expect("starts");
        let run = runs.get(&dag_id).expect("registered");
        let subscription = run.room.subscribe(Some(0));
        let mut probe = Probe {
            patience: Duration::from_secs(20),
            run,
            live: subscription.live,
            events: Vec::new(),
            work_root,
            dag_id,
        };
        for frame in subscription.backlog {
            probe.take(&frame);
        }
        probe
    }

    fn take(&mut self, frame: &dagstream::hub::Frame) {
        let event: ServerEvent = serde_json::from_str(frame.text.as_str()).expect("valid event");
        assert_eq!(event.seq, self.events.len() as u64 + 1, "contiguous seq");
        self.events.push(event);
    }

    /// Reads events until `stop` holds for one of them (checking those already read first).
    async fn until(&mut self, what: &str, stop: impl Fn(&ServerEvent) -> bool) -> ServerEvent {
        if let Some(found) = self.events.iter().find(|e| stop(e)) {
            return found.clone();
        }
        loop {
            let frame = tokio::time::timeout(self.patience, self.live.recv())
                .await
                .unwrap_or_else(|_| panic!("waited too long for {what}; events so far: {:#?}", self.events))
                .expect("the room is open");
            self.take(&frame);
            let event = self.events.last().expect("just pushed").clone();
            if stop(&event) {
                return event;
            }
        }
    }

    async fn until_complete(&mut self) -> RunState {
        self.until("execution_complete", |e| matches!(e.body, ServerEventBody::ExecutionComplete { .. })).await;
        self.run.room.snapshot()
    }

    async fn until_waiting(&mut self, gate: &str) {
        self.until(
            &format!("gate {gate} waiting"),
            |e| matches!(&e.body, ServerEventBody::HumanGateWaiting { node_id, .. } if node_id == gate),
        )
        .await;
    }

    async fn command(&self, event: ClientEvent) -> Result<(), Rejected> {
        self.command_as("tester", event).await
    }

    async fn command_as(&self, person: &str, event: ClientEvent) -> Result<(), Rejected> {
        self.run.handle().expect("the run is going").command(event, person).await
    }

    async fn decide(&self, gate: &str, decision: Decision, feedback: Option<&str>) -> Result<(), Rejected> {
        self.command(ClientEvent::HumanDecision {
            node_id: gate.into(),
            decision,
            feedback: feedback.map(str::to_owned),
            inputs: None,
        })
        .await
    }

    fn errors_of(&self, node: &str) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match &e.body {
                ServerEventBody::Error { node_id: Some(id), message } if id == node => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn logs_of(&self, node: &str) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match &e.body {
                ServerEventBody::NodeLog { node_id, line, .. } if node_id == node => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    fn workdir(&self) -> PathBuf {
        self.work_root.join(&self.dag_id)
    }
}

/// True if no live process has this pid (a zombie awaiting its reaper counts as gone).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (a few seconds at most) until `pid` is gone: a killed process is gone once its parent
/// (or init, for a grandchild) has waited for it.
async fn gone_soon(pid: i32) -> bool {
    for _ in 0..200 {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process_gone(pid)
}

async fn read_pid(path: PathBuf) -> i32 {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never appeared", path.display());
}

// ---- timers (paused time) ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_gate_timeout_applies_its_on_timeout_decision() {
    let mut probe = Probe::start(
        "gate-timeout",
        r#"
        name = "t"
        [[nodes]]
        id = "review"
        kind = "gate"
        timeout = "1h"
        on_timeout = "reject"
        [[nodes]]
        id = "after"
        kind = "simulate"
        needs = ["review"]
        "#,
    )
    .await;
    probe.patience = Duration::from_secs(2 * 3600);
    let state = probe.until_complete().await;
    assert_eq!(state.state, RunPhase::Failed);
    assert_eq!(state.decisions.len(), 1);
    assert_eq!(state.decisions[0].decided_by, "timeout");
    assert_eq!(state.decisions[0].decision, Decision::Reject);
    assert_eq!(state.nodes["after"].status, NodeStatus::Skipped);
    let waiting = probe.events.iter().find_map(|e| match &e.body {
        ServerEventBody::HumanGateWaiting { presentation, .. } => Some(presentation.clone()),
        _ => None,
    });
    assert!(waiting.and_then(|p| p.timeout_at).is_some(), "the card says when the gate times out");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_gate_reminds_its_approvers_then_escalates_and_the_escalated_may_decide() {
    let mut probe = Probe::start(
        "gate-escalation",
        r#"
        name = "t"
        [[nodes]]
        id = "deploy"
        kind = "gate"
        approvers = ["ana"]
        remind_every = "30m"
        escalate_after = "2h"
        escalate_to = ["dan"]
        "#,
    )
    .await;
    probe.patience = Duration::from_secs(3 * 3600);
    probe.until_waiting("deploy").await;
    let approve = || ClientEvent::HumanDecision {
        node_id: "deploy".into(),
        decision: Decision::Approve,
        feedback: None,
        inputs: None,
    };
    let refused = probe.command_as("dan", approve()).await;
    assert!(matches!(refused, Err(Rejected::NotAnApprover { ref person, .. }) if person == "dan"), "{refused:?}");

    // With the clock paused, time jumps to each timer: three reminders, then the escalation.
    let escalation = probe
        .until(
            "the escalation",
            |e| matches!(&e.body, ServerEventBody::GateReminder { escalated_to, .. } if !escalated_to.is_empty()),
        )
        .await;
    let ServerEventBody::GateReminder { escalated_to, .. } = &escalation.body else { unreachable!() };
    assert_eq!(escalated_to, &["dan".to_owned()]);
    let reminders = probe
        .events
        .iter()
        .filter(|e| matches!(&e.body, ServerEventBody::GateReminder { escalated_to, .. } if escalated_to.is_empty()))
        .count();
    assert!((3..=4).contains(&reminders), "a reminder every 30 minutes for 2 hours: {reminders}");
    let approvers = probe.run.room.snapshot().nodes["deploy"].gate.as_ref().and_then(|g| g.approvers.clone());
    assert_eq!(approvers, Some(vec!["ana".to_owned(), "dan".to_owned()]), "the card names dan now");

    // dan may decide now.
    probe.command_as("dan", approve()).await.expect("dan decides");
    let state = probe.until_complete().await;
    assert_eq!(state.decisions[0].decided_by, "dan");
    let after = probe.events.iter().rposition(|e| matches!(e.body, ServerEventBody::GateResolved { .. }));
    assert!(
        probe.events[after.unwrap_or(0)..].iter().all(|e| !matches!(e.body, ServerEventBody::GateReminder { .. })),
        "no reminder after the decision"
    );
}

#[tokio::test(start_paused = true)]
async fn a_decision_before_the_timeout_wins_and_the_timer_does_nothing() {
    let mut probe = Probe::start(
        "gate-before-timeout",
        r#"
        name = "t"
        [[nodes]]
        id = "review"
        kind = "gate"
        timeout = "10m"
        on_timeout = "reject"
        "#,
    )
    .await;
    probe.until_waiting("review").await;
    probe.decide("review", Decision::Approve, None).await.expect("waiting gate takes a decision");
    let state = probe.until_complete().await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(state.state, RunPhase::Completed);
    assert_eq!(probe.run.room.snapshot().decisions.len(), 1, "the timer did not decide again");
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_retries_with_attempts_in_the_metrics() {
    let mut probe = Probe::start(
        "retries",
        r#"
        name = "t"
        [[nodes]]
        id = "slow"
        kind = "simulate"
        duration = "10s"
        cost = 0.1
        timeout = "1s"
        retries = 2
        [[nodes]]
        id = "independent"
        kind = "simulate"
        duration = "5s"
        "#,
    )
    .await;
    let state = probe.until_complete().await;
    assert_eq!(state.state, RunPhase::Failed);
    assert_eq!(state.nodes["slow"].status, NodeStatus::Failed);
    assert_eq!(state.nodes["slow"].metrics.attempt, Some(3));
    assert_eq!(state.nodes["independent"].status, NodeStatus::Completed, "independent branches go on");
    let errors = probe.errors_of("slow");
    assert!(errors[0].contains("attempt 1 of 3 failed: timed out after 1s"), "{errors:?}");
    assert!(errors[1].contains("attempt 2 of 3"), "{errors:?}");
    assert!(errors[2].contains("timed out"), "{errors:?}");
    assert!((state.cost.spent - 0.3).abs() < 1e-9, "each attempt costs: {}", state.cost.spent);
    assert!(state.results.expect("results").contains_key("independent"));
}

#[tokio::test(start_paused = true)]
async fn modify_runs_the_upstream_again_with_the_feedback_then_the_gate_waits_again() {
    let mut probe = Probe::start(
        "modify",
        r#"
        name = "t"
        [[nodes]]
        id = "draft"
        kind = "simulate"
        duration = "1s"
        cost = 0.2
        output = { text = "first draft" }
        [[nodes]]
        id = "review"
        kind = "gate"
        needs = ["draft"]
        options = ["approve", "reject", "modify"]
        [[nodes]]
        id = "publish"
        kind = "simulate"
        needs = ["review"]
        "#,
    )
    .await;
    probe.until_waiting("review").await;
    assert_eq!(probe.decide("review", Decision::Modify, None).await, Err(Rejected::ModifyWithoutFeedback));
    assert_eq!(probe.decide("review", Decision::Modify, Some("  ")).await, Err(Rejected::ModifyWithoutFeedback));
    probe.decide("review", Decision::Modify, Some("shorter, please")).await.expect("modify with feedback");
    let before = probe.events.len();
    probe
        .until("the gate waits again", |e| {
            matches!(&e.body, ServerEventBody::HumanGateWaiting { node_id, .. } if node_id == "review")
                && e.seq as usize > before
        })
        .await;
    let state = probe.run.room.snapshot();
    assert_eq!(state.nodes["review"].metrics.attempt, Some(2), "the gate's second wait is visible");
    assert_eq!(
        state.nodes["draft"].output.as_ref().and_then(|o| o.get("feedback")).and_then(|f| f.as_str()),
        Some("shorter, please")
    );
    assert_eq!(state.nodes["publish"].status, NodeStatus::Pending);
    assert!((state.cost.spent - 0.4).abs() < 1e-9, "the draft ran twice");
    let context = state.nodes["review"].gate.as_ref().and_then(|g| g.context.clone()).expect("context");
    assert_eq!(context["draft"]["feedback"], "shorter, please", "the card shows the new upstream output");

    probe.decide("review", Decision::Approve, None).await.expect("approve");
    let state = probe.until_complete().await;
    assert_eq!(state.state, RunPhase::Completed);
    let decisions: Vec<Decision> = state.decisions.iter().map(|d| d.decision).collect();
    assert_eq!(decisions, [Decision::Modify, Decision::Approve]);
    assert_eq!(state.decisions[0].feedback.as_deref(), Some("shorter, please"));
}

const BUDGETED: &str = r#"
    name = "t"
    budget = 1.0
    budget_step = 1.5
    max_parallel = 1
    [[nodes]]
    id = "a"
    kind = "simulate"
    duration = "1s"
    cost = 0.6
    [[nodes]]
    id = "b"
    kind = "simulate"
    needs = ["a"]
    duration = "1s"
    cost = 0.6
    [[nodes]]
    id = "c"
    kind = "simulate"
    needs = ["b"]
    duration = "1s"
    cost = 0.3
    [[nodes]]
    id = "d"
    kind = "simulate"
    duration = "1s"
    needs = ["a"]
"#;

#[tokio::test(start_paused = true)]
async fn spend_reaching_the_budget_adds_a_budget_gate_and_approve_raises_it() {
    let mut probe = Probe::start("budget-approve", BUDGETED).await;
    probe.until_waiting("budget_1").await;
    let added = probe.events.iter().find_map(|e| match &e.body {
        ServerEventBody::DagMutated { mutation: DagMutation::AddNode { node, .. } } => Some(node.clone()),
        _ => None,
    });
    assert_eq!(added.map(|n| (n.id, n.kind)), Some(("budget_1".to_string(), NodeKind::Gate)));
    let state = probe.run.room.snapshot();
    assert!(state.cost.spent >= 1.0);
    assert_eq!(state.nodes["c"].status, NodeStatus::Pending, "nothing starts past the budget");
    assert!(state.nodes["c"].needs.contains(&"budget_1".to_string()), "unstarted nodes wait for the gate");
    let gate = state.nodes["budget_1"].gate.clone().expect("gate card");
    assert!(gate.prompt.contains("$1.50"), "the card says what approving adds: {}", gate.prompt);
    assert_eq!(gate.options, [Decision::Approve, Decision::Reject]);

    probe.decide("budget_1", Decision::Approve, None).await.expect("approve");
    let state = probe.until_complete().await;
    assert_eq!(state.state, RunPhase::Completed);
    assert_eq!(state.cost.budget, 2.5);
    assert!(state.nodes.values().all(|n| n.status == NodeStatus::Completed));
}

/// A budget gate put in front of a review gate is not asked again when the review sends the
/// work back: only the work reruns (and its new spend is judged anew).
#[tokio::test]
async fn sending_work_back_past_an_approved_budget_gate_does_not_ask_it_again() {
    let mut probe = Probe::start(
        "modify-budget",
        r#"
        name = "t"
        budget = 1.0
        budget_step = 5.0
        [[nodes]]
        id = "draft"
        kind = "simulate"
        duration = "10ms"
        cost = 1.2
        [[nodes]]
        id = "review"
        kind = "gate"
        needs = ["draft"]
        options = ["approve", "reject", "modify"]
        [[nodes]]
        id = "publish"
        kind = "simulate"
        needs = ["review"]
        "#,
    )
    .await;
    probe.until_waiting("budget_1").await;
    probe.decide("budget_1", Decision::Approve, None).await.expect("approve the budget");
    probe.until_waiting("review").await;
    probe.decide("review", Decision::Modify, Some("again")).await.expect("send back");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let state = loop {
        let state = probe.run.room.snapshot();
        let review = &state.nodes["review"];
        if review.status == NodeStatus::Waiting && review.metrics.attempt == Some(2) {
            break state;
        }
        assert!(tokio::time::Instant::now() < deadline, "the review waits again: {state:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(state.nodes["budget_1"].status, NodeStatus::Completed, "the budget gate stays decided");
    assert_eq!(state.nodes["budget_1"].metrics.attempt, Some(1), "and was asked once");
    assert_eq!(state.nodes["draft"].metrics.attempt, Some(2), "the work ran again");
}

#[tokio::test(start_paused = true)]
async fn rejecting_the_budget_gate_cancels_the_run() {
    let mut probe = Probe::start("budget-reject", BUDGETED).await;
    probe.until_waiting("budget_1").await;
    probe.decide("budget_1", Decision::Reject, None).await.expect("reject");
    let state = probe.until_complete().await;
    assert_eq!(state.state, RunPhase::Cancelled);
    assert_eq!(state.nodes["c"].status, NodeStatus::Cancelled);
    let completes = probe.events.iter().filter(|e| matches!(e.body, ServerEventBody::ExecutionComplete { .. })).count();
    assert_eq!(completes, 1);
}

// ---- real processes ----------------------------------------------------------------------------

#[tokio::test]
async fn command_output_reports_inputs_and_exit_codes() {
    let mut probe = Probe::start(
        "commands",
        r#"
        name = "t"
        [[nodes]]
        id = "first"
        kind = "simulate"
        output = { greeting = "hello" }
        [[nodes]]
        id = "worker"
        kind = "command"
        needs = ["first"]
        env = { SPECIAL = "from-the-spec" }
        run = '''
        echo "out $SPECIAL"
        echo "err line" >&2
        grep -q hello "$DAGSTREAM_INPUTS" && echo "saw input"
        test -z "$CARGO_MANIFEST_DIR" && echo "env scrubbed"
        echo '{"cost": 0.25}' >> "$DAGSTREAM_REPORT"
        echo '{"tokens_in": 10, "tokens_out": 3}' >> "$DAGSTREAM_REPORT"
        echo 'not json' >> "$DAGSTREAM_REPORT"
        echo '{"output": {"answer": 42}}' >> "$DAGSTREAM_REPORT"
        '''
        [[nodes]]
        id = "broken"
        kind = "command"
        run = "echo about to fail; exit 3"
        [[nodes]]
        id = "after_broken"
        kind = "simulate"
        needs = ["broken"]
        "#,
    )
    .await;
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok(), "the server side has the variable the node must not see");
    let state = probe.until_complete().await;
    let worker = &state.nodes["worker"];
    assert_eq!(worker.status, NodeStatus::Completed);
    let logs = probe.logs_of("worker");
    for expected in ["out from-the-spec", "err line", "saw input", "env scrubbed"] {
        assert!(logs.iter().any(|l| l == expected), "missing {expected:?} in {logs:?}");
    }
    assert_eq!(worker.metrics.cost, Some(0.25));
    assert_eq!((worker.metrics.tokens_in, worker.metrics.tokens_out), (Some(10), Some(3)));
    assert_eq!(worker.output, Some(serde_json::json!({"answer": 42})));
    let worker_errors = probe.errors_of("worker");
    assert!(worker_errors.iter().any(|e| e.contains("report line 3") && e.contains("ignored")), "{worker_errors:?}");

    assert_eq!(state.nodes["broken"].status, NodeStatus::Failed);
    assert!(probe.errors_of("broken").iter().any(|e| e == "exit status 3"), "{:?}", probe.errors_of("broken"));
    assert_eq!(state.nodes["after_broken"].status, NodeStatus::Skipped);
    assert_eq!(state.state, RunPhase::Failed);
    assert_eq!(state.results.expect("results")["worker"], serde_json::json!({"answer": 42}));
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let mut probe = Probe::start(
        "timeout-kill",
        r#"
        name = "t"
        [[nodes]]
        id = "hang"
        kind = "command"
        timeout = "400ms"
        run = "sleep 30 & echo $! > bg.pid; sleep 30"
        "#,
    )
    .await;
    let background = read_pid(probe.workdir().join("bg.pid")).await;
    let state = probe.until_complete().await;
    assert_eq!(state.nodes["hang"].status, NodeStatus::Failed);
    assert!(
        probe.errors_of("hang").iter().any(|e| e.contains("timed out after 400ms")),
        "{:?}",
        probe.errors_of("hang")
    );
    assert!(gone_soon(background).await, "the background child {background} was killed with its group");
}

#[tokio::test]
async fn cancel_terminates_the_process_group_and_every_pending_node() {
    let mut probe = Probe::start(
        "cancel-kill",
        r#"
        name = "t"
        [[nodes]]
        id = "long"
        kind = "command"
        run = "sleep 30 & echo $! > bg.pid; echo $$ > sh.pid; wait"
        [[nodes]]
        id = "later"
        kind = "simulate"
        needs = ["long"]
        "#,
    )
    .await;
    let background = read_pid(probe.workdir().join("bg.pid")).await;
    let shell = read_pid(probe.workdir().join("sh.pid")).await;
    probe.command(ClientEvent::CancelExecution).await.expect("cancel");
    let state = probe.until_complete().await;
    assert_eq!(state.state, RunPhase::Cancelled);
    assert_eq!(state.nodes["long"].status, NodeStatus::Cancelled);
    assert_eq!(state.nodes["later"].status, NodeStatus::Cancelled);
    let phases: Vec<RunPhase> = probe
        .events
        .iter()
        .filter_map(|e| match e.body {
            ServerEventBody::RunStateChanged { state } => Some(state),
            _ => None,
        })
        .collect();
    assert_eq!(phases, [RunPhase::Running, RunPhase::Cancelling, RunPhase::Cancelled]);
    assert!(gone_soon(shell).await, "the shell {shell} is gone");
    assert!(gone_soon(background).await, "its background child {background} is gone");
}

/// Processes whose parent is this test process and that have exited without being waited for.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // After the command's name: state, then the parent's pid.
            let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
            fields.next() == Some("Z") && fields.next() == Some(me.as_str())
        })
        .collect()
}

/// Cancel sends SIGTERM to each command's process group, waits the grace period, then sends
/// SIGKILL; every process is waited for (no zombie is left under the server).
#[tokio::test]
async fn cancel_sends_term_then_kill_after_the_grace_and_reaps_every_command() {
    let mut probe = Probe::start(
        "cancel-term",
        r#"
        name = "t"
        [[nodes]]
        id = "polite"
        kind = "command"
        run = "trap 'echo got TERM > polite.txt; exit 3' TERM; echo $$ > polite.pid; while true; do sleep 0.05; done"
        [[nodes]]
        id = "stubborn"
        kind = "command"
        run = "trap 'echo TERM ignored >> stubborn.txt' TERM; echo $$ > stubborn.pid; while true; do sleep 0.05; done"
        "#,
    )
    .await;
    let polite = read_pid(probe.workdir().join("polite.pid")).await;
    let stubborn = read_pid(probe.workdir().join("stubborn.pid")).await;
    let asked = std::time::Instant::now();
    probe.command(ClientEvent::CancelExecution).await.expect("cancel");
    let state = probe.until_complete().await;
    let took = asked.elapsed();
    assert_eq!(state.state, RunPhase::Cancelled);
    assert_eq!(state.nodes["polite"].status, NodeStatus::Cancelled);
    assert_eq!(state.nodes["stubborn"].status, NodeStatus::Cancelled);
    let polite_said = std::fs::read_to_string(probe.workdir().join("polite.txt")).expect("the TERM handler ran");
    assert_eq!(polite_said.trim(), "got TERM");
    let stubborn_said = std::fs::read_to_string(probe.workdir().join("stubborn.txt")).expect("it got TERM first");
    assert!(stubborn_said.contains("TERM ignored"), "{stubborn_said}");
    // The grace is 500 ms (Probe): the stubborn one was killed only after it.
    assert!(took >= Duration::from_millis(450), "SIGKILL came after the grace, not at once: {took:?}");
    for pid in [polite, stubborn] {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "{pid} is gone and was waited for");
    }
    // Other tests of this binary run commands too; a zombie of theirs lasts only until it is
    // waited for, a left-over one forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !zombie_children().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(zombie_children(), Vec::<i32>::new(), "no zombie is left under the server");
}

#[tokio::test]
async fn a_running_node_adds_nodes_and_edges_and_invalid_mutations_change_nothing() {
    let mut probe = Probe::start(
        "mutation",
        r#"
        name = "t"
        [[nodes]]
        id = "plan"
        kind = "command"
        run = '''
        for i in 1 2 3; do
          echo "{\"add_node\": {\"id\": \"work_$i\", \"kind\": \"simulate\", \"cost\": 0.1}, \"after\": [\"plan\"]}" >> "$DAGSTREAM_REPORT"
        done
        echo '{"add_edge": {"from": "work_1", "to": "merge"}}' >> "$DAGSTREAM_REPORT"
        echo '{"add_edge": {"from": "work_2", "to": "merge"}}' >> "$DAGSTREAM_REPORT"
        echo '{"add_node": {"id": "ghost_child", "kind": "simulate"}, "after": ["ghost"]}' >> "$DAGSTREAM_REPORT"
        echo '{"add_node": {"id": "plan", "kind": "simulate"}}' >> "$DAGSTREAM_REPORT"
        echo '{"add_edge": {"from": "merge", "to": "work_1"}}' >> "$DAGSTREAM_REPORT"
        echo '{"add_edge": {"from": "work_3", "to": "plan"}}' >> "$DAGSTREAM_REPORT"
        echo '{"add_node": {"id": "bad", "kind": "simulate", "run": "ls"}}' >> "$DAGSTREAM_REPORT"
        '''
        [[nodes]]
        id = "merge"
        kind = "simulate"
        needs = ["plan"]
        "#,
    ).await;
    let state = probe.until_complete().await;
    assert_eq!(state.state, RunPhase::Completed, "{:#?}", probe.errors_of("plan"));
    for id in ["work_1", "work_2", "work_3"] {
        assert_eq!(state.nodes[id].status, NodeStatus::Completed, "{id}");
        assert_eq!(state.nodes[id].needs, vec!["plan".to_string()]);
    }
    let mut merge_needs = state.nodes["merge"].needs.clone();
    merge_needs.sort();
    assert_eq!(merge_needs, ["plan", "work_1", "work_2"]);
    assert!(!state.nodes.contains_key("ghost_child") && !state.nodes.contains_key("bad"));
    let refusals: Vec<String> =
        probe.errors_of("plan").into_iter().filter(|e| e.starts_with("mutation refused")).collect();
    assert_eq!(refusals.len(), 5, "{refusals:#?}");
    assert!(refusals.iter().any(|e| e.contains("\"ghost\"")));
    assert!(refusals.iter().any(|e| e.contains("already exists")));
    assert!(refusals.iter().any(|e| e.contains("cycle")));
    assert!(refusals.iter().any(|e| e.contains("already started")));
    assert!(refusals.iter().any(|e| e.contains("\"run\"")));
    // merge ran only after the work nodes it was wired to.
    let finished_at = |id: &str| state.nodes[id].metrics.finished_at.clone().expect("finished");
    assert!(finished_at("merge") >= finished_at("work_1") && finished_at("merge") >= finished_at("work_2"));
    assert!((state.cost.spent - 0.3).abs() < 1e-9);
}

/// Approves every gate that waits until the run completes; answers the final state.
async fn approve_everything(probe: &mut Probe) -> RunState {
    let mut decided = 0;
    loop {
        let event = probe
            .until("a gate or the end", |e| {
                matches!(e.body, ServerEventBody::HumanGateWaiting { .. } | ServerEventBody::ExecutionComplete { .. })
                    && e.seq as usize > decided
            })
            .await;
        decided = event.seq as usize;
        match event.body {
            ServerEventBody::HumanGateWaiting { node_id, .. } => {
                probe.decide(&node_id, Decision::Approve, None).await.expect("a waiting gate takes approve");
            }
            _ => return probe.run.room.snapshot(),
        }
    }
}

fn example(name: &str) -> &'static str {
    dagstream::examples::EXAMPLES.iter().find(|(n, _)| *n == name).expect("bundled").1
}

#[tokio::test]
async fn the_ci_pipeline_example_passes_its_flaky_step_on_retry() {
    let mut probe = Probe::start("example-ci", example("ci-pipeline")).await;
    let state = approve_everything(&mut probe).await;
    assert_eq!(state.state, RunPhase::Completed, "{:#?}", state.errors);
    assert_eq!(state.nodes["integration_tests"].metrics.attempt, Some(2), "failed once, passed on retry");
    assert!(probe.errors_of("integration_tests")[0].contains("attempt 1 of 3 failed: exit status 1"));
    assert!(probe.logs_of("unit_tests").iter().any(|l| l == "5 passed"));
    assert_eq!(state.nodes["build"].output.as_ref().map(|o| o["artifact"].clone()), Some("dist/app".into()));
}

#[tokio::test]
async fn the_planner_example_fans_out_at_run_time() {
    let mut probe = Probe::start("example-planner", example("planner")).await;
    let state = approve_everything(&mut probe).await;
    assert_eq!(state.state, RunPhase::Completed, "{:#?}", state.errors);
    let workers: Vec<&String> = state.nodes.keys().filter(|id| id.starts_with("work_")).collect();
    assert_eq!(workers.len(), 5);
    assert_eq!(state.nodes["merge"].needs.len(), 6, "plan and the five workers");
}

#[tokio::test(start_paused = true)]
async fn the_agent_pipeline_example_hits_its_budget_gate() {
    let mut probe = Probe::start("example-agent", example("agent-pipeline")).await;
    probe.patience = Duration::from_secs(3600);
    let state = approve_everything(&mut probe).await;
    assert!(state.nodes.contains_key("budget_1"), "the budget gate appeared");
    assert!(state.cost.budget > 1.0, "approving raised the budget");
    // research_competitors fails at random (fail_rate) and retries; all three attempts failing
    // is possible, and then the run fails honestly.
    match state.nodes["research_competitors"].status {
        NodeStatus::Completed => assert_eq!(state.state, RunPhase::Completed),
        NodeStatus::Failed => assert_eq!(state.state, RunPhase::Failed),
        other => panic!("unexpected {other:?}"),
    }
}

// ---- storage failures ----------------------------------------------------------------------------

mod failing_storage {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use dagstream::store::{Appended, Claim, DecisionRow, RunRecord, Store, StoreError, StoredEvent};
    use futures::future::BoxFuture;

    use super::*;

    /// A store that keeps runs in memory and fails every append after the first `ok_batches`.
    pub struct FlakyStore {
        pub ok_batches: usize,
        pub batches: AtomicUsize,
        pub runs: Mutex<Vec<RunRecord>>,
        pub stored: Mutex<Vec<StoredEvent>>,
    }

    impl Store for FlakyStore {
        fn create_run(&self, run: RunRecord) -> BoxFuture<'_, Result<(), StoreError>> {
            self.runs.lock().expect("lock").push(run);
            Box::pin(async { Ok(()) })
        }
        fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<Appended, StoreError>> {
            let batch = self.batches.fetch_add(1, Ordering::SeqCst);
            let result = if batch < self.ok_batches {
                self.stored.lock().expect("lock").extend(events);
                Ok(Appended::default())
            } else {
                Err(StoreError("disk full".into()))
            };
            Box::pin(async move { result })
        }
        fn runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
            let runs = self.runs.lock().expect("lock").clone();
            Box::pin(async move { Ok(runs) })
        }
        fn events(&self, _: &str, _: u64, _: u64) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn claim_decision(&self, _: &str, _: DecisionRow) -> BoxFuture<'_, Result<Claim, StoreError>> {
            Box::pin(async { Ok(Claim::Won) })
        }
        fn decisions(&self, _: &str) -> BoxFuture<'_, Result<Vec<DecisionRow>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    #[tokio::test]
    async fn a_storage_failure_stops_the_run_with_a_clear_error() {
        let store = Arc::new(FlakyStore {
            ok_batches: 1,
            batches: AtomicUsize::new(0),
            runs: Mutex::new(Vec::new()),
            stored: Mutex::new(Vec::new()),
        });
        let runs = Runs::open(RoomLimits::default(), EngineConfig::new(work_root("flaky")), store.clone())
            .await
            .expect("opens");
        let spec = DagSpec::parse(
            "name = \"t\"\n[[nodes]]\nid = \"a\"\nkind = \"simulate\"\nduration = \"200ms\"\n[[nodes]]\nid = \"b\"\nkind = \"simulate\"\nneeds = [\"a\"]\nduration = \"200ms\"\n",
            SpecFormat::Toml,
        )
        .expect("valid");
        let dag_id = runs.start(spec).await.expect("starts");
        let run = runs.get(&dag_id).expect("run");
        tokio::time::timeout(Duration::from_secs(10), run.room.completed()).await.expect("the run ends");
        let state = run.room.snapshot();
        assert_eq!(state.state, RunPhase::Failed);
        assert!(
            state.errors.iter().any(|e| e.message.contains("storage failed") && e.message.contains("disk full")),
            "{:?}",
            state.errors
        );
        assert_ne!(state.nodes["b"].status, NodeStatus::Completed, "the run stopped");
        // The stored log is a gap-free prefix: 1, 2, ... with nothing after the failure.
        let stored: Vec<u64> = store.stored.lock().expect("lock").iter().map(|e| e.seq).collect();
        assert!(!stored.is_empty());
        assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(run.room.seq(), state.seq, "nothing happens after the stop");
    }

    #[tokio::test]
    async fn a_run_whose_spec_cannot_be_read_is_marked_failed_with_the_reason() {
        let record = RunRecord {
            dag_id: "broken".into(),
            name: "broken".into(),
            spec: "{\"name\": \"broken\", \"nodes\": [{\"id\": \"a\", \"kind\": \"teleport\"}]}".into(),
            state: "running".into(),
            started_at: "2026-11-26T10:00:00.000Z".into(),
            finished_at: None,
        };
        let store = Arc::new(FlakyStore {
            ok_batches: usize::MAX,
            batches: AtomicUsize::new(0),
            runs: Mutex::new(vec![record]),
            stored: Mutex::new(Vec::new()),
        });
        let runs = Runs::open(RoomLimits::default(), EngineConfig::new(work_root("unresumable")), store)
            .await
            .expect("opens anyway");
        let run = runs.get("broken").expect("listed");
        tokio::time::timeout(Duration::from_secs(5), run.room.completed()).await.expect("ended");
        let state = run.room.snapshot();
        assert_eq!(state.state, RunPhase::Failed);
        assert!(state.errors[0].message.contains("cannot be resumed") && state.errors[0].message.contains("teleport"));
        assert!(run.handle().is_none());
    }
}
