//! One instance of a cluster (`dagstream serve --database postgres://… --nats nats://…`):
//! several instances on one PostgreSQL database and one NATS server share every run.
//!
//! - **Ownership.** Exactly one instance drives a run at a time: the one holding its lease in
//!   PostgreSQL (`runs.owner`, `runs.epoch`, `runs.lease_until`; [`PgStore::claim_run`]). The
//!   lease loop renews every lease this instance holds every TTL/3, claims runs whose lease ran
//!   out (their owner died) and resumes them from the stored log, as a restart does. New runs
//!   go to the live instance that drives the fewest ([`PgStore::place_run`]).
//! - **Fencing.** Every event an owner appends carries its lease's epoch; the database refuses
//!   it once another instance has claimed the run (`store::postgres`, `fence`). The refused
//!   owner halts its coordinator and only mirrors the run from then on
//!   ([`crate::hub::Room::fence`]). An owner that cannot renew for a whole TTL lets its runs go.
//! - **Events to every instance.** The owner publishes each committed event on core NATS
//!   (`dagstream.events.<dag_id>`); the others fold it into their mirror of the run
//!   ([`crate::hub::Room::follow`]), so any instance serves any run's stream with the usual
//!   guarantees. NATS may drop messages (a restart, a slow consumer): a mirror that sees a gap
//!   reads the missing events from PostgreSQL, and the catch-up loop compares every followed
//!   run with the store each second, so a lost last event is found too. PostgreSQL is the
//!   source of truth; NATS only makes events arrive sooner.
//! - **Commands from any instance.** A command on a run driven elsewhere is sent to its owner
//!   (`dagstream.instance.<id>.command`, NATS request and reply), which judges it like its own
//!   users' commands; a gate decision is recorded with the database's one-decision-per-gate
//!   write, so of deciders on several instances exactly one wins and the others are told who.
//! - **Ended runs.** A run's end frees its lease (the owner's room becomes a mirror). A repair
//!   (retry or re-run a node) reopens it on the instance it reaches, which claims the ended
//!   run with one conditional `UPDATE` ([`PgStore::reopen_run`]) and resumes it from the
//!   stored log; of several instances reopening it at once exactly one gets it, and the others
//!   hand their repair to it, whose coordinator judges it like any command.
//!
//! - **Remote workers.** Command nodes with a `pool` run on `dagstream worker`s of that pool,
//!   through JetStream (`crate::jobs`).
//!
//! See `docs/cluster.md` for what is exactly once, what is at least once, and what a partition
//! does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::engine::EngineConfig;
use crate::engine::remote::WorkerPools;
use crate::hub::{Authority, Followed, Frame, Relayed, Room, RoomLimits};
use crate::jobs::JetStreamWorkers;
use crate::protocol::{ClientEvent, ServerEvent};
use crate::runs::{ClusterLink, Runs};
use crate::store::{PgStore, Store, StoreError};

/// How long a lease lasts unless `--lease-ttl` says otherwise.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The NATS header that carries a relayed event's trace id (`crate::telemetry`).
const TRACE_ID_HEADER: &str = "Dagstream-Trace-Id";
/// How long a forwarded command waits for the run's owner to answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// What the sender of a command hears while no instance can take it.
const NO_OWNER: &str =
    "no instance drives this run at the moment (its owner is being replaced): try again in a few seconds";

/// How long leaving the cluster waits for PostgreSQL and NATS.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often followed runs are compared with the store (events NATS did not bring).
const CATCH_UP_INTERVAL: Duration = Duration::from_secs(1);
/// Every this many catch-ups, finished runs are looked for too (a run that began and ended
/// while NATS brought nothing here); the others look at unfinished runs only.
const FINISHED_EVERY: u32 = 60;

/// How this instance joins its cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The NATS server, `nats://HOST:PORT`.
    pub nats_url: String,
    /// This instance's name in the cluster; unique among the instances.
    pub instance_id: String,
    /// How long a lease lasts without renewal: an owner that dies is replaced after at most this.
    pub lease_ttl: Duration,
    /// Where this instance's dashboard answers, as other instances' operators see it.
    pub address: String,
}

/// NATS subject of a run's committed events.
fn events_subject(dag_id: &str) -> String {
    format!("dagstream.events.{dag_id}")
}

/// NATS subject on which an instance takes commands for the runs it drives.
fn command_subject(instance: &str) -> String {
    format!("dagstream.instance.{instance}.command")
}

/// NATS subject that tells every instance a session ended (signed out) on one of them.
const LOGOUTS: &str = "dagstream.sessions.ended";

/// NATS subject that tells an instance a new run was placed on it.
fn claim_subject(instance: &str) -> String {
    format!("dagstream.instance.{instance}.claim")
}

/// A command sent to the instance that drives the run.
#[derive(Serialize, Deserialize)]
struct Forwarded {
    dag_id: String,
    event: ClientEvent,
    actor: String,
}

/// The owner's verdict on a [`Forwarded`] command: `None` when it was applied.
#[derive(Serialize, Deserialize)]
struct Verdict {
    refused: Option<String>,
}

/// This instance's part in the cluster; the registry places runs and forwards commands
/// through it ([`ClusterLink`]).
pub struct Member {
    id: String,
    address: String,
    store: Arc<PgStore>,
    nats: async_nats::Client,
    ttl: Duration,
    /// Wakes the lease loop early (a run was placed on this instance).
    nudge: Notify,
}

/// A running cluster member: its registry, and what stops it.
pub struct Joined {
    pub runs: Arc<Runs>,
    pub member: Arc<Member>,
    tasks: tokio::task::JoinSet<()>,
    stop: CancellationToken,
}

/// Connects to NATS, loads every stored run as a mirror, and starts the loops of a member.
/// Fails, with what to fix, when NATS cannot be reached or the store cannot be read.
pub async fn join(
    config: ClusterConfig,
    limits: RoomLimits,
    mut engine: EngineConfig,
    store: Arc<PgStore>,
    milestones: Option<mpsc::UnboundedSender<crate::hub::Milestone>>,
) -> Result<Joined, String> {
    let nats = async_nats::ConnectOptions::new()
        .name(format!("dagstream {}", config.instance_id))
        .connect(&config.nats_url)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", config.nats_url))?;
    let member = Arc::new(Member {
        id: config.instance_id.clone(),
        address: config.address.clone(),
        store: Arc::clone(&store),
        nats: nats.clone(),
        ttl: config.lease_ttl,
        nudge: Notify::new(),
    });
    store.heartbeat(&member.id, &member.address).await.map_err(|e| e.to_string())?;
    // Subscribed before anything is loaded, so no event published meanwhile is missed (a
    // duplicate of a loaded one changes nothing).
    let events = nats.subscribe("dagstream.events.>").await.map_err(|e| format!("cannot subscribe on NATS: {e}"))?;
    let commands =
        nats.subscribe(command_subject(&member.id)).await.map_err(|e| format!("cannot subscribe on NATS: {e}"))?;
    let claims =
        nats.subscribe(claim_subject(&member.id)).await.map_err(|e| format!("cannot subscribe on NATS: {e}"))?;
    // Command nodes with a `pool` go to `dagstream worker`s (crate::jobs).
    engine.workers = Some(WorkerPools(Arc::new(JetStreamWorkers::new(nats.clone()).await?)));
    let (relay, relayed) = mpsc::unbounded_channel();
    let (fenced, lost) = mpsc::unbounded_channel();
    let link: Arc<dyn ClusterLink> = member.clone();
    let runs = Runs::open_member(limits, engine, store as Arc<dyn Store>, link, relay, fenced, milestones)
        .await
        .map_err(|e| format!("cannot load the runs: {e}"))?;
    let runs = Arc::new(runs);
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(publish_loop(nats.clone(), relayed));
    tasks.spawn(follow_loop(Arc::clone(&runs), events, stop.clone()));
    tasks.spawn(catch_up_loop(Arc::clone(&runs), Arc::clone(&member), stop.clone()));
    tasks.spawn(command_loop(Arc::clone(&runs), nats.clone(), commands, stop.clone()));
    tasks.spawn(claim_nudges(Arc::clone(&member), claims, stop.clone()));
    tasks.spawn(lease_loop(Arc::clone(&runs), Arc::clone(&member), stop.clone()));
    tasks.spawn(let_go_loop(Arc::clone(&runs), lost));
    tracing::info!(instance = %member.id, nats = %config.nats_url, ttl = ?config.lease_ttl, "joined the cluster");
    Ok(Joined { runs, member, tasks, stop })
}

impl Joined {
    /// Shares sign-outs with the other instances: the id hash of every session that ends here
    /// (from `ended_here`) is published, and `forget` is called with each one that ended on
    /// another instance, so its cookie stops working and its sockets close everywhere.
    pub async fn share_logouts(
        &mut self,
        mut ended_here: mpsc::UnboundedReceiver<String>,
        forget: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<(), String> {
        let mut ended_elsewhere =
            self.member.nats.subscribe(LOGOUTS).await.map_err(|e| format!("cannot subscribe on NATS: {e}"))?;
        let nats = self.member.nats.clone();
        self.tasks.spawn(async move {
            while let Some(id_hash) = ended_here.recv().await {
                if let Err(error) = nats.publish(LOGOUTS, Bytes::from(id_hash)).await {
                    tracing::warn!(%error, "a sign-out was not shared with the other instances");
                }
            }
        });
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    message = ended_elsewhere.next() => match message {
                        Some(message) => forget(&String::from_utf8_lossy(&message.payload)),
                        None => return,
                    },
                    _ = stop.cancelled() => return,
                }
            }
        });
        Ok(())
    }

    /// Leaves the cluster: stops driving runs here (their coordinators halt, publishing
    /// nothing more), ends this instance's leases so others claim the runs at once, and waits
    /// for the relay to hand on what was committed.
    pub async fn leave(mut self) {
        self.stop.cancel();
        for (dag_id, epoch) in self.runs.leases() {
            if let Some(entry) = self.runs.get(&dag_id) {
                entry.room.hand_over(epoch);
            }
        }
        // Bounded: PostgreSQL or NATS may be gone already (everything stops at once on Ctrl-C).
        match tokio::time::timeout(LEAVE_TIMEOUT, self.member.store.leave(&self.member.id)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not hand the runs over; other instances claim them when the leases run out");
            }
            Err(_) => {
                tracing::warn!("the database did not answer; other instances claim the runs when the leases run out")
            }
        }
        // What the relay has not sent yet is stored: the other instances read it from there.
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, self.member.nats.flush()).await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl ClusterLink for Member {
    fn place(&self, dag_id: &str) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move {
            match self.store.place_run(&dag_id, self.ttl).await? {
                Some(chosen) if chosen != self.id => {
                    // Only sooner: the chosen instance also finds it on its next round.
                    if let Err(error) = self.nats.publish(claim_subject(&chosen), Bytes::from(dag_id.clone())).await {
                        tracing::warn!(%error, %chosen, "could not tell the instance of its new run");
                    }
                    // Before the run has a trace: its owner makes one when it starts the run.
                    tracing::info!(%dag_id, %chosen, "run placed on another instance");
                    Ok(None)
                }
                Some(_) | None => match self.store.claim_run(&dag_id, &self.id, self.ttl).await? {
                    Some(epoch) => Ok(Some(epoch)),
                    // Another instance's lease loop found the new run first and drives it.
                    None if self.store.owner(&dag_id).await?.is_some() => Ok(None),
                    None => Err(StoreError(format!("run {dag_id} could not be claimed"))),
                },
            }
        })
    }

    fn reopen(&self, dag_id: &str) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move { self.store.reopen_run(&dag_id, &self.id, self.ttl).await })
    }

    fn forward(&self, dag_id: &str, event: ClientEvent, actor: &str) -> BoxFuture<'_, Result<(), String>> {
        let forwarded = Forwarded { dag_id: dag_id.to_owned(), event, actor: actor.to_owned() };
        Box::pin(async move {
            let unavailable = || NO_OWNER.to_owned();
            let owner = match self.store.owner(&forwarded.dag_id).await {
                Ok(Some(owner)) if owner != self.id => owner,
                Ok(Some(_)) | Ok(None) => return Err(unavailable()),
                Err(error) => {
                    tracing::warn!(%error, "cannot find the run's owner");
                    return Err(unavailable());
                }
            };
            let payload = serde_json::to_vec(&forwarded).map_err(|e| e.to_string())?;
            let asked = self.nats.request(command_subject(&owner), Bytes::from(payload));
            let reply = match tokio::time::timeout(FORWARD_TIMEOUT, asked).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) => {
                    tracing::warn!(%error, %owner, "the run's owner did not answer");
                    return Err(unavailable());
                }
                Err(_) => return Err(unavailable()),
            };
            match serde_json::from_slice::<Verdict>(&reply.payload) {
                Ok(Verdict { refused: None }) => Ok(()),
                Ok(Verdict { refused: Some(reason) }) => Err(reason),
                Err(_) => Err(unavailable()),
            }
        })
    }
}

/// Hands every committed event of the runs driven here to NATS, in commit order.
async fn publish_loop(nats: async_nats::Client, mut relayed: mpsc::UnboundedReceiver<crate::hub::Relayed>) {
    let mut batch = Vec::with_capacity(256);
    while relayed.recv_many(&mut batch, 256).await > 0 {
        for Relayed { dag_id, frame, trace_id } in batch.drain(..) {
            let subject = events_subject(&dag_id);
            let payload = Bytes::from(frame.text);
            let published = match trace_id {
                Some(trace_id) => {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(TRACE_ID_HEADER, &*trace_id);
                    nats.publish_with_headers(subject, headers, payload).await
                }
                None => nats.publish(subject, payload).await,
            };
            if let Err(error) = published {
                // The other instances find the event in the store.
                tracing::debug!(%error, "event not relayed");
            }
        }
    }
}

/// Folds the events other instances commit into this instance's mirrors of their runs.
async fn follow_loop(runs: Arc<Runs>, mut events: async_nats::Subscriber, stop: CancellationToken) {
    loop {
        let message = tokio::select! {
            message = events.next() => match message {
                Some(message) => message,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        let Some(dag_id) = message.subject.as_str().strip_prefix("dagstream.events.") else { continue };
        let trace_id = message.headers.as_ref().and_then(|headers| headers.get(TRACE_ID_HEADER)).map(|v| v.as_str());
        let lines = crate::telemetry::lines_span(trace_id);
        let Ok(text) = std::str::from_utf8(&message.payload) else { continue };
        let Ok(event) = serde_json::from_str::<ServerEvent>(text) else {
            tracing::warn!(parent: &lines, %dag_id, "unreadable event on NATS ignored");
            continue;
        };
        let frame = Frame { seq: event.seq, text: Utf8Bytes::from(text.to_owned()) };
        let Some(entry) = runs.get(dag_id) else {
            // A run another instance created: its stored log already holds this event.
            if let Err(error) = runs.mirror_stored(dag_id).await {
                tracing::warn!(parent: &lines, %error, %dag_id, "cannot mirror a new run yet; the catch-up loop tries again");
            }
            continue;
        };
        if entry.room.authority() == Authority::Mirror && entry.room.trace_id().as_deref() != trace_id {
            // The owner's trace of the run: the lines this instance logs about it carry it too.
            entry.room.set_trace_id(trace_id.map(Arc::from));
            tracing::debug!(parent: &lines, %dag_id, "following the run's trace");
        }
        if let Followed::Gap { after } = entry.room.follow(event.clone(), frame.clone()) {
            match catch_up(&runs, &entry.room, after, event.seq - 1).await {
                Ok(()) => {
                    entry.room.follow(event, frame);
                }
                Err(error) => {
                    tracing::warn!(parent: &lines, %error, %dag_id, "cannot fill a gap yet; the catch-up loop tries again")
                }
            }
        }
    }
}

/// Folds the stored events `after+1 ..= up_to` of a followed run into its room.
async fn catch_up(runs: &Runs, room: &Room, after: u64, up_to: u64) -> Result<(), StoreError> {
    let Some(store) = runs.store() else { return Ok(()) };
    for text in store.events(room.dag_id(), after, up_to).await? {
        let event: ServerEvent =
            serde_json::from_str(&text).map_err(|e| StoreError(format!("stored event unreadable: {e}")))?;
        let frame = Frame { seq: event.seq, text: Utf8Bytes::from(text) };
        room.follow(event, frame);
    }
    Ok(())
}

/// Each second: mirrors runs created elsewhere that this instance has not heard of (unfinished
/// ones; finished ones every [`FINISHED_EVERY`] seconds), and brings every followed run up to its
/// stored log (events NATS did not deliver).
async fn catch_up_loop(runs: Arc<Runs>, member: Arc<Member>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CATCH_UP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in (0..FINISHED_EVERY).cycle() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(error) = catch_up_all(&runs, &member, round != 0).await {
            tracing::warn!(%error, "catching up with the store failed; trying again");
        }
    }
}

async fn catch_up_all(runs: &Runs, member: &Member, unfinished_only: bool) -> Result<(), StoreError> {
    let known: HashSet<String> = runs.ids().into_iter().collect();
    for dag_id in member.store.run_ids(unfinished_only).await? {
        if !known.contains(&dag_id) {
            runs.mirror_stored(&dag_id).await?;
        }
    }
    let followed = runs.followed();
    let ids: Vec<String> = followed.iter().map(|room| room.dag_id().to_owned()).collect();
    for (dag_id, last) in member.store.last_seqs(&ids).await? {
        let Some(room) = followed.iter().find(|room| room.dag_id() == dag_id) else { continue };
        let last = u64::try_from(last).unwrap_or(0);
        if last > room.seq() {
            catch_up(runs, room, room.seq(), last).await?;
        }
    }
    Ok(())
}

/// Answers the commands other instances forward for the runs driven here.
async fn command_loop(
    runs: Arc<Runs>,
    nats: async_nats::Client,
    mut commands: async_nats::Subscriber,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            message = commands.next() => match message {
                Some(message) => message,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        let Some(reply) = message.reply else { continue };
        let runs = Arc::clone(&runs);
        let nats = nats.clone();
        // One at a time per run is the coordinator's job; commands of different runs need not
        // wait for each other here.
        tokio::spawn(async move {
            let refused = match serde_json::from_slice::<Forwarded>(&message.payload) {
                Err(error) => Some(format!("unreadable command: {error}")),
                Ok(Forwarded { dag_id, event, actor }) => match runs.get(&dag_id).and_then(|e| e.handle().cloned()) {
                    Some(handle) => handle.command(event, &actor).await.err().map(|rejected| rejected.to_string()),
                    None => Some(NO_OWNER.to_owned()),
                },
            };
            match serde_json::to_vec(&Verdict { refused }) {
                Ok(payload) => {
                    if let Err(error) = nats.publish(reply, Bytes::from(payload)).await {
                        tracing::debug!(%error, "verdict not sent");
                    }
                }
                Err(error) => tracing::warn!(%error, "verdict not serialized"),
            }
        });
    }
}

/// Wakes the lease loop when another instance placed a run here.
async fn claim_nudges(member: Arc<Member>, mut claims: async_nats::Subscriber, stop: CancellationToken) {
    loop {
        tokio::select! {
            message = claims.next() => match message {
                Some(_) => member.nudge.notify_one(),
                None => return,
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// Every TTL/3 (and when nudged): says this instance is alive, renews its leases, lets go of
/// the runs it lost, and claims the runs nobody holds.
async fn lease_loop(runs: Arc<Runs>, member: Arc<Member>, stop: CancellationToken) {
    let period = member.ttl / 3;
    let mut renewed = Instant::now();
    loop {
        if let Err(error) = member.store.heartbeat(&member.id, &member.address).await {
            tracing::warn!(%error, "cannot say this instance is alive");
        }
        let held = runs.leases();
        match member.store.renew_leases(&member.id, &held, member.ttl).await {
            Ok(still) => {
                renewed = Instant::now();
                for (dag_id, epoch) in held.iter().filter(|(dag_id, _)| !still.contains(dag_id)) {
                    if let Some(entry) = runs.get(dag_id) {
                        entry.room.fence(*epoch);
                    }
                }
            }
            Err(error) if renewed.elapsed() > member.ttl => {
                // Another instance may hold these runs by now: stop before it writes.
                tracing::error!(%error, "leases not renewed for a whole lease time: letting every run go");
                for (dag_id, epoch) in &held {
                    if let Some(entry) = runs.get(dag_id) {
                        entry.room.fence(*epoch);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot renew leases yet"),
        }
        if let Err(error) = claim_free_runs(&runs, &member).await {
            tracing::warn!(%error, "cannot claim runs yet");
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = member.nudge.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Claims every run whose lease is free (or placed here) and resumes it here. The order is
/// shuffled, so instances that look at the same time take different runs first.
async fn claim_free_runs(runs: &Runs, member: &Member) -> Result<(), StoreError> {
    let mut free = member.store.claimable_runs(&member.id).await?;
    free.shuffle(&mut rand::rng());
    for dag_id in free {
        let Some(epoch) = member.store.claim_run(&dag_id, &member.id, member.ttl).await? else { continue };
        if let Err(error) = runs.adopt(&dag_id, epoch).await {
            let lines = runs.get(&dag_id).map(|entry| entry.room.lines()).unwrap_or_else(tracing::Span::none);
            tracing::error!(parent: &lines, %error, %dag_id, "claimed a run but cannot drive it");
        }
    }
    Ok(())
}

/// Turns runs whose lease this instance lost into mirrors in the registry.
async fn let_go_loop(runs: Arc<Runs>, mut lost: mpsc::UnboundedReceiver<Arc<str>>) {
    while let Some(dag_id) = lost.recv().await {
        runs.let_go(&dag_id);
    }
}
