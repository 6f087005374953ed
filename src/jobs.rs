//! Command nodes on remote workers, through NATS JetStream: the owner's side ([`JetStreamWorkers`],
//! the engine's [`Workers`]) and the worker's (`dagstream worker`, [`work`]).
//!
//! - **Jobs.** One attempt of a node with `pool = "NAME"` is one message on the work-queue
//!   stream `DAGSTREAM_JOBS`, subject `dagstream.jobs.pool.NAME`, deduplicated by its job id.
//!   The workers of a pool share one durable pull consumer (`pool-NAME`): each job goes to one
//!   worker, with explicit ack, progress acks every third of `ack_wait` while the command runs,
//!   redelivery after `ack_wait` when a worker stops answering (killed, cut off), at most
//!   [`MAX_DELIVER`] deliveries, each waiting twice as long as the one before (the consumer's
//!   `backoff`: `ack_wait`, 2 × `ack_wait`, ...).
//! - **Updates.** The worker sends what the command does (started, log lines, report lines,
//!   how it ended) to the stream `DAGSTREAM_JOB_UPDATES`, subject
//!   `dagstream.jobs.updates.JOB`; the owner reads them with an ordered consumer, so a NATS
//!   restart loses none. Every update names its delivery: the owner follows the newest delivery
//!   only, shows a redelivery as the node's next attempt, and takes the first `finished` of
//!   that delivery as the attempt's result; anything after it is ignored.
//! - **Cancel and timeout.** Cancelling (the run is cancelled, or its owner lost the lease)
//!   publishes `dagstream.jobs.cancel.JOB`; the worker kills the command's process group. The
//!   worker applies the node's timeout itself, as a local command does.
//! - **At least once.** A job whose worker died runs again on another worker; a run taken over
//!   by another instance sends its interrupted nodes again as new jobs. Commands must be safe to
//!   repeat (README, docs/cluster.md). A worker needs the NATS URL (and credentials) and the
//!   spec's files, never the database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use axum::body::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::engine::node::{AttemptError, NodeMsg};
use crate::engine::process::{self, CommandAttempt};
use crate::engine::remote::{JobUpdate, JobUpdateBody, RemoteJob, Workers};

/// The work-queue stream of jobs.
const JOBS_STREAM: &str = "DAGSTREAM_JOBS";
/// The stream of what workers say about their jobs.
const UPDATES_STREAM: &str = "DAGSTREAM_JOB_UPDATES";
/// How long updates are kept: longer than any owner waits for one.
const UPDATES_KEPT: Duration = Duration::from_secs(24 * 3600);
/// Deliveries of one job before JetStream gives up on it.
pub const MAX_DELIVER: i64 = 5;
/// How long a worker has to ack progress before its job goes to another, unless
/// `dagstream worker --ack-wait` says otherwise.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

fn pool_subject(pool: &str) -> String {
    format!("dagstream.jobs.pool.{pool}")
}

fn updates_subject(job_id: &str) -> String {
    format!("dagstream.jobs.updates.{job_id}")
}

fn cancel_subject(job_id: &str) -> String {
    format!("dagstream.jobs.cancel.{job_id}")
}

/// Creates the two streams unless they exist (every owner and worker calls this at start).
async fn streams(js: &jetstream::Context) -> Result<(), String> {
    js.get_or_create_stream(stream::Config {
        name: JOBS_STREAM.into(),
        subjects: vec!["dagstream.jobs.pool.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot set up the job stream on NATS: {e}"))?;
    js.get_or_create_stream(stream::Config {
        name: UPDATES_STREAM.into(),
        subjects: vec!["dagstream.jobs.updates.>".into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: UPDATES_KEPT,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot set up the job update stream on NATS: {e}"))?;
    Ok(())
}

/// The owner's side: sends pool nodes' attempts to workers and follows them.
pub struct JetStreamWorkers {
    nats: async_nats::Client,
    js: jetstream::Context,
}

impl JetStreamWorkers {
    /// Sets up the streams on `nats`.
    pub async fn new(nats: async_nats::Client) -> Result<Self, String> {
        let js = jetstream::new(nats.clone());
        streams(&js).await?;
        Ok(JetStreamWorkers { nats, js })
    }

    /// Sends `job` and answers its updates, from the first.
    async fn send(&self, pool: &str, job: &RemoteJob) -> Result<consumer::pull::Ordered, String> {
        let updates = self
            .js
            .get_stream(UPDATES_STREAM)
            .await
            .map_err(|e| e.to_string())?
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: updates_subject(&job.job_id),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", job.job_id.as_str());
        let payload = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        self.js
            .publish_with_headers(pool_subject(pool), headers, Bytes::from(payload))
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(updates)
    }
}

impl Workers for JetStreamWorkers {
    fn run<'a>(
        &'a self,
        pool: &'a str,
        job: RemoteJob,
        node: usize,
        attempt: &'a mut u32,
        events: &'a mpsc::Sender<NodeMsg>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let in_flight = metrics::gauge!(crate::metrics::WORKER_JOBS_IN_FLIGHT);
            in_flight.increment(1.0);
            // Counted down however the attempt ends (its future may be dropped).
            let _done = count_down_on_drop(in_flight);
            let mut updates = tokio::select! {
                sent = self.send(pool, &job) => sent.map_err(|e| AttemptError::Failed(format!("could not send the job to pool {pool:?}: {e}")))?,
                _ = cancel.cancelled() => return Err(AttemptError::Cancelled),
            };
            let mut delivery = 1;
            loop {
                let message = tokio::select! {
                    message = updates.next() => message,
                    _ = cancel.cancelled() => {
                        if let Err(error) = self.nats.publish(cancel_subject(&job.job_id), Bytes::new()).await {
                            tracing::warn!(%error, job = %job.job_id, "could not tell the worker to stop");
                        }
                        return Err(AttemptError::Cancelled);
                    }
                };
                let update = match message {
                    Some(Ok(message)) => match serde_json::from_slice::<JobUpdate>(&message.payload) {
                        Ok(update) => update,
                        Err(error) => {
                            tracing::warn!(%error, job = %job.job_id, "unreadable job update ignored");
                            continue;
                        }
                    },
                    // The ordered consumer recreates itself across NATS restarts; an error here
                    // is one it could not get past.
                    Some(Err(error)) => {
                        return Err(AttemptError::Failed(format!("lost the job's updates: {error}")));
                    }
                    None => return Err(AttemptError::Failed("lost the job's updates".into())),
                };
                if update.delivery < delivery {
                    continue;
                }
                if update.delivery > delivery {
                    // The worker of the last delivery stopped answering: JetStream gave the job
                    // to another worker. That is the node's next attempt.
                    let message = format!(
                        "attempt {attempt} stopped answering on its worker; the job went to {} (delivery {})",
                        update.worker, update.delivery
                    );
                    let _ = events.send(NodeMsg::AttemptFailed { node, attempt: *attempt, message }).await;
                    *attempt += (update.delivery - delivery) as u32;
                    delivery = update.delivery;
                    let _ = events.send(NodeMsg::AttemptStarted { node, attempt: *attempt }).await;
                }
                let sent = match update.body {
                    JobUpdateBody::Started => Ok(()),
                    JobUpdateBody::Log { stream, line } => events.send(NodeMsg::Log { node, stream, line }).await,
                    JobUpdateBody::Reports { reports } => events.send(NodeMsg::Reports { node, reports }).await,
                    JobUpdateBody::BadReport { line, problem } => {
                        events.send(NodeMsg::BadReport { node, line, problem }).await
                    }
                    JobUpdateBody::Finished { failure: None } => return Ok(()),
                    JobUpdateBody::Finished { failure: Some(failure) } => return Err(AttemptError::Failed(failure)),
                };
                if sent.is_err() {
                    return Err(AttemptError::Cancelled);
                }
            }
        })
    }
}

/// How a worker works.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub nats_url: String,
    pub pool: String,
    /// This worker's name, in the updates it sends (and so in the owner's log).
    pub id: String,
    /// Jobs run at the same time.
    pub concurrency: usize,
    /// Each job runs in `work_root/<dag_id>`.
    pub work_root: PathBuf,
    /// Set on the pool's consumer when this worker creates it (the first worker of a pool does).
    pub ack_wait: Duration,
}

/// Runs the jobs of one pool until `shutdown`, `concurrency` at a time; jobs running then are
/// finished first. Fails at start when NATS cannot be reached.
pub async fn work(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), String> {
    let nats = async_nats::ConnectOptions::new()
        .name(format!("dagstream worker {}", config.id))
        .connect(&config.nats_url)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", config.nats_url))?;
    let js = jetstream::new(nats.clone());
    streams(&js).await?;
    let jobs = js
        .get_stream(JOBS_STREAM)
        .await
        .map_err(|e| format!("cannot find the job stream: {e}"))?
        .get_or_create_consumer(
            &format!("pool-{}", config.pool),
            consumer::pull::Config {
                durable_name: Some(format!("pool-{}", config.pool)),
                filter_subject: pool_subject(&config.pool),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_deliver: MAX_DELIVER,
                // Each redelivery waits longer: a job that keeps losing its worker does not
                // take the pool down with it.
                backoff: (0..u32::try_from(MAX_DELIVER - 1).unwrap_or(0))
                    .map(|n| config.ack_wait * 2u32.pow(n))
                    .collect(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("cannot join pool {:?}: {e}", config.pool))?;
    tracing::info!(pool = %config.pool, worker = %config.id, concurrency = config.concurrency, "waiting for jobs");
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let config = Arc::new(config);
    let mut running = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.map_err(|e| e.to_string())?,
            _ = shutdown.cancelled() => break,
        };
        let fetched = tokio::select! {
            fetched = jobs.fetch().max_messages(1).expires(Duration::from_secs(5)).messages() => fetched,
            _ = shutdown.cancelled() => break,
        };
        let mut batch = match fetched {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "cannot fetch jobs yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                message = batch.next() => match message {
                    Some(message) => message,
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            };
            match message {
                Ok(message) => {
                    let (nats, js, config) = (nats.clone(), js.clone(), Arc::clone(&config));
                    running.spawn(async move {
                        run_job(message, nats, js, &config).await;
                        drop(slot);
                    });
                    break;
                }
                Err(error) => tracing::warn!(%error, "a job could not be read"),
            }
        }
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    Ok(())
}

/// Where a worker sends the updates of one delivery of a job.
#[derive(Clone)]
struct Updates {
    js: jetstream::Context,
    subject: String,
    delivery: u64,
    worker: String,
}

impl Updates {
    /// Stores one update in the update stream (waits for JetStream's ack).
    async fn send(&self, body: JobUpdateBody) -> Result<(), String> {
        let update = JobUpdate { delivery: self.delivery, worker: self.worker.clone(), body };
        let payload = serde_json::to_vec(&update).map_err(|e| e.to_string())?;
        let ack = self.js.publish(self.subject.clone(), Bytes::from(payload)).await.map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Runs one delivered job to its end, acking progress while it runs, and acks it once its
/// result is stored in the update stream.
async fn run_job(message: jetstream::Message, nats: async_nats::Client, js: jetstream::Context, config: &WorkerConfig) {
    let delivery = message.info().map(|info| info.delivered.max(1) as u64).unwrap_or(1);
    let job: RemoteJob = match serde_json::from_slice(&message.payload) {
        Ok(job) => job,
        Err(error) => {
            tracing::warn!(%error, "unreadable job dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    // What is logged about the job carries its run's trace id.
    let lines = crate::telemetry::lines_span(job.trace_id.as_deref());
    tracing::Instrument::instrument(run_delivered(message, job, delivery, nats, js, config), lines).await;
}

/// Runs delivery `delivery` of `job`, read from `message`.
async fn run_delivered(
    message: jetstream::Message,
    job: RemoteJob,
    delivery: u64,
    nats: async_nats::Client,
    js: jetstream::Context,
    config: &WorkerConfig,
) {
    let updates =
        Updates { js: js.clone(), subject: updates_subject(&job.job_id), delivery, worker: config.id.clone() };
    tracing::info!(job = %job.job_id, dag_id = %job.dag_id, node = %job.node_id, delivery, "job started");
    let cancel = CancellationToken::new();
    let cancel_watch = match nats.subscribe(cancel_subject(&job.job_id)).await {
        Ok(mut cancels) => {
            let cancel = cancel.clone();
            Some(tokio::spawn(async move {
                if cancels.next().await.is_some() {
                    cancel.cancel();
                }
            }))
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for the job's cancellation");
            None
        }
    };
    if let Err(error) = updates.send(JobUpdateBody::Started).await {
        tracing::warn!(%error, "could not say the job started");
    }
    let workdir = config.work_root.join(&job.dag_id);
    let (events, mut outputs) = mpsc::channel::<NodeMsg>(256);
    let forward = {
        let updates = updates.clone();
        tokio::spawn(async move {
            while let Some(output) = outputs.recv().await {
                if let Some(body) = JobUpdateBody::from_node_msg(output)
                    && let Err(error) = updates.send(body).await
                {
                    tracing::debug!(%error, "a job update was not sent");
                }
            }
        })
    };
    let mut env = job.env.clone();
    env.insert("DAGSTREAM_WORKER".into(), config.id.clone());
    let result = match tokio::fs::create_dir_all(&workdir).await {
        Err(error) => Err(AttemptError::Failed(format!("cannot create {}: {error}", workdir.display()))),
        Ok(()) => {
            let attempt = CommandAttempt {
                node: 0,
                node_id: &job.node_id,
                attempt: job.attempt + (delivery as u32).saturating_sub(1),
                run: &job.run,
                env: &env,
                workdir: &workdir,
                inputs: &job.inputs,
                feedback: job.feedback.as_deref(),
                timeout: job.timeout_ms.map(Duration::from_millis),
                cancel_grace: Duration::from_millis(job.cancel_grace_ms),
            };
            let running = process::run(attempt, &events, &cancel);
            tokio::pin!(running);
            let mut progress = tokio::time::interval(config.ack_wait / 3);
            progress.tick().await;
            loop {
                tokio::select! {
                    result = &mut running => break result,
                    _ = progress.tick() => {
                        if let Err(error) = message.ack_with(AckKind::Progress).await {
                            tracing::warn!(%error, "could not extend the job's ack time");
                        }
                    }
                }
            }
        }
    };
    drop(events);
    let _ = forward.await;
    if let Some(watch) = cancel_watch {
        watch.abort();
    }
    let failure = match result {
        Ok(()) => None,
        Err(AttemptError::Failed(message)) => Some(message),
        Err(AttemptError::Cancelled) => Some("cancelled".into()),
    };
    tracing::info!(job = %job.job_id, ok = failure.is_none(), "job finished");
    match updates.send(JobUpdateBody::Finished { failure }).await {
        // The result is kept: the job is done, whoever reads it.
        Ok(()) => {
            if let Err(error) = message.double_ack().await {
                tracing::warn!(%error, "could not ack the job; it may run again");
            }
        }
        // Not acked: JetStream gives the job to a worker again after ack_wait.
        Err(error) => tracing::warn!(%error, "could not send the job's result; it will run again"),
    }
}

/// Counts a gauge down when dropped: an attempt on a worker ends, however it ends.
fn count_down_on_drop(gauge: metrics::Gauge) -> impl Drop {
    struct Down(metrics::Gauge);
    impl Drop for Down {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }
    Down(gauge)
}
