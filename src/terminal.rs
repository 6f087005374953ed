//! `dagstream run SPEC`: one run, headless, with a live view in the terminal: a line per node,
//! spend against budget, gates asked on the terminal (or approved with `--approve-all`).
//!
//! The view folds the run's event stream with the shared reducer, like the dashboard does. On a
//! terminal it draws progress bars (indicatif); otherwise it prints one line per change, so logs
//! of CI jobs stay readable.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::{broadcast, mpsc};

use crate::engine::{DagSpec, EngineConfig};
use crate::hub::{Frame, RoomLimits};
use crate::protocol::{
    Applied, ClientEvent, Decision, GatePresentation, NodeStatus, NodeView, RunPhase, RunState, ServerEvent,
    ServerEventBody,
};
use crate::runs::{RunEntry, Runs};

/// Exit status of a run that was cancelled (as after Ctrl-C).
pub const EXIT_CANCELLED: u8 = 130;
/// Who decisions made here are attributed to.
const ACTOR: &str = "terminal";

/// Options of `dagstream run`.
pub struct RunOptions {
    /// Approve every gate as soon as it waits.
    pub approve_all: bool,
    /// Where the run's working directory goes.
    pub work_root: std::path::PathBuf,
}

/// Runs `spec` to its end; the exit status is 0 completed, 1 failed, 130 cancelled.
pub async fn run(spec: DagSpec, options: RunOptions) -> ExitCode {
    let runs = Arc::new(Runs::new(
        RoomLimits { log_window: 1024, subscriber_queue: 1 << 16 },
        EngineConfig::new(&options.work_root),
    ));
    let dag_id = match runs.start(spec).await {
        Ok(dag_id) => dag_id,
        Err(error) => {
            eprintln!("dagstream: {error}");
            return ExitCode::from(2);
        }
    };
    let Some(run) = runs.get(&dag_id) else { return ExitCode::FAILURE };
    let subscription = run.room.subscribe(None);
    let mut view = View::new(std::io::stderr().is_terminal());
    let mut state = RunState::new(&dag_id, "", "", 0.0, []);
    for frame in &subscription.backlog {
        fold(&mut state, &mut view, frame);
    }
    let mut live = subscription.live;
    let mut answers = read_answers();
    let mut waiting: VecDeque<String> = VecDeque::new();
    let mut interrupted = false;
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(frame) => {
                    let before: Vec<String> = state.waiting_gates().map(|(n, _)| n.id.clone()).collect();
                    fold(&mut state, &mut view, &frame);
                    for (node, gate) in state.waiting_gates() {
                        // Act on the event that made the gate wait, not on later ones.
                        if !before.contains(&node.id) && !waiting.contains(&node.id) {
                            waiting.push_back(node.id.clone());
                            if options.approve_all {
                                view.say(&format!("gate {}: approved (--approve-all)", node.id));
                            } else {
                                view.ask(node, gate);
                            }
                        }
                    }
                    if options.approve_all {
                        while let Some(gate) = waiting.pop_front() {
                            decide(&run, &mut view, &gate, Decision::Approve, None).await;
                        }
                    }
                    waiting.retain(|gate| state.nodes.get(gate).is_some_and(|n| n.gate.is_some()));
                    if state.results.is_some() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Cannot happen with the queue sized above; resync from the room if it does.
                    state = run.room.snapshot();
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            Some(answer) = answers.recv() => {
                let Some(gate) = waiting.front().cloned() else {
                    view.say("no gate is waiting; the answer was ignored");
                    continue;
                };
                match parse_answer(&answer) {
                    Ok((decision, feedback)) => decide(&run, &mut view, &gate, decision, feedback).await,
                    Err(problem) => view.say(&problem),
                }
            }
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                view.say("cancelling (Ctrl-C again to stop waiting)…");
                if let Some(Err(refused)) = command(&run, ClientEvent::CancelExecution).await {
                    view.say(&format!("cancel refused: {refused}"));
                }
            }
            _ = tokio::signal::ctrl_c(), if interrupted => return ExitCode::from(EXIT_CANCELLED),
        }
    }
    view.finish(&state);
    match state.state {
        RunPhase::Completed => ExitCode::SUCCESS,
        RunPhase::Cancelled => ExitCode::from(EXIT_CANCELLED),
        RunPhase::Failed | RunPhase::Running | RunPhase::Paused | RunPhase::Cancelling => ExitCode::FAILURE,
    }
}

fn fold(state: &mut RunState, view: &mut View, frame: &Frame) {
    let Ok(event) = serde_json::from_str::<ServerEvent>(frame.text.as_str()) else { return };
    if state.apply(&event) == Applied::Folded {
        view.show(state, &event);
    }
}

async fn decide(run: &RunEntry, view: &mut View, gate: &str, decision: Decision, feedback: Option<String>) {
    let event = ClientEvent::HumanDecision { node_id: gate.to_owned(), decision, feedback };
    if let Some(Err(refused)) = command(run, event).await {
        view.say(&format!("gate {gate}: {refused}"));
    }
}

/// Sends a command to the run's coordinator; `None` if the run has no coordinator any more.
async fn command(run: &RunEntry, event: ClientEvent) -> Option<Result<(), crate::engine::Rejected>> {
    Some(run.handle()?.command(event, ACTOR).await)
}

/// `approve`, `reject`, or `modify <feedback>` (first letters are enough).
fn parse_answer(answer: &str) -> Result<(Decision, Option<String>), String> {
    let answer = answer.trim();
    let (word, rest) = answer.split_once(char::is_whitespace).unwrap_or((answer, ""));
    let feedback = (!rest.trim().is_empty()).then(|| rest.trim().to_owned());
    match word.to_ascii_lowercase().as_str() {
        "a" | "approve" | "y" | "yes" => Ok((Decision::Approve, feedback)),
        "r" | "reject" | "n" | "no" => Ok((Decision::Reject, feedback)),
        "m" | "modify" => Ok((Decision::Modify, feedback)),
        _ => Err(format!("{answer:?}: answer approve, reject, or modify <feedback>")),
    }
}

/// Lines typed on standard input, read on a blocking thread.
fn read_answers() -> mpsc::Receiver<String> {
    let (lines, answers) = mpsc::channel(8);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if lines.blocking_send(line).is_err() {
                break;
            }
        }
    });
    answers
}

/// The terminal view: bars on a terminal, plain lines elsewhere.
struct View {
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    nodes: HashMap<String, ProgressBar>,
}

impl View {
    fn new(terminal: bool) -> Self {
        let bars = terminal.then(|| {
            let multi = MultiProgress::new();
            let header = multi.add(ProgressBar::new(0));
            header.set_style(
                ProgressStyle::with_template("{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} nodes  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Bars { multi, header, nodes: HashMap::new() }
        });
        View { bars }
    }

    fn say(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.multi.println(line);
            }
            None => println!("{line}"),
        }
    }

    fn ask(&self, node: &NodeView, gate: &GatePresentation) {
        let options: Vec<&str> = gate.options.iter().map(|d| d.as_str()).collect();
        self.say(&format!(
            "\n? gate {}: {}\n  {}\n  answer {} (modify takes feedback: `modify shorter please`)",
            node.id,
            gate.title,
            gate.prompt,
            options.join(" / ")
        ));
    }

    fn show(&mut self, state: &RunState, event: &ServerEvent) {
        let progress = state.progress();
        let spend = if state.cost.budget > 0.0 {
            format!("${:.2} / ${:.2}", state.cost.spent, state.cost.budget)
        } else {
            format!("${:.2}", state.cost.spent)
        };
        match &mut self.bars {
            Some(bars) => {
                bars.header.set_prefix(state.name.clone());
                bars.header.set_length(progress.total as u64);
                bars.header.set_position(progress.done as u64);
                bars.header.set_message(format!("{spend}  {}", state.state.as_str()));
                if let ServerEventBody::NodeState { node_id, .. } | ServerEventBody::HumanGateWaiting { node_id, .. } =
                    &event.body
                    && let Some(node) = state.nodes.get(node_id)
                {
                    let bar = bars.nodes.entry(node_id.clone()).or_insert_with(|| {
                        let bar = bars.multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("  {spinner} {msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bar
                    });
                    bar.set_message(node_line(node));
                    if node.status.is_terminal() {
                        bar.finish();
                    }
                }
            }
            None => match &event.body {
                ServerEventBody::NodeState { node_id, status, .. } => {
                    if let Some(node) = state.nodes.get(node_id) {
                        let changed = !matches!(status, NodeStatus::Running) || node.metrics.started_at.is_some();
                        if changed {
                            println!("[{spend}] {}", node_line(node));
                        }
                    }
                }
                ServerEventBody::Error { node_id, message } => {
                    println!(
                        "[{spend}] error{}: {message}",
                        node_id.as_ref().map(|n| format!(" in {n}")).unwrap_or_default()
                    );
                }
                ServerEventBody::RunStateChanged { state: phase } => println!("run {}", phase.as_str()),
                ServerEventBody::DagMutated { mutation } => println!("graph changed: {mutation:?}"),
                ServerEventBody::NodeLog { node_id, line, .. } => println!("  {node_id} | {line}"),
                ServerEventBody::EdgeActive { .. }
                | ServerEventBody::CostUpdate { .. }
                | ServerEventBody::ExecutionComplete { .. }
                | ServerEventBody::HumanGateWaiting { .. }
                | ServerEventBody::Snapshot { .. }
                | ServerEventBody::GateResolved { .. } => {}
            },
        }
    }

    fn finish(&self, state: &RunState) {
        if let Some(bars) = &self.bars {
            bars.header.finish();
        }
        let progress = state.progress();
        self.say(&format!(
            "run {}: {} of {} nodes done, {} failed, spent ${:.2}",
            state.state.as_str(),
            progress.done,
            progress.total,
            progress.failed,
            state.cost.spent
        ));
    }
}

fn node_line(node: &NodeView) -> String {
    let mark = match node.status {
        NodeStatus::Pending => "·",
        NodeStatus::Running => "▶",
        NodeStatus::Waiting => "?",
        NodeStatus::Completed => "✓",
        NodeStatus::Failed => "✗",
        NodeStatus::Skipped => "↷",
        NodeStatus::Cancelled => "■",
    };
    let mut figures = Vec::new();
    if let Some(attempt) = node.metrics.attempt.filter(|a| *a > 1) {
        figures.push(format!("attempt {attempt}"));
    }
    if let Some(ms) = node.metrics.duration_ms {
        figures.push(format!("{:.1}s", ms as f64 / 1000.0));
    }
    if let Some(cost) = node.metrics.cost.filter(|c| *c > 0.0) {
        figures.push(format!("${cost:.2}"));
    }
    let figures = if figures.is_empty() { String::new() } else { format!(" ({})", figures.join(", ")) };
    format!("{mark} {} {}{figures}", node.id, node.status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_leniently() {
        assert_eq!(parse_answer("approve"), Ok((Decision::Approve, None)));
        assert_eq!(parse_answer(" a "), Ok((Decision::Approve, None)));
        assert_eq!(parse_answer("reject not now"), Ok((Decision::Reject, Some("not now".into()))));
        assert_eq!(parse_answer("m shorter please"), Ok((Decision::Modify, Some("shorter please".into()))));
        assert!(parse_answer("maybe").is_err());
    }
}
