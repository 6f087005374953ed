//! Command attempts that run on a remote worker of a pool (a node with `pool = "NAME"`), and
//! the messages owner and worker exchange about them. The engine only knows the [`Workers`]
//! trait; `crate::jobs` carries jobs and their updates over NATS JetStream, and runs them on
//! the worker's side with the same [`super::process`] a local command uses.
//!
//! A remote attempt reports exactly what a local one does (log lines, report lines, how it
//! ended), so the coordinator cannot tell them apart; a job that went to a second worker (the
//! first stopped answering) shows as the node's next attempt.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::node::{AttemptError, NodeMsg};
use super::process::Report;
use crate::protocol::LogStream;

/// One attempt of a command node, as a worker receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteJob {
    /// Names the job's updates and its cancellation: unique per attempt.
    pub job_id: String,
    pub dag_id: String,
    pub node_id: String,
    /// The attempt as the owner counts it; a redelivery to another worker adds one.
    pub attempt: u32,
    pub run: String,
    pub env: BTreeMap<String, String>,
    /// Outputs of the upstream nodes, by id, for `DAGSTREAM_INPUTS`.
    pub inputs: Map<String, Value>,
    pub feedback: Option<String>,
    pub timeout_ms: Option<u64>,
    pub cancel_grace_ms: u64,
    /// The run's OpenTelemetry trace id, when its owner exports traces: the worker's lines
    /// about the job carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// What a worker says about a job it runs. `delivery` counts the job's deliveries (1 for the
/// first worker to take it): the owner follows only the newest delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobUpdate {
    pub delivery: u64,
    /// The worker that sent it (`dagstream worker --id`).
    pub worker: String,
    pub body: JobUpdateBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobUpdateBody {
    /// The worker started the command.
    Started,
    Log {
        stream: LogStream,
        line: String,
    },
    Reports {
        reports: Vec<Report>,
    },
    BadReport {
        line: usize,
        problem: String,
    },
    /// The command ended: `failure` says why it did not complete.
    Finished {
        failure: Option<String>,
    },
}

impl JobUpdateBody {
    /// The update a worker sends for what a local attempt tells its coordinator; `None` for
    /// messages that are not an attempt's own.
    pub fn from_node_msg(message: NodeMsg) -> Option<JobUpdateBody> {
        match message {
            NodeMsg::Log { stream, line, .. } => Some(JobUpdateBody::Log { stream, line }),
            NodeMsg::Reports { reports, .. } => Some(JobUpdateBody::Reports { reports }),
            NodeMsg::BadReport { line, problem, .. } => Some(JobUpdateBody::BadReport { line, problem }),
            NodeMsg::AttemptStarted { .. }
            | NodeMsg::AttemptFailed { .. }
            | NodeMsg::Finished { .. }
            | NodeMsg::GateTimedOut { .. }
            | NodeMsg::GateNudge { .. }
            | NodeMsg::DecisionClaimed { .. } => None,
        }
    }
}

/// Where command attempts of pool nodes run.
pub trait Workers: Send + Sync + 'static {
    /// Runs `job` on a worker of `pool` until it ends. Sends the attempt's logs and reports to
    /// `events` as node `node`'s, like a local attempt; when the job goes to another worker,
    /// says so (the attempt failed, the next one started) and counts `attempt` up. Cancelling
    /// `cancel` stops the command on the worker.
    fn run<'a>(
        &'a self,
        pool: &'a str,
        job: RemoteJob,
        node: usize,
        attempt: &'a mut u32,
        events: &'a mpsc::Sender<NodeMsg>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(), AttemptError>>;
}

/// The workers of a cluster, as the engine's configuration holds them.
#[derive(Clone)]
pub struct WorkerPools(pub Arc<dyn Workers>);

impl fmt::Debug for WorkerPools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkerPools")
    }
}
