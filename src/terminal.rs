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

use std::io::Write;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{broadcast, mpsc};

use serde_json::{Map, Value};

use crate::engine::spec::GROUP_PREFIX;
use crate::engine::{DagSpec, EngineConfig};
use crate::hub::{Frame, RoomLimits};
use crate::protocol::{
    Applied, ClientEvent, Decision, GatePresentation, InputField, InputKind, NodeStatus, NodeView, RepairAction,
    RunPhase, RunState, ServerEvent, ServerEventBody, read_form,
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
    /// Where the run is stored, if anywhere (a server on the same database shows it).
    pub store: Option<Arc<dyn crate::store::Store>>,
}

/// Runs `spec` to its end; the exit status is 0 completed, 1 failed, 130 cancelled.
pub async fn run(spec: DagSpec, options: RunOptions) -> ExitCode {
    // Listened for from the start and for the whole run: a Ctrl-C that comes while an event is
    // being shown waits here, where a listener made anew on each turn of the loop would miss it.
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    // No users file here: a gate's approvers are names (each answer says whose it is).
    if let Some(node) = spec.nodes.iter().find(|node| match &node.work {
        crate::engine::NodeWork::Gate { rules, .. } => {
            rules.approvers.iter().flatten().chain(&rules.escalate_to).any(|p| p.starts_with(GROUP_PREFIX))
        }
        crate::engine::NodeWork::Simulate { .. } | crate::engine::NodeWork::Command { .. } => false,
    }) {
        eprintln!(
            "dagstream: node {:?} names a group: groups live in a server's users file; `dagstream run` takes user names",
            node.id
        );
        return ExitCode::from(2);
    }
    let limits = RoomLimits { log_window: 1024, subscriber_queue: 1 << 16, ..RoomLimits::default() };
    let engine = EngineConfig::new(&options.work_root);
    let runs = Arc::new(match options.store.clone() {
        Some(store) => Runs::recording(limits, engine, store),
        None => Runs::new(limits, engine),
    });
    // The run as it starts, so the view can replay every event from the first: a command may
    // print before the view subscribes, and a snapshot would fold that line in unprinted.
    let dag_id = match runs.start(spec.clone()).await {
        Ok(dag_id) => dag_id,
        Err(error) => {
            eprintln!("dagstream: {error}");
            return ExitCode::from(2);
        }
    };
    let Some(run) = runs.get(&dag_id) else { return ExitCode::FAILURE };
    let subscription = run.room.subscribe(Some(0));
    let mut view = View::new(std::io::stderr().is_terminal());
    let mut state = crate::runs::initial_state(&dag_id, &spec, "");
    for frame in &subscription.backlog {
        fold(&mut state, &mut view, frame);
    }
    let mut live = subscription.live;
    let mut answers = read_answers();
    // A gate that waited before the view subscribed (one with nothing before it) is asked too.
    let mut waiting: VecDeque<String> = state.waiting_gates().map(|(node, _)| node.id.clone()).collect();
    if options.approve_all {
        while let Some(gate) = waiting.pop_front() {
            view.say(&format!("gate {gate}: approved (--approve-all)"));
            decide(&run, &mut view, &gate, Answer::approval()).await;
        }
    } else if let Some(node) = waiting.front().and_then(|gate| state.nodes.get(gate))
        && let Some(presentation) = &node.gate
    {
        view.ask(&state, node, presentation);
    }
    let mut interrupted = false;
    while state.results.is_none() {
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
                            } else if !view.prompting() {
                                view.ask(&state, node, gate);
                            }
                        }
                    }
                    if options.approve_all {
                        while let Some(gate) = waiting.pop_front() {
                            decide(&run, &mut view, &gate, Answer::approval()).await;
                        }
                    }
                    waiting.retain(|gate| state.nodes.get(gate).is_some_and(|n| n.gate.is_some()));
                    // The gate asked about was decided elsewhere (its timeout, a dashboard).
                    if view.prompting() && waiting.is_empty() {
                        view.end_prompt(false);
                    }
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
                // The answer's line (and its Enter) is on the screen below the prompt: the prompt
                // goes, and the live view comes back in its place.
                view.end_prompt(true);
                let Some(gate) = waiting.front().cloned() else {
                    view.say("no gate is waiting; the answer was ignored");
                    continue;
                };
                let form = state.nodes.get(&gate).and_then(|n| n.gate.as_ref()).map(|g| g.inputs.clone()).unwrap_or_default();
                match parse_answer(&answer).and_then(|answer| answer.with_values(&form)) {
                    Ok(answer) => {
                        let said = answer.feedback.as_deref().map(|f| format!(" ({f})")).unwrap_or_default();
                        let by = answer.signer.as_deref().map(|s| format!(" as {s}")).unwrap_or_default();
                        view.say(&format!("gate {gate}: {}{said}{by}", answer.decision.as_str()));
                        decide(&run, &mut view, &gate, answer).await;
                    }
                    Err(problem) => view.say(&problem),
                }
                // Still waiting (a refused or unreadable answer, or the next gate): ask again.
                waiting.retain(|gate| state.nodes.get(gate).is_some_and(|n| n.gate.is_some()));
                if let Some(node) = waiting.front().and_then(|gate| state.nodes.get(gate))
                    && let Some(presentation) = &node.gate
                {
                    view.ask(&state, node, presentation);
                }
            }
            Some(()) = next_interrupt(&mut interrupts) => {
                if interrupted {
                    return ExitCode::from(EXIT_CANCELLED);
                }
                interrupted = true;
                view.say("cancelling (Ctrl-C again to stop waiting)…");
                if let Some(Err(refused)) = command(&run, ClientEvent::CancelExecution).await {
                    view.say(&format!("cancel refused: {refused}"));
                }
            }
        }
    }
    view.end_prompt(false);
    view.finish(&state);
    match state.state {
        RunPhase::Completed => ExitCode::SUCCESS,
        RunPhase::Cancelled => ExitCode::from(EXIT_CANCELLED),
        RunPhase::Failed | RunPhase::Running | RunPhase::Paused | RunPhase::Cancelling => ExitCode::FAILURE,
    }
}

/// The next Ctrl-C (never, if it could not be listened for).
async fn next_interrupt(interrupts: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match interrupts {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

fn fold(state: &mut RunState, view: &mut View, frame: &Frame) {
    let Ok(event) = serde_json::from_str::<ServerEvent>(frame.text.as_str()) else { return };
    if state.apply(&event) == Applied::Folded {
        view.show(state, &event);
    }
}

async fn decide(run: &RunEntry, view: &mut View, gate: &str, answer: Answer) {
    let Answer { decision, feedback, inputs, signer, .. } = answer;
    let event = ClientEvent::HumanDecision { node_id: gate.to_owned(), decision, feedback, inputs };
    let actor = signer.as_deref().unwrap_or(ACTOR);
    if let Some(Err(refused)) = run_command(run, event, actor).await {
        view.say(&format!("gate {gate}: {refused}"));
    }
}

/// Sends a command to the run's coordinator; `None` if the run has no coordinator any more.
async fn command(run: &RunEntry, event: ClientEvent) -> Option<Result<(), crate::engine::Rejected>> {
    run_command(run, event, ACTOR).await
}

async fn run_command(run: &RunEntry, event: ClientEvent, actor: &str) -> Option<Result<(), crate::engine::Rejected>> {
    Some(run.handle()?.command(event, actor).await)
}

/// An answer at the prompt.
#[derive(Clone, Debug, PartialEq)]
struct Answer {
    decision: Decision,
    feedback: Option<String>,
    /// The gate's form, once read for its fields' types ([`Answer::with_values`]).
    inputs: Option<Map<String, Value>>,
    /// Whose decision it is (`as NAME`), for gates that name their approvers.
    signer: Option<String>,
    /// The `name=value` words, as typed.
    typed: Vec<(String, String)>,
}

/// `approve`, `reject`, or `modify <feedback>` (first letters are enough); `name=value` words
/// fill the gate's form, and a final `as NAME` says whose decision it is. What else follows is
/// the feedback.
fn parse_answer(answer: &str) -> Result<Answer, String> {
    let answer = answer.trim();
    let mut words: Vec<&str> = answer.split_whitespace().collect();
    let usage = || {
        format!(
            "{answer:?}: answer approve, reject, or modify <feedback> (approve takes field=value …; any answer may end with `as NAME`)"
        )
    };
    let first = if words.is_empty() { return Err(usage()) } else { words.remove(0) };
    let decision = match first.to_ascii_lowercase().as_str() {
        "a" | "approve" | "y" | "yes" => Decision::Approve,
        "r" | "reject" | "n" | "no" => Decision::Reject,
        "m" | "modify" => Decision::Modify,
        _ => return Err(usage()),
    };
    let signer = match words.as_slice() {
        [.., "as", name] => {
            let name = (*name).to_owned();
            words.truncate(words.len() - 2);
            Some(name)
        }
        _ => None,
    };
    let (typed, rest): (Vec<&str>, Vec<&str>) = words.into_iter().partition(|word| word.contains('='));
    let typed = typed
        .into_iter()
        .filter_map(|word| word.split_once('=').map(|(name, value)| (name.to_owned(), value.to_owned())))
        .collect();
    let feedback = (!rest.is_empty()).then(|| rest.join(" "));
    Ok(Answer { decision, feedback, inputs: None, signer, typed })
}

impl Answer {
    /// A plain approval, as `--approve-all` gives.
    fn approval() -> Self {
        Answer { decision: Decision::Approve, feedback: None, inputs: None, signer: None, typed: Vec::new() }
    }

    /// The answer with its `name=value` words read for the gate's form (a name the form does
    /// not have is an error; the run checks the values themselves).
    fn with_values(mut self, form: &[InputField]) -> Result<Answer, String> {
        if let Some((name, _)) = self.typed.iter().find(|(name, _)| !form.iter().any(|f| &f.name == name)) {
            return Err(format!("field {name:?}: this gate's form has no such field"));
        }
        self.inputs = read_form(form, |name| self.typed.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()))?;
        Ok(self)
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
    /// Lines of the open prompt on the screen (the frozen frame, the question, the answer
    /// line), while a gate's question waits for an answer; `None` while the bars are live.
    ///
    /// The bars are not drawn while a question is open: what the person types is echoed by the
    /// terminal, and its Enter moves the cursor a line down behind indicatif's back, so its next
    /// drawing would start a line too low and leave the top of the old frame on the screen.
    prompt_lines: Option<usize>,
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
            Bars { multi, header, nodes: HashMap::new(), prompt_lines: None }
        });
        View { bars }
    }

    fn say(&self, line: &str) {
        match &self.bars {
            // While a question is open nothing is drawn: the line waits in the log of events.
            Some(bars) if bars.prompt_lines.is_some() => {}
            Some(bars) => {
                let _ = bars.multi.println(line);
            }
            None => println!("{line}"),
        }
    }

    /// Asks a gate's question. On a terminal the live bars give way to the same frame, drawn
    /// once and frozen, with the question under it and the cursor after `answer> `.
    fn ask(&mut self, state: &RunState, node: &NodeView, gate: &GatePresentation) {
        let options: Vec<&str> = gate.options.iter().map(|d| d.as_str()).collect();
        let mut question =
            vec![String::new(), format!("? gate {}: {}", node.id, gate.title), format!("  {}", gate.prompt)];
        if let Some(forecast) = &gate.forecast {
            question.push(format!("  {}", forecast.describe()));
        }
        if let Some(approvers) = &gate.approvers {
            let needed = gate.approvals_needed();
            let so_far = if node.approved_by.is_empty() {
                String::new()
            } else {
                format!(", approved by {}", node.approved_by.join(", "))
            };
            question.push(format!(
                "  decided by {} ({needed} approval(s){so_far}): answer `… as NAME`",
                approvers.join(", ")
            ));
        }
        if !gate.inputs.is_empty() {
            let fields: Vec<String> = gate.inputs.iter().map(describe_field).collect();
            question.push(format!("  form: {} (approve name=value …)", fields.join(", ")));
        }
        question.push(format!("  answer {} (modify takes feedback: `modify shorter please`)", options.join(" / ")));
        let Some(bars) = &mut self.bars else {
            for line in question {
                println!("{line}");
            }
            return;
        };
        let width = usize::from(console::Term::stderr().size().1).max(20) - 1;
        let mut lines: Vec<String> = frame_lines(state, bars.nodes.keys());
        lines.extend(question);
        let lines: Vec<String> = lines.iter().flat_map(|line| wrap(line, width)).collect();
        let _ = bars.multi.clear();
        bars.multi.set_draw_target(ProgressDrawTarget::hidden());
        let mut screen = std::io::stderr().lock();
        for line in &lines {
            let _ = writeln!(screen, "{line}");
        }
        let _ = write!(screen, "answer> ");
        let _ = screen.flush();
        bars.prompt_lines = Some(lines.len() + 1);
    }

    /// True while a question waits for its answer.
    fn prompting(&self) -> bool {
        self.bars.as_ref().is_some_and(|bars| bars.prompt_lines.is_some())
    }

    /// Takes the open question (if any) off the screen and brings the live bars back in its
    /// place. `answered`: the person pressed Enter, so the cursor is a line below the prompt.
    fn end_prompt(&mut self, answered: bool) {
        let Some(bars) = &mut self.bars else { return };
        let Some(lines) = bars.prompt_lines.take() else { return };
        // Up to the frame's first line (from the line under the answer, or from the answer
        // line itself), then clear everything below.
        let up = if answered { lines } else { lines - 1 };
        let mut screen = std::io::stderr().lock();
        let _ = write!(screen, "\r\x1b[{up}A\x1b[J");
        let _ = screen.flush();
        drop(screen);
        bars.multi.set_draw_target(ProgressDrawTarget::stderr());
    }

    fn show(&mut self, state: &RunState, event: &ServerEvent) {
        let progress = state.progress();
        let spend = spend_line(state);
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
                if let ServerEventBody::RunRepaired { action, node_id, reset, repaired_by, .. } = &event.body {
                    // The reset nodes' finished lines go; they get new ones when they start.
                    for id in reset {
                        if let Some(bar) = bars.nodes.remove(id) {
                            bars.multi.remove(&bar);
                        }
                    }
                    let _ = bars.multi.println(repair_line(*action, node_id, reset, repaired_by));
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
                ServerEventBody::GateReminder { node_id, escalated_to } => {
                    if escalated_to.is_empty() {
                        println!("[{spend}] {node_id} still waits for a decision");
                    } else {
                        println!("[{spend}] {node_id} escalated to {}", escalated_to.join(", "));
                    }
                }
                ServerEventBody::GateProgress { node_id, approved_by, remaining } => {
                    println!("[{spend}] {node_id} approved by {}: {remaining} more needed", approved_by.join(", "))
                }
                ServerEventBody::RunRepaired { action, node_id, reset, repaired_by, .. } => {
                    println!("[{spend}] {}", repair_line(*action, node_id, reset, repaired_by))
                }
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

/// Spend against the budget (`$1.25 / $2.00`), or spend alone when there is no budget.
fn spend_line(state: &RunState) -> String {
    if state.cost.budget > 0.0 {
        format!("${:.2} / ${:.2}", state.cost.spent, state.cost.budget)
    } else {
        format!("${:.2}", state.cost.spent)
    }
}

/// The live frame as plain lines: the header, then the nodes that have bars, in the run's order.
fn frame_lines<'a>(state: &RunState, shown: impl Iterator<Item = &'a String>) -> Vec<String> {
    let shown: std::collections::HashSet<&String> = shown.collect();
    let progress = state.progress();
    let spend = spend_line(state);
    let mut lines =
        vec![format!("{} {}/{} nodes  {spend}  {}", state.name, progress.done, progress.total, state.state.as_str())];
    lines.extend(
        state.nodes.values().filter(|node| shown.contains(&node.id)).map(|node| format!("  {}", node_line(node))),
    );
    lines
}

/// `line` cut into pieces of at most `width` characters (so each is one line on the screen).
fn wrap(line: &str, width: usize) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(width.max(1)).map(|piece| piece.iter().collect()).collect()
}

/// What a repair did, in one line.
fn repair_line(action: RepairAction, node_id: &str, reset: &[String], by: &str) -> String {
    let what = match action {
        RepairAction::Retry => "retried",
        RepairAction::Rerun => "re-ran from",
    };
    format!("↻ {by} {what} {node_id}: {} run again ({})", reset.len(), reset.join(", "))
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

/// A form field as the prompt lists it: `max_rows (integer 1 to 1000)`.
fn describe_field(field: &InputField) -> String {
    let what = match field.kind {
        InputKind::Enum => field.options.as_deref().unwrap_or_default().join(" | "),
        InputKind::Integer | InputKind::Number => {
            let bound = |v: Option<f64>| v.map_or("…".to_owned(), |v| v.to_string());
            format!("{} {} to {}", field.kind.as_str(), bound(field.min), bound(field.max))
        }
        InputKind::Text | InputKind::Boolean => field.kind.as_str().to_owned(),
    };
    let optional = if field.is_required() { "" } else { ", optional" };
    format!("{} ({what}{optional})", field.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(decision: Decision, feedback: Option<&str>) -> Result<(Decision, Option<String>, Option<String>), String> {
        Ok((decision, feedback.map(str::to_owned), None))
    }

    fn read(answer: &str) -> Result<(Decision, Option<String>, Option<String>), String> {
        parse_answer(answer).map(|a| (a.decision, a.feedback, a.signer))
    }

    #[test]
    fn answers_are_read_leniently() {
        assert_eq!(read("approve"), plain(Decision::Approve, None));
        assert_eq!(read(" a "), plain(Decision::Approve, None));
        assert_eq!(read("reject not now"), plain(Decision::Reject, Some("not now")));
        assert_eq!(read("m shorter please"), plain(Decision::Modify, Some("shorter please")));
        assert_eq!(read("approve as ana"), Ok((Decision::Approve, None, Some("ana".into()))));
        assert_eq!(read("reject too risky as bo"), Ok((Decision::Reject, Some("too risky".into()), Some("bo".into()))));
        assert!(read("maybe").is_err());
        assert!(read("").is_err());
    }

    #[test]
    fn form_values_are_read_for_the_gate_fields() {
        let form: Vec<InputField> = serde_json::from_value(serde_json::json!([
            { "name": "tone", "type": "enum", "options": ["short", "long"] },
            { "name": "max_rows", "type": "integer" },
        ]))
        .expect("a form");
        let answer = parse_answer("approve tone=short max_rows=25 as ana").and_then(|a| a.with_values(&form));
        let answer = answer.expect("read");
        assert_eq!(answer.inputs, serde_json::json!({ "tone": "short", "max_rows": 25 }).as_object().cloned());
        assert_eq!(answer.signer.as_deref(), Some("ana"));
        let unknown = parse_answer("approve colour=red").and_then(|a| a.with_values(&form));
        assert!(unknown.is_err_and(|e| e.contains("colour")));
        let bad = parse_answer("approve max_rows=many").and_then(|a| a.with_values(&form));
        assert!(bad.is_err_and(|e| e.contains("max_rows")));
        assert_eq!(describe_field(&form[1]), "max_rows (integer … to …)");
    }

    #[test]
    fn a_repair_is_one_line_naming_who_what_and_which_nodes() {
        let reset = ["flaky".to_owned(), "after".to_owned()];
        assert_eq!(
            repair_line(RepairAction::Retry, "flaky", &reset, "ana"),
            "↻ ana retried flaky: 2 run again (flaky, after)"
        );
        assert_eq!(
            repair_line(RepairAction::Rerun, "after", &reset[1..], "bo"),
            "↻ bo re-ran from after: 1 run again (after)"
        );
    }
}
