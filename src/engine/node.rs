//! The task that runs one node's attempts (simulate or command) with retries and backoff, and
//! the typed messages it sends back to the run's coordinator.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::process::{self, CommandAttempt, Report};
use super::remote::{RemoteJob, WorkerPools};
use super::spec::NodeWork;
use crate::protocol::LogStream;

/// What a node task tells the coordinator. `node` is the node's index in the run.
#[derive(Debug)]
pub enum NodeMsg {
    /// Attempt `attempt` (from 1) started.
    AttemptStarted {
        node: usize,
        attempt: u32,
    },
    Log {
        node: usize,
        stream: LogStream,
        line: String,
    },
    /// What one report line (or a simulated attempt) says.
    Reports {
        node: usize,
        reports: Vec<Report>,
    },
    /// A report line that could not be read; it is otherwise ignored.
    BadReport {
        node: usize,
        line: usize,
        problem: String,
    },
    /// An attempt failed and another follows after a backoff.
    AttemptFailed {
        node: usize,
        attempt: u32,
        message: String,
    },
    /// The node is done, one way or another.
    Finished {
        node: usize,
        outcome: Outcome,
    },
    /// A gate's timeout passed; `round` tells which wait of the gate it was for.
    GateTimedOut {
        node: usize,
        round: u32,
    },
    /// A gate's `remind_every` (or, with `escalate`, its `escalate_after`) passed in wait
    /// `round`.
    GateNudge {
        node: usize,
        round: u32,
        escalate: bool,
    },
    /// The store answered the claim of a decision on gate `node`'s wait `round`.
    DecisionClaimed {
        node: usize,
        round: u32,
        result: Result<crate::store::Claim, crate::store::StoreError>,
    },
}

/// How a node ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Completed; `output` is what the node produced (reports may have set more).
    Completed {
        output: Option<Value>,
    },
    Failed {
        message: String,
    },
    Cancelled,
}

/// Why one attempt did not complete.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptError {
    Failed(String),
    Cancelled,
}

/// Everything a node task needs; built by the coordinator when the node starts.
pub struct NodeJob {
    pub node: usize,
    pub id: String,
    pub work: NodeWork,
    pub timeout: Option<Duration>,
    pub retries: u32,
    /// Number of the first attempt (above 1 when a restarted server runs the node again).
    pub first_attempt: u32,
    /// Outputs of the node's upstream nodes, by id.
    pub inputs: Map<String, Value>,
    /// Feedback from a gate that sent work back to this node.
    pub feedback: Option<String>,
    /// The run's working directory.
    pub workdir: PathBuf,
    pub cancel_grace: Duration,
    /// The run's id, for jobs sent to workers.
    pub dag_id: String,
    /// The run's trace id, for the lines a worker logs about the job.
    pub trace_id: Option<Arc<str>>,
    /// Where a command node with a `pool` runs; `None` on a server without workers (which
    /// refuses such specs).
    pub workers: Option<WorkerPools>,
}

/// Delay before retry number `retry` (1 for the first): 250 ms, 500 ms, 1 s, ... capped at 10 s.
pub fn retry_backoff(retry: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1u64 << retry.saturating_sub(1).min(6))).min(Duration::from_secs(10))
}

/// Runs the node's attempts until one completes, the retries are used up, or `cancel` fires.
/// Always ends with exactly one [`NodeMsg::Finished`] (unless the coordinator is gone).
pub async fn run(job: NodeJob, events: mpsc::Sender<NodeMsg>, cancel: CancellationToken) {
    let outcome = attempts(&job, &events, &cancel).await;
    let _ = events.send(NodeMsg::Finished { node: job.node, outcome }).await;
}

async fn attempts(job: &NodeJob, events: &mpsc::Sender<NodeMsg>, cancel: &CancellationToken) -> Outcome {
    let mut attempt = job.first_attempt.max(1);
    let last_attempt = attempt + job.retries;
    loop {
        if events.send(NodeMsg::AttemptStarted { node: job.node, attempt }).await.is_err() {
            return Outcome::Cancelled;
        }
        let result = match &job.work {
            NodeWork::Simulate { .. } => simulate(job, events, cancel).await,
            NodeWork::Command { run, env, pool: Some(pool), .. } => {
                remote(job, pool, run, env, &mut attempt, events, cancel).await.map(|()| None)
            }
            NodeWork::Command { run, env, pool: None, .. } => {
                let attempt = CommandAttempt {
                    node: job.node,
                    node_id: &job.id,
                    attempt,
                    run,
                    env,
                    workdir: &job.workdir,
                    inputs: &job.inputs,
                    feedback: job.feedback.as_deref(),
                    timeout: job.timeout,
                    cancel_grace: job.cancel_grace,
                };
                process::run(attempt, events, cancel).await.map(|()| None)
            }
            NodeWork::Gate { .. } => Err(AttemptError::Failed("a gate is not run as a task".into())),
        };
        match result {
            Ok(output) => return Outcome::Completed { output },
            Err(AttemptError::Cancelled) => return Outcome::Cancelled,
            Err(AttemptError::Failed(message)) if attempt >= last_attempt => return Outcome::Failed { message },
            Err(AttemptError::Failed(message)) => {
                let message = format!("attempt {attempt} of {last_attempt} failed: {message}; retrying");
                let _ = events.send(NodeMsg::AttemptFailed { node: job.node, attempt, message }).await;
                tokio::select! {
                    _ = tokio::time::sleep(retry_backoff(attempt)) => {}
                    _ = cancel.cancelled() => return Outcome::Cancelled,
                }
                attempt += 1;
            }
        }
    }
}

/// One attempt on a worker of `pool`; a redelivery to another worker counts `attempt` up.
async fn remote(
    job: &NodeJob,
    pool: &str,
    run: &str,
    env: &std::collections::BTreeMap<String, String>,
    attempt: &mut u32,
    events: &mpsc::Sender<NodeMsg>,
    cancel: &CancellationToken,
) -> Result<(), AttemptError> {
    let Some(WorkerPools(workers)) = &job.workers else {
        return Err(AttemptError::Failed(format!("no workers here for pool {pool:?}: pools need a cluster")));
    };
    let remote_job = RemoteJob {
        job_id: uuid::Uuid::new_v4().simple().to_string(),
        dag_id: job.dag_id.clone(),
        node_id: job.id.clone(),
        attempt: *attempt,
        run: run.to_owned(),
        env: env.clone(),
        inputs: job.inputs.clone(),
        feedback: job.feedback.clone(),
        timeout_ms: job.timeout.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64),
        cancel_grace_ms: job.cancel_grace.as_millis().min(u128::from(u64::MAX)) as u64,
        trace_id: job.trace_id.as_deref().map(str::to_owned),
    };
    workers.run(pool, remote_job, job.node, attempt, events, cancel).await
}

/// One simulated attempt: waits, spends, maybe fails, and produces the spec's output.
async fn simulate(
    job: &NodeJob,
    events: &mpsc::Sender<NodeMsg>,
    cancel: &CancellationToken,
) -> Result<Option<Value>, AttemptError> {
    let NodeWork::Simulate { duration, cost, tokens_in, tokens_out, fail_rate, output } = &job.work else {
        return Err(AttemptError::Failed("not a simulate node".into()));
    };
    let (wait, timed_out) = match job.timeout {
        Some(timeout) if timeout < *duration => (timeout, true),
        Some(_) | None => (*duration, false),
    };
    // A zero wait must not go through the timer wheel, which rounds it up to a millisecond.
    if !wait.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return Err(AttemptError::Cancelled),
        }
    } else if cancel.is_cancelled() {
        return Err(AttemptError::Cancelled);
    }
    // A simulated call costs what it costs even when it fails, like a real one.
    let mut reports = Vec::new();
    if *cost > 0.0 {
        reports.push(Report::Cost(*cost));
    }
    if tokens_in.is_some() || tokens_out.is_some() {
        reports.push(Report::Tokens { tokens_in: tokens_in.unwrap_or(0), tokens_out: tokens_out.unwrap_or(0) });
    }
    if !reports.is_empty() {
        let _ = events.send(NodeMsg::Reports { node: job.node, reports }).await;
    }
    if timed_out {
        let limit = humantime::format_duration(wait);
        return Err(AttemptError::Failed(format!("timed out after {limit}")));
    }
    if *fail_rate > 0.0 && rand::random::<f64>() < *fail_rate {
        return Err(AttemptError::Failed("simulated failure (fail_rate)".into()));
    }
    let mut output = output.clone().unwrap_or_else(|| json!({ "summary": format!("{} finished", job.id) }));
    if let (Some(feedback), Value::Object(fields)) = (&job.feedback, &mut output) {
        fields.insert("feedback".into(), Value::String(feedback.clone()));
    }
    Ok(Some(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_and_caps() {
        let delays: Vec<u64> = (1..=9).map(|r| retry_backoff(r).as_millis() as u64).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
    }
}
