//! The coordinator of one run: the single task that owns the run's state (schedule, spend,
//! gates, the graph as mutated), starts node tasks, takes their messages and the commands of
//! clients, and publishes every change to the run's room.
//!
//! This file holds the task and its state; its work is split by concern: [`resume`] (after a
//! restart), [`node_messages`] (what node tasks report), [`commands`] (client commands, gate
//! decisions), [`scheduling`] (starting, settling, ending), [`budget`], [`mutation`] (the graph
//! growing), [`repair`] (retry, re-run), [`publish`] (events to the room) and [`trace`] (the
//! run's spans). What the rules say (which command in which
//! phase, what a decision does, when a budget gate opens) is decided by the pure functions of
//! [`super::policy`]; these files apply it.

mod budget;
mod commands;
mod mutation;
mod node_messages;
mod publish;
mod repair;
mod resume;
mod scheduling;
mod trace;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::node::NodeMsg;
use super::policy::Rejected;
use super::schedule::Scheduler;
use super::spec::{DagSpec, NodeSpec};
use crate::hub::Room;
use crate::protocol::{ClientEvent, Decision, RunPhase, RunState, ServerEvent, ServerEventBody};

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
    /// Remote workers for command nodes with a `pool` (a cluster's); `None`: such specs are
    /// refused.
    pub workers: Option<super::remote::WorkerPools>,
}

impl EngineConfig {
    /// `work_root` is made absolute: commands run inside it and get paths under it.
    pub fn new(work_root: impl Into<PathBuf>) -> Self {
        let work_root = work_root.into();
        let work_root = std::path::absolute(&work_root).unwrap_or(work_root);
        EngineConfig { work_root, cancel_grace: Duration::from_secs(5), allow_commands: true, workers: None }
    }
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
    coordinator.replay_escalations(log);
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
    /// A decision on this gate the store is recording; the gate takes no other meanwhile.
    claiming: Option<PendingDecision>,
    /// Who approved this gate in its current wait, when it needs several approvals.
    approved_by: Vec<String>,
    /// Whether this wait was escalated: its `escalate_to` may decide too.
    escalated: bool,
}

/// A decision judged and waiting for the store to record it as its gate round's one decision.
#[derive(Clone, Debug)]
struct PendingDecision {
    decision: Decision,
    feedback: Option<String>,
    decided_by: String,
    decided_at: String,
    /// The values of the gate's form, checked.
    inputs: Option<serde_json::Map<String, Value>>,
    /// What the decision does, as the rule judged it.
    outcome: crate::engine::policy::GateOutcome,
}

impl PendingDecision {
    /// The decision as the store records it, for gate `node_id`'s wait `round`.
    fn row(&self, node_id: &str, round: u32) -> crate::store::DecisionRow {
        crate::store::DecisionRow {
            node_id: node_id.to_owned(),
            round: i64::from(round),
            decision: self.decision.as_str().to_owned(),
            feedback: self.feedback.clone(),
            decided_by: self.decided_by.clone(),
            decided_at: self.decided_at.clone(),
            inputs: self.inputs.as_ref().map(|inputs| Value::Object(inputs.clone()).to_string()),
        }
    }
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
    /// Gate timeout timers and decisions being recorded; aborted when the run ends.
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
    /// Where pool nodes run.
    workers: Option<super::remote::WorkerPools>,
    /// Who started the run: refused as an approver of gates that forbid self-approval.
    started_by: Option<String>,
    /// What nodes cost in past runs of this spec, for gate forecasts.
    history: super::forecast::CostHistory,
    /// The run's spans: the run, each node attempt, each gate wait.
    traces: trace::Traces,
}

impl Coordinator {
    fn new(dag_id: &str, spec: DagSpec, room: Arc<Room>, config: &EngineConfig) -> Self {
        let index: HashMap<String, usize> = spec.nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        let needs: Vec<Vec<usize>> =
            spec.nodes.iter().map(|n| n.needs.iter().filter_map(|need| index.get(need).copied()).collect()).collect();
        let takes_capacity: Vec<bool> = spec.nodes.iter().map(|n| !n.is_gate()).collect();
        let scheduler = Scheduler::new(&needs, &takes_capacity, spec.max_parallel);
        let (to_self, from_nodes) = mpsc::channel(NODE_QUEUE);
        let traces = trace::Traces::new(dag_id, &spec.name, &room);
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
            workers: config.workers.clone(),
            started_by: spec.started_by,
            history: spec.history,
            traces,
        }
    }

    async fn drive(mut self, mut inbox: mpsc::Receiver<Command>, resumed: bool) {
        let halt = self.room.halt();
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
                Some(message) = next_node_message(&self.room, &mut self.from_nodes) => {
                    // What is logged while the run handles it is logged in the run's span.
                    let run = self.traces.run();
                    let _in_run = run.enter();
                    self.on_node_message(message);
                }
                command = inbox.recv() => match command {
                    Some(command) => {
                        let run = self.traces.run();
                        let _in_run = run.enter();
                        let verdict = self.on_command(command.event, &command.actor);
                        // The sender may have gone away; the command was applied (or not) anyway.
                        let _ = command.reply.send(verdict);
                    }
                    None => break,
                },
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                // Storage failed (the room has said so) or the lease was lost: stop without
                // publishing anything more.
                _ = halt.cancelled() => break,
            }
            self.finish_if_done();
        }
        self.cancel.cancel();
        self.timers.abort_all();
    }
}

/// The next message of the run's node tasks, once its events can be stored: while the writer's
/// queue is full (the disk is behind), node messages wait, and so do the node tasks.
async fn next_node_message(room: &Room, from_nodes: &mut mpsc::Receiver<NodeMsg>) -> Option<NodeMsg> {
    room.ready().await;
    from_nodes.recv().await
}
