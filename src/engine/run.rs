//! The coordinator of one run: the single task that owns the run's state (schedule, spend,
//! gates, the graph as mutated), starts node tasks, takes their messages and the commands of
//! clients, and publishes every change to the run's room.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::command::Report;
use super::node::{self, NodeJob, NodeMsg, Outcome};
use super::now_rfc3339;
use super::schedule::{Scheduler, Slot};
use super::spec::{DagSpec, NodeFile, NodeSpec, NodeWork, is_valid_id};
use crate::hub::Room;
use crate::protocol::{
    ClientEvent, DagMutation, Decision, GatePresentation, NodeMetrics, NodeStatus, RunPhase, RunState, ServerEvent,
    ServerEventBody,
};

/// How many client commands may wait for the coordinator before senders wait too.
const COMMAND_QUEUE: usize = 64;
/// How many node messages may wait; node tasks wait when it is full (their output is
/// rate-limited at the source, so this only smooths bursts).
const NODE_QUEUE: usize = 4096;

/// Where and how runs execute.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Each run's working directory is `work_root/<dag_id>`.
    pub work_root: PathBuf,
    /// How long a cancelled command gets between SIGTERM and SIGKILL.
    pub cancel_grace: Duration,
    /// False with `serve --no-commands`: specs with command nodes are refused.
    pub allow_commands: bool,
}

impl EngineConfig {
    /// `work_root` is made absolute: commands run inside it and get paths under it.
    pub fn new(work_root: impl Into<PathBuf>) -> Self {
        let work_root = work_root.into();
        let work_root = std::path::absolute(&work_root).unwrap_or(work_root);
        EngineConfig { work_root, cancel_grace: Duration::from_secs(5), allow_commands: true }
    }
}

/// Why a client command was refused. The message is sent to that client as an `error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    #[error("the run is {}: it takes no more commands", .0.as_str())]
    Finished(RunPhase),
    #[error("the run is already paused")]
    AlreadyPaused,
    #[error("the run is not paused, so it cannot be resumed")]
    NotPaused,
    #[error("the run is being cancelled")]
    Cancelling,
    #[error("no node {0:?} in this run")]
    UnknownNode(String),
    #[error("gate {0:?} is not waiting for a decision")]
    GateNotWaiting(String),
    #[error("gate {node:?} was already decided by {by} ({}) at {at}", .decision.as_str())]
    AlreadyDecided { node: String, by: String, decision: Decision, at: String },
    #[error("gate {node:?} does not offer {}", .decision.as_str())]
    NotOffered { node: String, decision: Decision },
    #[error("modify needs feedback: say what should change")]
    ModifyWithoutFeedback,
    #[error("gate {0:?} has no upstream node to send work back to")]
    NothingToRedo(String),
    #[error("the run's engine has stopped")]
    EngineStopped,
}

/// A client event for the coordinator, with who sent it and where the verdict goes.
struct Command {
    event: ClientEvent,
    actor: String,
    reply: oneshot::Sender<Result<(), Rejected>>,
}

/// The way in to a running coordinator. Cheap to clone.
#[derive(Clone)]
pub struct RunHandle {
    commands: mpsc::Sender<Command>,
}

impl RunHandle {
    /// Hands a client event to the run and waits for the verdict. `actor` is who sent it; it is
    /// recorded as `decided_by` on gate decisions.
    pub async fn command(&self, event: ClientEvent, actor: &str) -> Result<(), Rejected> {
        let (reply, verdict) = oneshot::channel();
        let command = Command { event, actor: actor.to_owned(), reply };
        self.commands.send(command).await.map_err(|_| Rejected::EngineStopped)?;
        verdict.await.unwrap_or(Err(Rejected::EngineStopped))
    }
}

/// Starts the coordinator of a validated spec on the current tokio runtime. Events go to `room`,
/// whose state must have been built from the same spec.
pub fn spawn(dag_id: &str, spec: DagSpec, room: Arc<Room>, config: &EngineConfig) -> RunHandle {
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let coordinator = Coordinator::new(dag_id, spec, room, config);
    tokio::spawn(coordinator.drive(inbox, false));
    RunHandle { commands }
}

/// Starts the coordinator of a run that was interrupted (a server restart), from its spec and
/// its stored log: completed nodes stay completed, nodes that were running run again (the next
/// attempt), waiting gates keep waiting (with what is left of their timeout), spend is what it was.
/// `state` is the log folded with the reducer. Fails (changing nothing) if the log cannot be
/// matched to the spec.
pub fn resume(
    dag_id: &str,
    spec: DagSpec,
    log: &[ServerEvent],
    state: &RunState,
    room: Arc<Room>,
    config: &EngineConfig,
) -> Result<RunHandle, String> {
    let mut coordinator = Coordinator::new(dag_id, spec, room, config);
    coordinator.replay_graph_changes(log)?;
    coordinator.restore(state);
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    tokio::spawn(coordinator.drive(inbox, true));
    Ok(RunHandle { commands })
}

/// Run-time bookkeeping of one node.
#[derive(Debug, Default)]
struct NodeRun {
    /// When the current attempt (or gate wait) started.
    started: Option<Instant>,
    /// Attempt number of a work node; for a gate, how many times it has waited.
    attempt: u32,
    cost: f64,
    tokens_in: u64,
    tokens_out: u64,
    /// The latest output a report set.
    output: Option<Value>,
    /// Feedback a gate sent back with `modify`, handed to the next run.
    feedback: Option<String>,
    /// True for gates the engine added when spend reached the budget.
    budget_gate: bool,
    /// The last decision on this gate: who, what, when (to tell a late second decider).
    last_decision: Option<(String, Decision, String)>,
}

struct Coordinator {
    /// The nodes, including ones added while running; indices are scheduler indices.
    nodes: Vec<NodeSpec>,
    runs: Vec<NodeRun>,
    /// Node index by id.
    index: HashMap<String, usize>,
    /// Where every change of the run is published.
    room: Arc<Room>,
    scheduler: Scheduler,
    phase: RunPhase,
    spent: f64,
    /// `None`: no budget.
    budget: Option<f64>,
    budget_step: f64,
    /// The budget gate that is waiting or about to, so spend adds no second one.
    open_budget_gate: Option<usize>,
    /// Node tasks; all end on cancel (through `cancel`).
    tasks: JoinSet<()>,
    /// Gate timeout timers; aborted when the run ends.
    timers: JoinSet<()>,
    /// Cancels every node task of the run.
    cancel: CancellationToken,
    /// Node tasks and timers send here.
    to_self: mpsc::Sender<NodeMsg>,
    from_nodes: mpsc::Receiver<NodeMsg>,
    /// Outputs of completed nodes, by id: inputs of later nodes and the final results.
    outputs: Map<String, Value>,
    workdir: PathBuf,
    cancel_grace: Duration,
}

impl Coordinator {
    fn new(dag_id: &str, spec: DagSpec, room: Arc<Room>, config: &EngineConfig) -> Self {
        let index: HashMap<String, usize> = spec.nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        let needs: Vec<Vec<usize>> =
            spec.nodes.iter().map(|n| n.needs.iter().filter_map(|need| index.get(need).copied()).collect()).collect();
        let takes_capacity: Vec<bool> = spec.nodes.iter().map(|n| !n.is_gate()).collect();
        let scheduler = Scheduler::new(&needs, &takes_capacity, spec.max_parallel);
        let (to_self, from_nodes) = mpsc::channel(NODE_QUEUE);
        Coordinator {
            runs: spec.nodes.iter().map(|_| NodeRun::default()).collect(),
            nodes: spec.nodes,
            index,
            room,
            scheduler,
            phase: RunPhase::Running,
            spent: 0.0,
            budget: spec.budget,
            budget_step: spec.budget_step,
            open_budget_gate: None,
            tasks: JoinSet::new(),
            timers: JoinSet::new(),
            cancel: CancellationToken::new(),
            to_self,
            from_nodes,
            outputs: Map::new(),
            workdir: config.work_root.join(dag_id),
            cancel_grace: config.cancel_grace,
        }
    }

    async fn drive(mut self, mut inbox: mpsc::Receiver<Command>, resumed: bool) {
        if !resumed {
            self.room.publish(ServerEventBody::RunStateChanged { state: RunPhase::Running });
            self.publish_cost();
        } else if self.phase == RunPhase::Cancelling {
            // Interrupted while cancelling: finish the cancel.
            self.phase = RunPhase::Running;
            self.cancel_run();
        }
        self.start_ready_nodes();
        self.finish_if_done();
        loop {
            tokio::select! {
                Some(message) = self.from_nodes.recv() => self.on_node_message(message),
                command = inbox.recv() => match command {
                    Some(command) => {
                        let verdict = self.on_command(command.event, &command.actor);
                        // The sender may have gone away; the command was applied (or not) anyway.
                        let _ = command.reply.send(verdict);
                    }
                    None => break,
                },
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                // Storage failed: the room has said so; stop without publishing anything more.
                _ = self.room.halt.cancelled() => break,
            }
            self.finish_if_done();
        }
        self.cancel.cancel();
        self.timers.abort_all();
    }

    // ---- resuming ---------------------------------------------------------------------------

    /// Re-applies the nodes and edges added while the run went on, without announcing them.
    fn replay_graph_changes(&mut self, log: &[ServerEvent]) -> Result<(), String> {
        for event in log {
            let ServerEventBody::DagMutated { mutation } = &event.body else { continue };
            match mutation {
                DagMutation::AddNode { node, after, spec, budget_gate } => {
                    if self.index.contains_key(&node.id) {
                        continue;
                    }
                    let file: NodeFile = spec
                        .clone()
                        .ok_or_else(|| format!("node {:?} was added without its spec", node.id))
                        .and_then(|v| serde_json::from_value(v).map_err(|e| format!("node {:?}: {e}", node.id)))?;
                    let mut added = file.to_spec().map_err(|e| e.to_string())?;
                    let needs = after
                        .iter()
                        .map(|need| self.index.get(need).copied().ok_or_else(|| format!("unknown node {need:?}")))
                        .collect::<Result<Vec<usize>, String>>()?;
                    added.needs = after.clone();
                    self.add_to_graph(added, &needs, *budget_gate);
                }
                DagMutation::AddEdge { from, to } => {
                    let find = |id: &str| self.index.get(id).copied().ok_or_else(|| format!("unknown node {id:?}"));
                    let (from_node, to_node) = (find(from)?, find(to)?);
                    self.scheduler.add_edge(from_node, to_node);
                    self.nodes[to_node].needs.push(from.clone());
                }
                // The engine never removes or relabels nodes.
                DagMutation::RemoveNode { .. } | DagMutation::UpdateNode { .. } => {}
            }
        }
        Ok(())
    }

    /// Takes over what the folded log says: statuses, attempts, figures, outputs, decisions,
    /// spend, budget, phase; re-arms the timeouts of waiting gates.
    fn restore(&mut self, state: &RunState) {
        let mut settled = vec![None; self.nodes.len()];
        for (node, spec) in self.nodes.iter().enumerate() {
            let Some(view) = state.nodes.get(&spec.id) else { continue };
            let run = &mut self.runs[node];
            run.attempt = view.metrics.attempt.unwrap_or(0);
            run.cost = view.metrics.cost.unwrap_or(0.0);
            run.tokens_in = view.metrics.tokens_in.unwrap_or(0);
            run.tokens_out = view.metrics.tokens_out.unwrap_or(0);
            settled[node] = match view.status {
                NodeStatus::Completed => {
                    if let Some(output) = &view.output {
                        self.outputs.insert(spec.id.clone(), output.clone());
                    }
                    Some(Slot::Completed)
                }
                NodeStatus::Failed => Some(Slot::Failed),
                NodeStatus::Skipped => Some(Slot::Skipped),
                NodeStatus::Cancelled => Some(Slot::Cancelled),
                NodeStatus::Waiting => Some(Slot::Started),
                NodeStatus::Pending | NodeStatus::Running => None,
            };
        }
        for decision in &state.decisions {
            let Some(&gate) = self.index.get(&decision.node_id) else { continue };
            let record = (decision.decided_by.clone(), decision.decision, decision.decided_at.clone());
            self.runs[gate].last_decision = Some(record);
            if decision.decision == Decision::Modify {
                for need in self.nodes[gate].needs.clone() {
                    if let Some(&upstream) = self.index.get(&need) {
                        self.runs[upstream].feedback.clone_from(&decision.feedback);
                    }
                }
            }
        }
        self.scheduler.restore(&settled);
        self.spent = state.cost.spent;
        self.budget = (state.cost.budget > 0.0).then_some(state.cost.budget);
        self.phase = state.state;
        for (node, slot) in settled.iter().enumerate() {
            if *slot != Some(Slot::Started) {
                continue;
            }
            if self.runs[node].budget_gate {
                self.open_budget_gate = Some(node);
            }
            let timeout_at = state.nodes.get(&self.nodes[node].id).and_then(|v| v.gate.as_ref()?.timeout_at.clone());
            if let Some(at) = timeout_at.and_then(|at| humantime::parse_rfc3339(&at).ok()) {
                let left = at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO);
                self.runs[node].started = Some(Instant::now());
                self.arm_gate_timer(node, left);
            }
        }
    }

    fn arm_gate_timer(&mut self, node: usize, after: Duration) {
        let round = self.runs[node].attempt;
        let to_self = self.to_self.clone();
        self.timers.spawn(async move {
            tokio::time::sleep(after).await;
            let _ = to_self.send(NodeMsg::GateTimedOut { node, round }).await;
        });
    }

    // ---- node messages ----------------------------------------------------------------------

    fn on_node_message(&mut self, message: NodeMsg) {
        match message {
            NodeMsg::AttemptStarted { node, attempt } => {
                self.runs[node].attempt = attempt;
                self.runs[node].started = Some(Instant::now());
                let metrics =
                    NodeMetrics { attempt: Some(attempt), started_at: Some(now_rfc3339()), ..NodeMetrics::default() };
                self.publish_node(node, NodeStatus::Running, None, Some(metrics));
            }
            NodeMsg::Log { node, stream, line } => {
                let node_id = self.nodes[node].id.clone();
                self.room.publish(ServerEventBody::NodeLog { node_id, stream, line });
            }
            NodeMsg::Reports { node, reports } => {
                for report in reports {
                    self.on_report(node, report);
                }
            }
            NodeMsg::BadReport { node, line, problem } => {
                self.publish_error(node, format!("report line {line} ignored: {problem}"));
            }
            NodeMsg::AttemptFailed { node, attempt, message } => {
                self.runs[node].attempt = attempt;
                self.publish_error(node, message);
            }
            NodeMsg::Finished { node, outcome } => {
                if self.scheduler.slot(node) != Some(Slot::Started) {
                    return;
                }
                match outcome {
                    Outcome::Completed { output } => {
                        let output = self.runs[node].output.take().or(output);
                        self.settle(node, NodeStatus::Completed, output);
                    }
                    Outcome::Failed { message } => {
                        self.publish_error(node, message);
                        self.settle(node, NodeStatus::Failed, None);
                    }
                    Outcome::Cancelled => self.settle(node, NodeStatus::Cancelled, None),
                }
                self.start_ready_nodes();
            }
            NodeMsg::GateTimedOut { node, round } => {
                let waiting = self.scheduler.slot(node) == Some(Slot::Started) && self.runs[node].attempt == round;
                if let (true, NodeWork::Gate { on_timeout: Some(decision), .. }) = (waiting, &self.nodes[node].work) {
                    let (decision, id) = (*decision, self.nodes[node].id.clone());
                    // The timeout's own decision is always allowed, offered or not.
                    if let Err(refused) = self.decide(&id, decision, None, "timeout", true) {
                        self.publish_error(node, format!("gate timeout could not apply: {refused}"));
                    }
                }
            }
        }
    }

    fn on_report(&mut self, node: usize, report: Report) {
        match report {
            Report::Cost(cost) => {
                self.runs[node].cost += cost;
                let metrics = NodeMetrics { cost: Some(self.runs[node].cost), ..NodeMetrics::default() };
                self.publish_progress(node, metrics);
                self.spend(cost);
            }
            Report::Tokens { tokens_in, tokens_out } => {
                let run = &mut self.runs[node];
                run.tokens_in += tokens_in;
                run.tokens_out += tokens_out;
                let metrics = NodeMetrics {
                    tokens_in: Some(run.tokens_in),
                    tokens_out: Some(run.tokens_out),
                    ..NodeMetrics::default()
                };
                self.publish_progress(node, metrics);
            }
            Report::Output(output) => self.runs[node].output = Some(output),
            Report::AddNode { node: added, after } => {
                if let Err(problem) = self.add_node(*added, after) {
                    self.publish_error(node, format!("mutation refused: {problem}"));
                }
            }
            Report::AddEdge { from, to } => {
                if let Err(problem) = self.add_edge(&from, &to) {
                    self.publish_error(node, format!("mutation refused: {problem}"));
                }
            }
        }
        self.start_ready_nodes();
    }

    // ---- commands ---------------------------------------------------------------------------

    fn on_command(&mut self, event: ClientEvent, actor: &str) -> Result<(), Rejected> {
        match (event, self.phase) {
            (_, RunPhase::Cancelled | RunPhase::Completed | RunPhase::Failed) => Err(Rejected::Finished(self.phase)),
            (_, RunPhase::Cancelling) => Err(Rejected::Cancelling),
            (ClientEvent::HumanDecision { node_id, decision, feedback }, RunPhase::Running | RunPhase::Paused) => {
                self.decide(&node_id, decision, feedback, actor, false)
            }
            (ClientEvent::PauseExecution, RunPhase::Running) => {
                self.set_phase(RunPhase::Paused);
                Ok(())
            }
            (ClientEvent::PauseExecution, RunPhase::Paused) => Err(Rejected::AlreadyPaused),
            (ClientEvent::ResumeExecution, RunPhase::Paused) => {
                self.set_phase(RunPhase::Running);
                self.start_ready_nodes();
                Ok(())
            }
            (ClientEvent::ResumeExecution, RunPhase::Running) => Err(Rejected::NotPaused),
            (ClientEvent::CancelExecution, RunPhase::Running | RunPhase::Paused) => {
                self.cancel_run();
                Ok(())
            }
        }
    }

    /// Applies a decision to a waiting gate. `any_option` lets a timeout decide even what the
    /// card does not offer.
    fn decide(
        &mut self,
        node_id: &str,
        decision: Decision,
        feedback: Option<String>,
        actor: &str,
        any_option: bool,
    ) -> Result<(), Rejected> {
        let node = self.index.get(node_id).copied().ok_or_else(|| Rejected::UnknownNode(node_id.to_owned()))?;
        let NodeWork::Gate { options, .. } = &self.nodes[node].work else {
            return Err(Rejected::GateNotWaiting(node_id.to_owned()));
        };
        if self.scheduler.slot(node) != Some(Slot::Started) {
            return Err(match &self.runs[node].last_decision {
                Some((by, decision, at)) => Rejected::AlreadyDecided {
                    node: node_id.to_owned(),
                    by: by.clone(),
                    decision: *decision,
                    at: at.clone(),
                },
                None => Rejected::GateNotWaiting(node_id.to_owned()),
            });
        }
        if !any_option && !options.contains(&decision) {
            return Err(Rejected::NotOffered { node: node_id.to_owned(), decision });
        }
        let feedback = feedback.filter(|f| !f.trim().is_empty());
        let upstream: Vec<usize> =
            self.nodes[node].needs.iter().filter_map(|need| self.index.get(need).copied()).collect();
        if decision == Decision::Modify {
            if feedback.is_none() {
                return Err(Rejected::ModifyWithoutFeedback);
            }
            if upstream.is_empty() {
                return Err(Rejected::NothingToRedo(node_id.to_owned()));
            }
        }
        let decided_at = now_rfc3339();
        self.runs[node].last_decision = Some((actor.to_owned(), decision, decided_at.clone()));
        self.room.publish(ServerEventBody::GateResolved {
            node_id: node_id.to_owned(),
            decision,
            feedback: feedback.clone(),
            decided_by: actor.to_owned(),
            decided_at,
        });
        let mut output = json!({ "decision": decision.as_str(), "decided_by": actor });
        if let Some(feedback) = &feedback {
            output["feedback"] = Value::String(feedback.clone());
        }
        let budget_gate = self.runs[node].budget_gate;
        match decision {
            Decision::Approve => {
                if budget_gate {
                    self.open_budget_gate = None;
                    self.budget = self.budget.map(|b| b + self.budget_step);
                    self.publish_cost();
                }
                self.settle(node, NodeStatus::Completed, Some(output));
                self.check_budget();
            }
            Decision::Reject if budget_gate => {
                // Not a failure of the work: the run stops, so everything left is cancelled.
                self.open_budget_gate = None;
                self.cancel_run();
                return Ok(());
            }
            Decision::Reject => self.settle(node, NodeStatus::Failed, Some(output)),
            Decision::Modify => {
                self.scheduler.rerun_before(&upstream, node);
                let round = self.runs[node].attempt;
                self.publish_node(
                    node,
                    NodeStatus::Pending,
                    None,
                    Some(NodeMetrics { attempt: Some(round), ..Default::default() }),
                );
                for &u in &upstream {
                    self.runs[u].feedback = feedback.clone();
                    self.outputs.remove(&self.nodes[u].id);
                    self.publish_node(u, NodeStatus::Pending, None, None);
                }
            }
        }
        self.start_ready_nodes();
        Ok(())
    }

    fn cancel_run(&mut self) {
        self.set_phase(RunPhase::Cancelling);
        self.cancel.cancel();
        self.timers.abort_all();
        for node in self.scheduler.cancel_unstarted() {
            self.publish_node(node, NodeStatus::Cancelled, None, None);
        }
        for node in self.scheduler.started() {
            // Work nodes report their end through their task; gates just stop waiting.
            if self.nodes[node].is_gate() {
                self.scheduler.cancel_started(node);
                self.publish_node(node, NodeStatus::Cancelled, None, None);
            }
        }
    }

    // ---- scheduling -------------------------------------------------------------------------

    fn start_ready_nodes(&mut self) {
        if self.phase != RunPhase::Running {
            return;
        }
        for node in self.scheduler.take_startable() {
            self.start(node);
        }
    }

    fn start(&mut self, node: usize) {
        let spec = &self.nodes[node];
        for need in &spec.needs {
            self.room.publish(ServerEventBody::EdgeActive { from: need.clone(), to: spec.id.clone() });
        }
        // Simulated work reads no inputs; commands and gate cards do.
        let inputs: Map<String, Value> = match spec.work {
            NodeWork::Simulate { .. } => Map::new(),
            NodeWork::Command { .. } | NodeWork::Gate { .. } => {
                spec.needs.iter().filter_map(|need| self.outputs.get(need).map(|o| (need.clone(), o.clone()))).collect()
            }
        };
        match &spec.work {
            NodeWork::Gate { title, prompt, options, .. } => {
                let run = &mut self.runs[node];
                run.attempt += 1;
                run.started = Some(Instant::now());
                let round = run.attempt;
                let context = if run.budget_gate {
                    Some(json!({ "spent": self.spent, "budget": self.budget, "budget_step": self.budget_step }))
                } else {
                    (!inputs.is_empty()).then_some(Value::Object(inputs))
                };
                let timeout = spec.timeout;
                let presentation = GatePresentation {
                    title: title.clone(),
                    prompt: prompt.clone(),
                    options: options.clone(),
                    context,
                    cost_so_far: Some(self.spent),
                    timeout_at: timeout
                        .map(|t| humantime::format_rfc3339_millis(std::time::SystemTime::now() + t).to_string()),
                };
                let metrics =
                    NodeMetrics { attempt: Some(round), started_at: Some(now_rfc3339()), ..Default::default() };
                self.publish_node(node, NodeStatus::Waiting, None, Some(metrics));
                let node_id = spec.id.clone();
                self.room.publish(ServerEventBody::HumanGateWaiting { node_id, presentation });
                if let Some(timeout) = timeout {
                    self.arm_gate_timer(node, timeout);
                }
            }
            NodeWork::Simulate { .. } | NodeWork::Command { .. } => {
                let run = &mut self.runs[node];
                let job = NodeJob {
                    node,
                    id: spec.id.clone(),
                    work: spec.work.clone(),
                    timeout: spec.timeout,
                    retries: spec.retries,
                    first_attempt: run.attempt + 1,
                    inputs,
                    feedback: run.feedback.clone(),
                    workdir: self.workdir.clone(),
                    cancel_grace: self.cancel_grace,
                };
                self.tasks.spawn(node::run(job, self.to_self.clone(), self.cancel.child_token()));
            }
        }
    }

    /// Records the end of a started node: its final `node_state`, then what follows from it in
    /// the schedule (skips after a failure).
    fn settle(&mut self, node: usize, status: NodeStatus, output: Option<Value>) {
        let run = &self.runs[node];
        let duration_ms = run.started.map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        let is_gate = self.nodes[node].is_gate();
        let metrics = NodeMetrics {
            duration_ms,
            finished_at: Some(now_rfc3339()),
            cost: (!is_gate).then_some(run.cost),
            tokens_in: (run.tokens_in > 0).then_some(run.tokens_in),
            tokens_out: (run.tokens_out > 0).then_some(run.tokens_out),
            attempt: Some(run.attempt),
            started_at: None,
        };
        if let (NodeStatus::Completed, Some(output)) = (status, &output) {
            self.outputs.insert(self.nodes[node].id.clone(), output.clone());
        }
        self.publish_node(node, status, output, Some(metrics));
        match status {
            NodeStatus::Completed => {
                self.scheduler.complete(node);
            }
            NodeStatus::Failed => {
                for skipped in self.scheduler.fail(node) {
                    self.publish_node(skipped, NodeStatus::Skipped, None, None);
                }
            }
            NodeStatus::Cancelled => self.scheduler.cancel_started(node),
            NodeStatus::Pending | NodeStatus::Running | NodeStatus::Waiting | NodeStatus::Skipped => {}
        }
    }

    /// Ends the run once every node is settled: final run state, then `execution_complete`.
    fn finish_if_done(&mut self) {
        if self.phase.is_terminal() || !self.scheduler.is_finished() {
            return;
        }
        let phase = match self.phase {
            RunPhase::Cancelling => RunPhase::Cancelled,
            RunPhase::Running | RunPhase::Paused if self.scheduler.any_failed() => RunPhase::Failed,
            RunPhase::Running | RunPhase::Paused | RunPhase::Cancelled | RunPhase::Completed | RunPhase::Failed => {
                RunPhase::Completed
            }
        };
        self.set_phase(phase);
        self.timers.abort_all();
        self.room.publish(ServerEventBody::ExecutionComplete { results: std::mem::take(&mut self.outputs) });
    }

    // ---- budget -----------------------------------------------------------------------------

    fn spend(&mut self, amount: f64) {
        if amount == 0.0 {
            return;
        }
        self.spent += amount;
        self.publish_cost();
        self.check_budget();
    }

    /// When spend has reached the budget: a budget gate that every unstarted node waits for.
    fn check_budget(&mut self) {
        let Some(budget) = self.budget else { return };
        if self.spent < budget || self.open_budget_gate.is_some() || self.phase.is_terminal() {
            return;
        }
        if self.phase == RunPhase::Cancelling {
            return;
        }
        let unstarted: Vec<usize> = (0..self.scheduler.len())
            .filter(|&n| matches!(self.scheduler.slot(n), Some(Slot::Blocked | Slot::Ready)))
            .collect();
        if unstarted.is_empty() {
            return;
        }
        let mut number = 1;
        while self.index.contains_key(&format!("budget_{number}")) {
            number += 1;
        }
        let step = self.budget_step;
        let gate = NodeSpec {
            id: format!("budget_{number}"),
            label: Some("Budget reached".into()),
            needs: Vec::new(),
            timeout: None,
            retries: 0,
            work: NodeWork::Gate {
                title: "Budget reached: continue?".into(),
                prompt: format!(
                    "Spent ${:.2} of the ${budget:.2} budget. Approving adds ${step:.2} (new budget ${:.2}); \
                     rejecting cancels the run.",
                    self.spent,
                    budget + step
                ),
                options: vec![Decision::Approve, Decision::Reject],
                on_timeout: None,
            },
        };
        let gate = self.insert_node(gate, &[], true);
        self.open_budget_gate = Some(gate);
        for node in unstarted {
            self.link(gate, node);
        }
        self.start_ready_nodes();
    }

    // ---- mutation ---------------------------------------------------------------------------

    /// Adds a node reported by a running node, after `after` (and its own `needs`).
    fn add_node(&mut self, file: NodeFile, after: Vec<String>) -> Result<(), String> {
        if self.phase.is_terminal() || self.phase == RunPhase::Cancelling {
            return Err("the run is ending".into());
        }
        if !is_valid_id(&file.id) {
            return Err(format!("{:?} is not a valid node id", file.id));
        }
        if self.index.contains_key(&file.id) {
            return Err(format!("a node {:?} already exists", file.id));
        }
        let mut spec = file.to_spec().map_err(|e| e.to_string())?;
        let mut needs = after;
        for need in std::mem::take(&mut spec.needs) {
            if !needs.contains(&need) {
                needs.push(need);
            }
        }
        let need_indices = needs
            .iter()
            .map(|need| self.index.get(need).copied().ok_or_else(|| format!("{need:?} is not a node of this run")))
            .collect::<Result<Vec<usize>, String>>()?;
        spec.needs = needs;
        self.insert_node(spec, &need_indices, false);
        Ok(())
    }

    /// Adds the edge `from → to`, if `to` has not started and no cycle follows.
    fn add_edge(&mut self, from: &str, to: &str) -> Result<(), String> {
        let find = |id: &str| self.index.get(id).copied().ok_or_else(|| format!("{id:?} is not a node of this run"));
        let (from_node, to_node) = (find(from)?, find(to)?);
        self.scheduler
            .check_edge(from_node, to_node)
            .map_err(|refusal| format!("edge {from:?} → {to:?}: {refusal}"))?;
        self.link(from_node, to_node);
        Ok(())
    }

    /// Appends a node to the run and announces it (with its spec, so a restart can run it);
    /// answers its index.
    fn insert_node(&mut self, spec: NodeSpec, needs: &[usize], budget_gate: bool) -> usize {
        let mutation = DagMutation::AddNode {
            node: spec.graph_node(),
            after: spec.needs.clone(),
            spec: serde_json::to_value(spec.to_file()).ok(),
            budget_gate,
        };
        let node = self.add_to_graph(spec, needs, budget_gate);
        self.room.publish(ServerEventBody::DagMutated { mutation });
        node
    }

    /// Appends a node to the graph and the schedule, without announcing it.
    fn add_to_graph(&mut self, spec: NodeSpec, needs: &[usize], budget_gate: bool) -> usize {
        let node = self.scheduler.add_node(needs, !spec.is_gate());
        self.index.insert(spec.id.clone(), node);
        self.nodes.push(spec);
        self.runs.push(NodeRun { budget_gate, ..NodeRun::default() });
        node
    }

    /// Adds and announces the edge `from → to` (already checked).
    fn link(&mut self, from: usize, to: usize) {
        self.scheduler.add_edge(from, to);
        let (from_id, to_id) = (self.nodes[from].id.clone(), self.nodes[to].id.clone());
        self.nodes[to].needs.push(from_id.clone());
        self.room.publish(ServerEventBody::DagMutated { mutation: DagMutation::AddEdge { from: from_id, to: to_id } });
    }

    // ---- publishing -------------------------------------------------------------------------

    fn set_phase(&mut self, phase: RunPhase) {
        self.phase = phase;
        self.room.publish(ServerEventBody::RunStateChanged { state: phase });
    }

    fn publish_node(&self, node: usize, status: NodeStatus, output: Option<Value>, metrics: Option<NodeMetrics>) {
        let node_id = self.nodes[node].id.clone();
        self.room.publish(ServerEventBody::NodeState { node_id, status, output, metrics });
    }

    /// A figure changed while the node runs: same status, new metrics.
    fn publish_progress(&self, node: usize, metrics: NodeMetrics) {
        if self.scheduler.slot(node) == Some(Slot::Started) {
            self.publish_node(node, NodeStatus::Running, None, Some(metrics));
        }
    }

    fn publish_error(&self, node: usize, message: String) {
        let node_id = Some(self.nodes[node].id.clone());
        self.room.publish(ServerEventBody::Error { node_id, message });
    }

    fn publish_cost(&self) {
        let budget = self.budget.unwrap_or(0.0);
        let remaining = if self.budget.is_some() { budget - self.spent } else { 0.0 };
        self.room.publish(ServerEventBody::CostUpdate { spent: self.spent, budget, remaining });
    }
}
