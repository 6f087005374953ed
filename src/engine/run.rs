//! The coordinator of one run: the single task that owns the run's scheduling state, starts
//! node tasks, takes their reports and the commands of clients, and publishes every change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::now_rfc3339;
use super::schedule::{Scheduler, Slot};
use super::spec::{DagSpec, NodeWork};
use crate::hub::Room;
use crate::protocol::{ClientEvent, Decision, GatePresentation, NodeMetrics, NodeStatus, RunPhase, ServerEventBody};

/// How many client commands may wait for the coordinator before senders wait too.
const COMMAND_QUEUE: usize = 64;

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
    #[error("gate {node:?} does not offer {}", .decision.as_str())]
    NotOffered { node: String, decision: Decision },
    #[error("modify is not supported by this engine yet")]
    ModifyUnsupported,
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
pub fn spawn(spec: DagSpec, room: Arc<Room>) -> RunHandle {
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let coordinator = Coordinator::new(spec, room);
    tokio::spawn(coordinator.drive(inbox));
    RunHandle { commands }
}

/// What a node task reports when it ends.
struct NodeReport {
    node: usize,
    output: Value,
    cost: f64,
}

struct Coordinator {
    spec: DagSpec,
    /// Where every change of the run is published.
    room: Arc<Room>,
    scheduler: Scheduler,
    phase: RunPhase,
    /// Total spend so far; every completed node adds its cost.
    spent: f64,
    /// Running node tasks; aborted all at once on cancel.
    tasks: JoinSet<NodeReport>,
    /// When each started node started, for `duration_ms`.
    started: Vec<Option<Instant>>,
    /// Outputs of completed nodes, by id: the results of `execution_complete`.
    outputs: Map<String, Value>,
    /// Node index by id, for commands that name a node.
    index: HashMap<String, usize>,
}

impl Coordinator {
    fn new(spec: DagSpec, room: Arc<Room>) -> Self {
        let index: HashMap<String, usize> = spec.nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        let needs: Vec<Vec<usize>> =
            spec.nodes.iter().map(|n| n.needs.iter().filter_map(|need| index.get(need).copied()).collect()).collect();
        let takes_capacity: Vec<bool> = spec.nodes.iter().map(|n| !matches!(n.work, NodeWork::Gate { .. })).collect();
        let scheduler = Scheduler::new(&needs, &takes_capacity, spec.max_parallel);
        let started = vec![None; spec.nodes.len()];
        Coordinator {
            spec,
            room,
            scheduler,
            phase: RunPhase::Running,
            spent: 0.0,
            tasks: JoinSet::new(),
            started,
            outputs: Map::new(),
            index,
        }
    }

    async fn drive(mut self, mut inbox: mpsc::Receiver<Command>) {
        self.room.publish(ServerEventBody::RunStateChanged { state: RunPhase::Running });
        self.publish_cost();
        self.start_ready_nodes();
        self.finish_if_done();
        loop {
            tokio::select! {
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    // An aborted task (cancel) has nothing to report; its node was settled then.
                    if let Ok(report) = joined {
                        self.on_node_finished(report);
                    }
                }
                command = inbox.recv() => match command {
                    Some(command) => {
                        let verdict = self.on_command(command.event, &command.actor);
                        // The sender may have gone away; the command was applied (or not) anyway.
                        let _ = command.reply.send(verdict);
                    }
                    None => break,
                },
            }
            self.finish_if_done();
        }
        self.tasks.abort_all();
    }

    fn on_command(&mut self, event: ClientEvent, actor: &str) -> Result<(), Rejected> {
        if self.phase.is_terminal() {
            return Err(Rejected::Finished(self.phase));
        }
        match event {
            ClientEvent::HumanDecision { node_id, decision, feedback } => {
                self.decide(&node_id, decision, feedback, actor)
            }
            ClientEvent::PauseExecution => match self.phase {
                RunPhase::Running => {
                    self.set_phase(RunPhase::Paused);
                    Ok(())
                }
                RunPhase::Paused => Err(Rejected::AlreadyPaused),
                RunPhase::Cancelling => Err(Rejected::Cancelling),
                RunPhase::Cancelled | RunPhase::Completed | RunPhase::Failed => Err(Rejected::Finished(self.phase)),
            },
            ClientEvent::ResumeExecution => match self.phase {
                RunPhase::Paused => {
                    self.set_phase(RunPhase::Running);
                    self.start_ready_nodes();
                    Ok(())
                }
                RunPhase::Running => Err(Rejected::NotPaused),
                RunPhase::Cancelling => Err(Rejected::Cancelling),
                RunPhase::Cancelled | RunPhase::Completed | RunPhase::Failed => Err(Rejected::Finished(self.phase)),
            },
            ClientEvent::CancelExecution => match self.phase {
                RunPhase::Running | RunPhase::Paused => {
                    self.cancel();
                    Ok(())
                }
                RunPhase::Cancelling => Err(Rejected::Cancelling),
                RunPhase::Cancelled | RunPhase::Completed | RunPhase::Failed => Err(Rejected::Finished(self.phase)),
            },
        }
    }

    fn decide(
        &mut self,
        node_id: &str,
        decision: Decision,
        feedback: Option<String>,
        actor: &str,
    ) -> Result<(), Rejected> {
        let node = self.index_of(node_id).ok_or_else(|| Rejected::UnknownNode(node_id.to_owned()))?;
        let NodeWork::Gate { options, .. } = &self.spec.nodes[node].work else {
            return Err(Rejected::GateNotWaiting(node_id.to_owned()));
        };
        if self.scheduler.slot(node) != Some(Slot::Started) {
            return Err(Rejected::GateNotWaiting(node_id.to_owned()));
        }
        if !options.contains(&decision) {
            return Err(Rejected::NotOffered { node: node_id.to_owned(), decision });
        }
        let outcome = match decision {
            Decision::Approve => NodeStatus::Completed,
            Decision::Reject => NodeStatus::Failed,
            Decision::Modify => return Err(Rejected::ModifyUnsupported),
        };
        self.room.publish(ServerEventBody::GateResolved {
            node_id: node_id.to_owned(),
            decision,
            feedback: feedback.clone(),
            decided_by: actor.to_owned(),
            decided_at: now_rfc3339(),
        });
        let mut output = json!({ "decision": decision.as_str(), "decided_by": actor });
        if let Some(feedback) = feedback {
            output["feedback"] = Value::String(feedback);
        }
        self.settle(node, outcome, Some(output), 0.0);
        self.start_ready_nodes();
        Ok(())
    }

    fn on_node_finished(&mut self, report: NodeReport) {
        if self.scheduler.slot(report.node) != Some(Slot::Started) {
            return;
        }
        self.settle(report.node, NodeStatus::Completed, Some(report.output), report.cost);
        self.start_ready_nodes();
    }

    /// Records the end of a started node: its final `node_state`, spend, and what follows from
    /// it in the schedule (skips after a failure).
    fn settle(&mut self, node: usize, status: NodeStatus, output: Option<Value>, cost: f64) {
        let duration_ms = self.started[node].map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        let id = self.spec.nodes[node].id.clone();
        let mut metrics = NodeMetrics { duration_ms, finished_at: Some(now_rfc3339()), ..NodeMetrics::default() };
        if matches!(self.spec.nodes[node].work, NodeWork::Simulate { .. }) {
            metrics.cost = Some(cost);
        }
        if let (NodeStatus::Completed, Some(output)) = (status, &output) {
            self.outputs.insert(id.clone(), output.clone());
        }
        self.room.publish(ServerEventBody::NodeState { node_id: id, status, output, metrics: Some(metrics) });
        match status {
            NodeStatus::Completed => {
                self.scheduler.complete(node);
            }
            NodeStatus::Failed => {
                for skipped in self.scheduler.fail(node) {
                    self.publish_status(skipped, NodeStatus::Skipped);
                }
            }
            NodeStatus::Cancelled => self.scheduler.cancel_started(node),
            NodeStatus::Pending | NodeStatus::Running | NodeStatus::Waiting | NodeStatus::Skipped => {}
        }
        if cost > 0.0 {
            self.spent += cost;
            self.publish_cost();
        }
    }

    fn start_ready_nodes(&mut self) {
        if self.phase != RunPhase::Running {
            return;
        }
        for node in self.scheduler.take_startable() {
            self.start(node);
        }
    }

    fn start(&mut self, node: usize) {
        self.started[node] = Some(Instant::now());
        let spec = &self.spec.nodes[node];
        for need in &spec.needs {
            self.room.publish(ServerEventBody::EdgeActive { from: need.clone(), to: spec.id.clone() });
        }
        let metrics = NodeMetrics { attempt: Some(1), started_at: Some(now_rfc3339()), ..NodeMetrics::default() };
        match &spec.work {
            NodeWork::Simulate { duration, cost } => {
                let (duration, cost) = (*duration, *cost);
                let output = json!({ "summary": format!("{} finished", spec.graph_node().label) });
                self.room.publish(ServerEventBody::NodeState {
                    node_id: spec.id.clone(),
                    status: NodeStatus::Running,
                    output: None,
                    metrics: Some(metrics),
                });
                self.tasks.spawn(async move {
                    tokio::time::sleep(duration).await;
                    NodeReport { node, output, cost }
                });
            }
            NodeWork::Gate { title, prompt, options } => {
                let presentation = GatePresentation {
                    title: title.clone(),
                    prompt: prompt.clone(),
                    options: options.clone(),
                    context: None,
                    cost_so_far: Some(self.spent),
                    timeout_at: None,
                };
                self.room.publish(ServerEventBody::NodeState {
                    node_id: spec.id.clone(),
                    status: NodeStatus::Waiting,
                    output: None,
                    metrics: Some(metrics),
                });
                self.room.publish(ServerEventBody::HumanGateWaiting { node_id: spec.id.clone(), presentation });
            }
        }
    }

    fn cancel(&mut self) {
        self.set_phase(RunPhase::Cancelling);
        self.tasks.abort_all();
        for node in self.scheduler.started() {
            self.scheduler.cancel_started(node);
            self.publish_status(node, NodeStatus::Cancelled);
        }
        for node in self.scheduler.cancel_unstarted() {
            self.publish_status(node, NodeStatus::Cancelled);
        }
        self.set_phase(RunPhase::Cancelled);
        self.publish_complete();
    }

    /// Ends the run once every node is settled: final run state, then `execution_complete`.
    fn finish_if_done(&mut self) {
        if self.phase.is_terminal() || !self.scheduler.is_finished() {
            return;
        }
        let phase = if self.scheduler.any_failed() { RunPhase::Failed } else { RunPhase::Completed };
        self.set_phase(phase);
        self.publish_complete();
    }

    fn set_phase(&mut self, phase: RunPhase) {
        self.phase = phase;
        self.room.publish(ServerEventBody::RunStateChanged { state: phase });
    }

    fn publish_complete(&mut self) {
        self.room.publish(ServerEventBody::ExecutionComplete { results: std::mem::take(&mut self.outputs) });
    }

    fn publish_status(&self, node: usize, status: NodeStatus) {
        self.room.publish(ServerEventBody::NodeState {
            node_id: self.spec.nodes[node].id.clone(),
            status,
            output: None,
            metrics: None,
        });
    }

    fn publish_cost(&self) {
        let budget = self.spec.budget;
        self.room.publish(ServerEventBody::CostUpdate { spent: self.spent, budget, remaining: budget - self.spent });
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }
}
