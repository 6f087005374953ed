//! One room per run: the sequenced event log, the run's folded state, and fan-out to subscribers.
//!
//! [`Room::publish`] is the only way an event enters a run: it assigns the next `seq` and
//! serializes the event once. With a store, the event then goes to the writer, which commits it
//! (in batches) and only then hands it back to [`Room::commit`]; without one it is committed at
//! once. Committing folds the event into the room's [`RunState`] with the shared reducer,
//! appends the frame to the log window and hands the same frame to every subscriber, so nobody
//! ever sees an event that is not stored. Subscribing takes the same lock as committing, so a new
//! subscriber's snapshot or replay and its live stream meet without a gap or a duplicate. The
//! live stream is a bounded broadcast ring: a subscriber that falls more than its capacity behind
//! is told it lagged, so a slow reader never slows the run or the other readers. Dashboard
//! sockets do not each follow the ring: a few shard tasks per room write every frame to all of
//! them ([`fanout`]), and drop one that falls as far behind with 4008 (the client resyncs).

pub mod fanout;
pub mod writer;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use futures::future::BoxFuture;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::protocol::{Applied, RunPhase, RunState, RunSummary, Seq, ServerEvent, ServerEventBody, now_rfc3339};
use crate::store::{Claim, DecisionRow, StoreError, StoredEvent};

pub use writer::{Pending, Writer};

/// One serialized event, shared by every subscriber (cloning it does not copy the text).
#[derive(Clone, Debug)]
pub struct Frame {
    pub seq: Seq,
    pub text: Utf8Bytes,
}

/// Sizes of a room's buffers.
#[derive(Clone, Copy, Debug)]
pub struct RoomLimits {
    /// Events kept in memory for `since` replay; older ones are answered with a snapshot.
    pub log_window: usize,
    /// Events a subscriber of the room's broadcast (a shard of dashboard sockets, the terminal
    /// view) may fall behind the newest before it is told it lagged.
    pub subscriber_queue: usize,
    /// Bytes of frames a dashboard socket may have waiting (it reads slower than the run
    /// publishes) before it is dropped as too slow with 4008. What waits is shared: sockets that
    /// are behind hold slices of the same buffers, so the room holds these bytes once per shard,
    /// not once per socket.
    pub socket_backlog: usize,
}

impl Default for RoomLimits {
    fn default() -> Self {
        // The queue holds a few of the writer's largest batches, so a committed batch never
        // overflows a subscriber that keeps up.
        RoomLimits { log_window: 4096, subscriber_queue: 4096, socket_backlog: 16 * 1024 * 1024 }
    }
}

/// A committed event of a run that changes its course, for notifications ([`is_milestone`]).
#[derive(Clone, Debug)]
pub struct Milestone {
    pub dag_id: Arc<str>,
    pub event: ServerEvent,
    /// The run's trace, for the notifier's lines about it.
    pub trace_id: Option<Arc<str>>,
}

/// A committed event handed to a cluster's other instances.
#[derive(Clone, Debug)]
pub struct Relayed {
    pub dag_id: Arc<str>,
    pub frame: Frame,
    /// The run's trace, so the mirrors' lines about the run carry it too.
    pub trace_id: Option<Arc<str>>,
}

/// The live state and event log of one run.
pub struct Room {
    dag_id: Arc<str>,
    /// This room, for the writer to hand committed events back to.
    me: Weak<Room>,
    /// Where published events go before they are committed; `None`: committed at once.
    writer: Option<Writer>,
    /// Set once storing failed: later events are shown but not stored, and the run stops.
    storage_failed: AtomicBool,
    /// Cancelled when this instance must stop driving the run at once (storage failed, or the
    /// run's lease was lost); its coordinator watches it. A new one comes with each take-over.
    halt: Mutex<CancellationToken>,
    /// Where committed events go besides this room's subscribers (a cluster's other instances).
    relay: OnceLock<mpsc::UnboundedSender<Relayed>>,
    /// Told this run's id when the store fenced this instance out of it (its lease was lost).
    on_fenced: OnceLock<mpsc::UnboundedSender<Arc<str>>>,
    /// Where the committed events that change the run's course (gates, spend, run state) go,
    /// for notifications; only the instance that drives the run commits here.
    milestones: OnceLock<mpsc::UnboundedSender<Milestone>>,
    /// The OpenTelemetry trace id of the run's current trace (set by its coordinator, or by the
    /// owner's events on a mirror), for the lines logged about the run outside its span; `None`
    /// while traces are not exported.
    trace_id: Mutex<Option<Arc<str>>>,
    /// Told this run's id whenever a committed event changes its line in the run list.
    feed: OnceLock<broadcast::Sender<Arc<str>>>,
    inner: Mutex<RoomInner>,
    /// Sender half of the live stream; `subscribe` hands out receivers, and the shards follow it.
    live: broadcast::Sender<Frame>,
    /// The tasks that write the live stream to dashboard sockets ([`fanout`]).
    shards: fanout::Shards,
    /// Bytes a dashboard socket may have waiting before it is dropped as too slow.
    socket_backlog: usize,
    /// Capacity of `live`.
    live_capacity: usize,
    /// Becomes true once `execution_complete` was published, for callers that wait for the end
    /// without following the stream; false again when a repair reopens the run.
    complete: watch::Sender<bool>,
}

struct RoomInner {
    /// Whether and how events are published here.
    authority: Authority,
    /// `seq` of the last event published (committed or not).
    published: Seq,
    /// Every committed event folded in; source of snapshots.
    state: RunState,
    /// The newest events, oldest first, for `since` replay.
    log: VecDeque<Frame>,
    /// Capacity of `log`.
    log_window: usize,
}

/// Who appends to a run's log, as seen by one room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// This process is the only one that drives the run (a single server): no lease.
    Sole,
    /// This instance of a cluster holds the run's lease with this epoch. Its events carry the
    /// epoch, and the store refuses them once another instance has claimed the run.
    Leased(i64),
    /// Another instance drives the run. Its committed events arrive through [`Room::follow`];
    /// nothing is published here.
    Mirror,
}

/// What [`Room::follow`] did with an event another instance committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Followed {
    /// Folded and broadcast: it was the next one.
    Folded,
    /// Already here (or this instance drives the run now): nothing changed.
    Known,
    /// Events after `after` and before this one are missing: read them from the store first.
    Gap { after: Seq },
}

/// What a new subscriber gets: everything it missed, then the live stream.
pub struct Subscription {
    /// Frames to send first, in order: either a single snapshot or the replay after `since`.
    pub backlog: Vec<Frame>,
    /// Live frames with `seq` above the backlog's last.
    pub live: broadcast::Receiver<Frame>,
    /// `seq` of the last frame of the backlog (the client's position once it is sent).
    pub position: Seq,
    /// Events `from ..= to` that must be read from the store and sent before the backlog,
    /// because they left the in-memory window.
    pub from_store: Option<(Seq, Seq)>,
}

impl Room {
    /// A room whose run has had the events folded into `state`. With a `writer`, events are
    /// committed once stored.
    /// `recent` are the newest committed frames (after a restart), for `since` replay.
    pub fn new(state: RunState, limits: RoomLimits, writer: Option<Writer>, recent: Vec<Frame>) -> Arc<Self> {
        Room::with_authority(Authority::Sole, state, limits, writer, recent)
    }

    /// A room of a run another instance drives ([`Authority::Mirror`]); `writer` is this
    /// instance's, for replays from the store and for taking the run over later.
    pub fn mirror(state: RunState, limits: RoomLimits, writer: Writer, recent: Vec<Frame>) -> Arc<Self> {
        Room::with_authority(Authority::Mirror, state, limits, Some(writer), recent)
    }

    fn with_authority(
        authority: Authority,
        state: RunState,
        limits: RoomLimits,
        writer: Option<Writer>,
        recent: Vec<Frame>,
    ) -> Arc<Self> {
        let (live, _) = broadcast::channel(limits.subscriber_queue.max(1));
        let complete = watch::Sender::new(state.results.is_some());
        Arc::new_cyclic(|me| Room {
            dag_id: state.dag_id.as_str().into(),
            me: me.clone(),
            writer,
            storage_failed: AtomicBool::new(false),
            halt: Mutex::new(CancellationToken::new()),
            relay: OnceLock::new(),
            on_fenced: OnceLock::new(),
            milestones: OnceLock::new(),
            trace_id: Mutex::new(None),
            feed: OnceLock::new(),
            inner: Mutex::new(RoomInner {
                authority,
                published: state.seq,
                state,
                log: recent.into_iter().collect(),
                log_window: limits.log_window.max(1),
            }),
            live,
            shards: fanout::Shards::default(),
            socket_backlog: limits.socket_backlog.max(1),
            live_capacity: limits.subscriber_queue.max(1),
            complete,
        })
    }

    /// Records a gate decision as its round's one decision before it is published
    /// ([`crate::store::Store::claim_decision`]). `None` when the room stores nothing: there is
    /// no other decider to race, and the decision stands.
    pub fn claim_decision(&self, decision: DecisionRow) -> Option<BoxFuture<'static, Result<Claim, StoreError>>> {
        let store = Arc::clone(self.writer.as_ref()?.store());
        let dag_id = Arc::clone(&self.dag_id);
        Some(Box::pin(async move { store.claim_decision(&dag_id, decision).await }))
    }

    /// The decision the store holds for gate `node_id`'s wait `round`, if any; `None` when the
    /// room stores nothing.
    pub fn recorded_decision(
        &self,
        node_id: &str,
        round: i64,
    ) -> Option<BoxFuture<'static, Result<Option<DecisionRow>, StoreError>>> {
        let store = Arc::clone(self.writer.as_ref()?.store());
        let (dag_id, node_id) = (Arc::clone(&self.dag_id), node_id.to_owned());
        Some(Box::pin(async move {
            let decisions = store.decisions(&dag_id).await?;
            Ok(decisions.into_iter().find(|d| d.node_id == node_id && d.round == round))
        }))
    }

    /// Appends an event to the run: next `seq`, serialize once, then store and commit.
    pub fn publish(&self, body: ServerEventBody) -> Seq {
        let mut inner = self.lock();
        let epoch = match inner.authority {
            Authority::Sole => None,
            Authority::Leased(epoch) => Some(epoch),
            Authority::Mirror => {
                // The coordinator of a run this instance was fenced out of, between losing the
                // lease and seeing its halt: the run's owner publishes now.
                tracing::debug!(dag_id = %self.dag_id, "event of a run driven elsewhere dropped");
                return inner.published;
            }
        };
        inner.published += 1;
        let event = ServerEvent { seq: inner.published, body };
        let text = encode(&event);
        let frame = Frame { seq: event.seq, text: Utf8Bytes::from(text.clone()) };
        let seq = event.seq;
        match &self.writer {
            Some(writer) => {
                let mut stored = StoredEvent::new(Arc::clone(&self.dag_id), &event, text.into(), now_rfc3339().into());
                stored.epoch = epoch;
                let pending = Pending { room: self.me.clone(), event, frame, stored };
                // Handed over under the lock, so the writer sees this room's events in order.
                if let Err(pending) = writer.submit(pending) {
                    drop(inner);
                    self.commit(pending.event, pending.frame);
                    self.fail_storage(&StoreError("the storage writer has stopped".into()));
                }
            }
            None => {
                let milestone = is_milestone(&event.body);
                inner.commit(event, frame, &self.live, &self.complete);
                drop(inner);
                if milestone {
                    self.announce();
                }
            }
        }
        seq
    }

    /// Folds, logs and broadcasts an event (the writer calls this once it is stored), and hands
    /// it to the relay, if there is one.
    ///
    /// In a cluster, the run's end also ends this instance's part in it: the store freed its
    /// lease with the end, so the room becomes a mirror and the coordinator stops; a repair
    /// reopens the run on whichever instance it reaches ([`crate::runs::Runs::reopen`]).
    pub fn commit(&self, event: ServerEvent, frame: Frame) {
        let milestone = is_milestone(&event.body);
        let ended = matches!(event.body, ServerEventBody::ExecutionComplete { .. });
        if milestone && let Some(milestones) = self.milestones.get() {
            // Nobody listening (the server is stopping) is fine.
            let _ = milestones.send(Milestone {
                dag_id: Arc::clone(&self.dag_id),
                event: event.clone(),
                trace_id: self.trace_id(),
            });
        }
        self.lock().commit(event, frame.clone(), &self.live, &self.complete);
        if let Some(relay) = self.relay.get() {
            // The relay ends only when the cluster shuts down; then nobody needs the event.
            let _ = relay.send(Relayed { dag_id: Arc::clone(&self.dag_id), frame, trace_id: self.trace_id() });
        }
        if ended
            && let Authority::Leased(epoch) = self.authority()
            && self.stop_driving(epoch)
        {
            tracing::debug!(parent: &self.lines(), dag_id = %self.dag_id, epoch, "run ended: its lease is over");
        }
        if milestone {
            self.announce();
        }
    }

    /// Takes in an event the run's owner (another instance) committed: folds and broadcasts it
    /// if it is the next one. Events this room already has, and every event while this
    /// instance drives the run itself, change nothing.
    pub fn follow(&self, event: ServerEvent, frame: Frame) -> Followed {
        let milestone = is_milestone(&event.body);
        let mut inner = self.lock();
        if inner.authority != Authority::Mirror || event.seq <= inner.state.seq {
            return Followed::Known;
        }
        if event.seq > inner.state.seq + 1 {
            return Followed::Gap { after: inner.state.seq };
        }
        inner.commit(event, frame, &self.live, &self.complete);
        inner.published = inner.state.seq;
        drop(inner);
        if milestone {
            self.announce();
        }
        Followed::Folded
    }

    /// How events are published here now.
    pub fn authority(&self) -> Authority {
        self.lock().authority
    }

    /// This instance now holds the run's lease with `epoch` and drives the run from the state
    /// the room has folded (which must be the whole stored log). Answers the halt token of the
    /// new coordinator.
    pub fn take_over(&self, epoch: i64) -> CancellationToken {
        let mut inner = self.lock();
        inner.authority = Authority::Leased(epoch);
        inner.published = inner.state.seq;
        let halt = CancellationToken::new();
        *self.halt.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = halt.clone();
        halt
    }

    /// The store refused this instance's events of lease `epoch`: another instance claimed the
    /// run. If this room still drives it with that epoch, it becomes a mirror, its coordinator
    /// is halted (publishing nothing more) and the registry is told. Events published and not
    /// stored are forgotten: the new owner numbers its own from the stored log.
    pub fn fence(&self, epoch: i64) {
        if self.stop_driving(epoch) {
            tracing::warn!(parent: &self.lines(), dag_id = %self.dag_id, epoch, "lease lost: another instance drives this run now");
        }
    }

    /// Like [`Room::fence`], when this instance gives the run up itself (it leaves the cluster).
    pub fn hand_over(&self, epoch: i64) {
        if self.stop_driving(epoch) {
            tracing::info!(parent: &self.lines(), dag_id = %self.dag_id, epoch, "run handed over to the other instances");
        }
    }

    /// This instance stops driving the run it drove with lease `epoch`: the room becomes a
    /// mirror, the coordinator is halted and the registry is told. False (and nothing changes)
    /// when the room does not drive it with that epoch.
    pub fn stop_driving(&self, epoch: i64) -> bool {
        let mut inner = self.lock();
        if inner.authority != Authority::Leased(epoch) {
            return false;
        }
        inner.authority = Authority::Mirror;
        inner.published = inner.state.seq;
        drop(inner);
        self.halt().cancel();
        if let Some(on_fenced) = self.on_fenced.get() {
            let _ = on_fenced.send(Arc::clone(&self.dag_id));
        }
        true
    }

    /// The token the run's current coordinator stops on.
    pub fn halt(&self) -> CancellationToken {
        self.halt.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Where this room's milestones go (set once, when notifications are on).
    pub fn set_milestones(&self, milestones: mpsc::UnboundedSender<Milestone>) {
        let _ = self.milestones.set(milestones);
    }

    /// The trace id of the run's current trace, if traces are exported.
    pub fn trace_id(&self) -> Option<Arc<str>> {
        self.trace_id.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The run's current trace is `trace_id` from now on (a new coordinator made it, or the
    /// owner's events say so).
    pub fn set_trace_id(&self, trace_id: Option<Arc<str>>) {
        *self.trace_id.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = trace_id;
    }

    /// The span to log lines about this run in, outside its coordinator: it names the run's
    /// trace ([`crate::telemetry::lines_span`]).
    pub fn lines(&self) -> tracing::Span {
        crate::telemetry::lines_span(self.trace_id().as_deref())
    }

    /// Where committed events are handed on, and who hears of a lost lease (set once, by a
    /// cluster member).
    pub fn set_cluster_links(&self, relay: mpsc::UnboundedSender<Relayed>, on_fenced: mpsc::UnboundedSender<Arc<str>>) {
        let _ = self.relay.set(relay);
        let _ = self.on_fenced.set(on_fenced);
    }

    /// Where to announce changes of this run's line in the run list (set once).
    pub fn set_feed(&self, feed: broadcast::Sender<Arc<str>>) {
        let _ = self.feed.set(feed);
    }

    /// Tells the run list feed that this run's line changed.
    pub fn announce(&self) {
        if let Some(feed) = self.feed.get() {
            // Nobody listening is fine.
            let _ = feed.send(Arc::clone(&self.dag_id));
        }
    }

    /// Waits while the writer's queue is full (the disk is behind) or the room's fan-out is
    /// half its broadcast ring behind ([`fanout::Shards::ready`]): whoever publishes for this run
    /// waits here before taking more work.
    pub async fn ready(&self) {
        if let Some(writer) = &self.writer {
            writer.ready().await;
        }
        let slack = (self.live_capacity / 2) as u64;
        self.shards.ready(|| self.lock().published, slack).await;
    }

    /// True once storing this run's events failed.
    pub fn storage_failed(&self) -> bool {
        self.storage_failed.load(Ordering::Acquire)
    }

    /// Stops the run because its events cannot be stored: says so to every viewer (these last
    /// events are not stored either) and halts the coordinator. Only the first call acts.
    ///
    /// In a cluster the run is not failed: this instance lets it go (as if fenced) and stops
    /// renewing its lease, so an instance that can store claims it once the lease runs out.
    pub fn fail_storage(&self, error: &StoreError) {
        if let Authority::Leased(epoch) = self.authority() {
            tracing::error!(parent: &self.lines(), dag_id = %self.dag_id, %error, "storage failed; letting the run go to another instance");
            self.fence(epoch);
            return;
        }
        if self.storage_failed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.halt().cancel();
        self.publish(ServerEventBody::Error {
            node_id: None,
            message: format!("storage failed, run stopped: {error}"),
        });
        self.publish(ServerEventBody::RunStateChanged { state: RunPhase::Failed });
        self.publish(ServerEventBody::ExecutionComplete { results: Default::default() });
    }

    /// Starts a subscription. Without `since`, or when `since` is in the future, the backlog is
    /// a snapshot; otherwise it is exactly the events after `since`, from the window and (with
    /// a store, for older ones) from [`Subscription::from_store`].
    pub fn subscribe(&self, since: Option<Seq>) -> Subscription {
        let inner = self.lock();
        let live = self.live.subscribe();
        let position = inner.state.seq;
        let replay = |since: Seq| inner.log.iter().filter(move |frame| frame.seq > since).cloned().collect();
        let (backlog, from_store) = match since {
            Some(since) if inner.can_replay_after(since) => (replay(since), None),
            Some(since) if since < position && self.writer.is_some() && !self.storage_failed() => {
                let oldest = inner.log.front().map_or(position + 1, |frame| frame.seq);
                (replay(oldest - 1), Some((since + 1, oldest - 1)))
            }
            Some(_) | None => (vec![inner.snapshot_frame()], None),
        };
        Subscription { backlog, live, position, from_store }
    }

    pub fn dag_id(&self) -> &str {
        &self.dag_id
    }

    /// The run's state as of its last committed event.
    pub fn snapshot(&self) -> RunState {
        self.lock().state.clone()
    }

    pub fn summary(&self) -> RunSummary {
        self.lock().state.summary()
    }

    /// The gates of the run that wait for `person` (without copying the whole state).
    pub fn inbox(&self, person: &crate::protocol::SignedIn) -> Vec<crate::protocol::InboxGate> {
        self.lock().state.inbox(person)
    }

    /// Dashboards subscribed to the run, and the most events one of them has still to send.
    pub fn fanout(&self) -> (usize, usize) {
        let (sockets, deepest, shards) = self.shards.load();
        let others = self.live.receiver_count().saturating_sub(shards);
        (sockets + others, deepest.max(self.live.len()))
    }

    /// `seq` of the newest committed event.
    pub fn seq(&self) -> Seq {
        self.lock().state.seq
    }

    /// The newest committed events (at most the log window), for a timeline.
    pub fn recent_events(&self, after: Seq) -> Vec<Frame> {
        self.lock().log.iter().filter(|frame| frame.seq > after).cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, RoomInner> {
        // A panic while holding this lock leaves at worst a partly folded event; the state is
        // still usable, so recover the guard rather than poisoning every later caller.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True once the run has sent `execution_complete`.
    pub fn is_complete(&self) -> bool {
        *self.complete.borrow()
    }

    /// Waits until the run has sent `execution_complete`.
    pub async fn completed(&self) {
        let mut complete = self.complete.subscribe();
        // The sender lives as long as the room, so this only ends when the run completes.
        let _ = complete.wait_for(|done| *done).await;
    }

    /// Waits until a repair has reopened the ended run (its `running` state is here).
    pub async fn reopened(&self) {
        let mut complete = self.complete.subscribe();
        // The sender lives as long as the room, so this only ends when the run is reopened.
        let _ = complete.wait_for(|done| !*done).await;
    }
}

/// True for events that change a run's course (gates, spend, its state, its end): they change
/// its line in the run list and who its gates wait for (the inbox), and they are what
/// notifications are made of.
pub fn is_milestone(body: &ServerEventBody) -> bool {
    match body {
        ServerEventBody::NodeState { status, .. } => status.is_terminal(),
        ServerEventBody::RunStateChanged { .. }
        | ServerEventBody::CostUpdate { .. }
        | ServerEventBody::HumanGateWaiting { .. }
        | ServerEventBody::GateReminder { .. }
        | ServerEventBody::GateProgress { .. }
        | ServerEventBody::GateResolved { .. }
        | ServerEventBody::DagMutated { .. }
        | ServerEventBody::ExecutionComplete { .. }
        | ServerEventBody::RunRepaired { .. } => true,
        ServerEventBody::EdgeActive { .. }
        | ServerEventBody::Error { .. }
        | ServerEventBody::Snapshot { .. }
        | ServerEventBody::NodeLog { .. } => false,
    }
}

impl RoomInner {
    fn commit(
        &mut self,
        event: ServerEvent,
        frame: Frame,
        live: &broadcast::Sender<Frame>,
        complete: &watch::Sender<bool>,
    ) {
        if self.state.apply(&event) != Applied::Folded {
            tracing::error!(seq = event.seq, state_seq = self.state.seq, "event committed out of order; dropped");
            return;
        }
        if self.log.len() == self.log_window {
            self.log.pop_front();
        }
        self.log.push_back(frame.clone());
        // No receivers is not an error: nobody is watching right now.
        let _ = live.send(frame);
        if matches!(event.body, ServerEventBody::ExecutionComplete { .. }) {
            complete.send_replace(true);
        } else if let ServerEventBody::RunStateChanged { state } = &event.body
            && !state.is_terminal()
            && *complete.borrow()
        {
            // A repair reopened the run.
            complete.send_replace(false);
        }
    }

    fn can_replay_after(&self, since: Seq) -> bool {
        let newest = self.state.seq;
        if since > newest {
            return false;
        }
        if since == newest {
            return true;
        }
        // Events since+1 ..= newest must all be in the window.
        self.log.front().is_some_and(|oldest| oldest.seq <= since + 1)
    }

    fn snapshot_frame(&self) -> Frame {
        let event =
            ServerEvent { seq: self.state.seq, body: ServerEventBody::Snapshot { run: Box::new(self.state.clone()) } };
        Frame { seq: event.seq, text: encode(&event).into() }
    }
}

/// Serializes an event. Our types have only string map keys and no custom serializers, so this
/// cannot fail; if it ever did, subscribers get an `error` in its place rather than nothing.
pub fn encode(event: &ServerEvent) -> String {
    serde_json::to_string(event).unwrap_or_else(|error| {
        tracing::error!(seq = event.seq, %error, "event could not be serialized");
        format!(r#"{{"type":"error","seq":{},"message":"event could not be serialized"}}"#, event.seq)
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::protocol::{GraphNode, NodeKind, NodeStatus};

    /// A room of one node, `a`, with no writer (events are committed as they are published).
    pub(super) fn room(limits: RoomLimits) -> Arc<Room> {
        let node = GraphNode { id: "a".into(), label: "A".into(), kind: NodeKind::Simulate };
        Room::new(RunState::new("r", "t", "now", 1.0, [(node, vec![])]), limits, None, Vec::new())
    }

    /// Node `a` changes to `status`.
    pub(super) fn status(status: NodeStatus) -> ServerEventBody {
        ServerEventBody::NodeState { node_id: "a".into(), status, output: None, metrics: None }
    }

    fn parse(frame: &Frame) -> ServerEvent {
        serde_json::from_str(frame.text.as_str()).expect("frames are valid events")
    }

    #[test]
    fn publish_assigns_contiguous_seq_and_folds_state() {
        let room = room(RoomLimits::default());
        assert_eq!(room.publish(status(NodeStatus::Running)), 1);
        assert_eq!(room.publish(status(NodeStatus::Completed)), 2);
        assert_eq!(room.snapshot().nodes["a"].status, NodeStatus::Completed);
        assert_eq!(room.seq(), 2);
    }

    #[test]
    fn subscribe_without_since_starts_with_a_snapshot_then_live() {
        let room = room(RoomLimits::default());
        room.publish(status(NodeStatus::Running));
        let mut sub = room.subscribe(None);
        assert_eq!(sub.backlog.len(), 1);
        assert!(matches!(parse(&sub.backlog[0]).body, ServerEventBody::Snapshot { .. }));
        assert_eq!(sub.position, 1);
        room.publish(status(NodeStatus::Completed));
        assert_eq!(sub.live.try_recv().map(|f| f.seq).ok(), Some(2));
    }

    #[test]
    fn since_replays_exactly_the_missed_events_or_falls_back_to_a_snapshot() {
        let room = room(RoomLimits { log_window: 3, subscriber_queue: 8, ..RoomLimits::default() });
        for _ in 0..5 {
            room.publish(status(NodeStatus::Running));
        }
        let seqs =
            |since| room.subscribe(Some(since)).backlog.iter().map(|f| (f.seq, is_snapshot(f))).collect::<Vec<_>>();
        assert_eq!(seqs(3), [(4, false), (5, false)]);
        assert_eq!(seqs(2), [(3, false), (4, false), (5, false)]);
        assert_eq!(seqs(5), [], "up to date: nothing to send");
        assert_eq!(seqs(1), [(5, true)], "event 2 left the window");
        assert_eq!(seqs(9), [(5, true)], "a future seq gets a snapshot");
    }

    fn is_snapshot(frame: &Frame) -> bool {
        matches!(parse(frame).body, ServerEventBody::Snapshot { .. })
    }

    mod property {
        //! For random event sequences and random disconnect points, a client that folds
        //! snapshot + replay + live events with the shared reducer ends equal to the server.

        use proptest::prelude::*;

        use super::*;
        use crate::protocol::{Cost, LogStream, NodeMetrics};

        fn body(choice: u8, node: u8, value: u16) -> ServerEventBody {
            let node_id = format!("n{}", node % 4);
            match choice % 5 {
                0 => ServerEventBody::NodeState {
                    node_id,
                    status: [NodeStatus::Running, NodeStatus::Completed, NodeStatus::Failed][value as usize % 3],
                    output: None,
                    metrics: Some(NodeMetrics { attempt: Some(u32::from(value % 3) + 1), ..NodeMetrics::default() }),
                },
                1 => {
                    let Cost { budget, .. } = Cost { spent: 0.0, budget: 10.0, remaining: 10.0 };
                    let spent = f64::from(value) / 100.0;
                    ServerEventBody::CostUpdate { spent, budget, remaining: budget - spent }
                }
                2 => ServerEventBody::NodeLog { node_id, stream: LogStream::Stdout, line: format!("line {value}") },
                3 => ServerEventBody::EdgeActive { from: format!("n{}", value % 4), to: node_id },
                _ => ServerEventBody::Error { node_id: Some(node_id), message: format!("e{value}") },
            }
        }

        fn nodes() -> Vec<(GraphNode, Vec<String>)> {
            (0..4)
                .map(|i| (GraphNode { id: format!("n{i}"), label: format!("N{i}"), kind: NodeKind::Simulate }, vec![]))
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
            #[test]
            fn snapshot_replay_and_live_fold_to_the_servers_state(
                events in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u16>()), 1..200),
                // Where the client drops its connection (event index) and how much it reads.
                cuts in prop::collection::vec(0usize..200, 0..12),
                window in 1usize..40,
                queue in 1usize..40,
            ) {
                let room = Room::new(RunState::new("r", "t", "now", 10.0, nodes()), RoomLimits { log_window: window, subscriber_queue: queue, ..RoomLimits::default() }, None, Vec::new());
                let mut client: Option<RunState> = None;
                let mut subscription = room.subscribe(None);
                let mut cuts = cuts;
                cuts.sort_unstable();
                let mut next_cut = cuts.into_iter().peekable();
                for (index, (choice, node, value)) in events.into_iter().enumerate() {
                    room.publish(body(choice, node, value));
                    if next_cut.peek() == Some(&index) {
                        while next_cut.peek() == Some(&index) { next_cut.next(); }
                        // Take in what arrived, as far as the live queue kept it, then reconnect.
                        let state = client.get_or_insert_with(|| RunState::new("r", "t", "now", 10.0, nodes()));
                        for frame in subscription.backlog.drain(..) {
                            let event: ServerEvent = serde_json::from_str(frame.text.as_str()).expect("valid");
                            state.apply(&event);
                        }
                        while let Ok(frame) = subscription.live.try_recv() {
                            let event: ServerEvent = serde_json::from_str(frame.text.as_str()).expect("valid");
                            prop_assert_ne!(state.apply(&event), Applied::Gap { expected: state.seq + 1 });
                        }
                        subscription = room.subscribe(Some(state.seq));
                    }
                }
                let state = client.get_or_insert_with(|| RunState::new("r", "t", "now", 10.0, nodes()));
                for frame in subscription.backlog.drain(..) {
                    let event: ServerEvent = serde_json::from_str(frame.text.as_str()).expect("valid");
                    state.apply(&event);
                }
                loop {
                    match subscription.live.try_recv() {
                        Ok(frame) => {
                            let event: ServerEvent = serde_json::from_str(frame.text.as_str()).expect("valid");
                            state.apply(&event);
                        }
                        // Lagged: the server would close with 4008 and the client resync.
                        Err(broadcast::error::TryRecvError::Lagged(_)) => {
                            subscription = room.subscribe(Some(state.seq));
                            for frame in subscription.backlog.drain(..) {
                                let event: ServerEvent = serde_json::from_str(frame.text.as_str()).expect("valid");
                                state.apply(&event);
                            }
                        }
                        Err(_) => break,
                    }
                }
                prop_assert_eq!(&*state, &room.snapshot());
            }
        }
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_told_it_lagged() {
        let room = room(RoomLimits { log_window: 16, subscriber_queue: 2, ..RoomLimits::default() });
        let mut slow = room.subscribe(None);
        let mut fast = room.subscribe(None);
        for i in 0..4 {
            room.publish(status(NodeStatus::Running));
            assert_eq!(fast.live.try_recv().map(|f| f.seq).ok(), Some(i + 1));
        }
        assert!(matches!(slow.live.try_recv(), Err(broadcast::error::TryRecvError::Lagged(_))));
    }
}
