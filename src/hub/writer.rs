//! The writer: one task that stores the events of every room in batches (group commit), then
//! hands each back to its room to be folded and broadcast. Nobody sees an event before it is
//! stored.
//!
//! What bounds memory when the disk stalls: the queue holds at most [`MAX_QUEUED`] events
//! (plus what one coordinator step publishes at once, a few events; a budget gate one per
//! unstarted node). While it is full, [`Writer::ready`] waits, and every coordinator waits on
//! it before it takes its next node message; node tasks then wait on their coordinator's bounded
//! queue, and commands on their pipes. Commands from dashboards are few and rate-limited.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::{Notify, mpsc};

use super::{Frame, Room};
use crate::protocol::ServerEvent;
use crate::store::{Store, StoredEvent};

/// Largest batch committed at once. Committed events reach subscribers all at once, so this
/// stays well below a subscriber's queue (`RoomLimits::subscriber_queue`).
const MAX_BATCH: usize = 1024;

/// A stored batch on its way to the committer, with the (run, epoch) whose events the store
/// refused because the run's lease was lost ([`crate::store::Appended::fenced`]).
type StoredBatch = (Vec<Pending>, Vec<(Arc<str>, i64)>);

/// An event waiting for its commit, and the room that folds and broadcasts it after.
pub struct Pending {
    pub room: Weak<Room>,
    pub event: ServerEvent,
    pub frame: Frame,
    pub stored: StoredEvent,
}

/// Events the queue holds before publishers are asked to wait ([`Writer::ready`]): a few of the
/// largest batches, so the disk always has the next batch ready while one commits.
pub const MAX_QUEUED: usize = 4 * MAX_BATCH;

/// The handle rooms use to hand events to the writer.
#[derive(Clone)]
pub struct Writer {
    /// Unbounded as a channel, because [`Room::publish`] cannot wait; bounded by [`Writer::ready`]
    /// in front of the publishers.
    queue: mpsc::UnboundedSender<Pending>,
    /// Events submitted and not yet committed.
    queued: Arc<AtomicUsize>,
    /// Told whenever a batch was committed.
    drained: Arc<Notify>,
    /// Above this many queued events, [`Writer::ready`] waits.
    bound: usize,
    /// The store the writer commits to, also where rooms record gate decisions.
    store: Arc<dyn Store>,
}

impl Writer {
    /// Starts the writer task on the current runtime, with a queue of [`MAX_QUEUED`] events. It
    /// ends when every `Writer` is dropped and the queue is drained.
    pub fn spawn(store: Arc<dyn Store>) -> Self {
        Writer::spawn_bounded(store, MAX_QUEUED)
    }

    /// [`Writer::spawn`] with a queue of `bound` events.
    pub fn spawn_bounded(store: Arc<dyn Store>, bound: usize) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        tokio::spawn(write_loop(Arc::clone(&store), pending, Arc::clone(&queued), Arc::clone(&drained)));
        Writer { queue, queued, drained, bound: bound.max(1), store }
    }

    /// Queues an event; gives it back if the writer is gone (then nothing will store it).
    pub fn submit(&self, pending: Pending) -> Result<(), Box<Pending>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.queue.send(pending).map_err(|unsent| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            Box::new(unsent.0)
        })
    }

    /// The store events are committed to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Events submitted and not yet committed.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Waits while the queue is full (the disk is slower than the runs): publishers call this
    /// before they take more work.
    pub async fn ready(&self) {
        loop {
            let drained = self.drained.notified();
            if self.queued() < self.bound {
                return;
            }
            drained.await;
        }
    }
}

/// Stores batch after batch. A stored batch goes to the committer task, which folds and
/// broadcasts it while the next batch is being stored: the database and the fold overlap, and
/// the committer still takes batches in the order they were stored.
async fn write_loop(
    store: Arc<dyn Store>,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    // One batch folding while the next is stored (and one more ready to go).
    let (to_committer, stored) = mpsc::channel::<StoredBatch>(1);
    let committer = tokio::spawn(commit_loop(stored, queued, drained));
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Events of a run whose storage already failed are shown but no longer stored, so its
        // stored log stays a gap-free prefix.
        let rows: Vec<StoredEvent> = batch
            .iter()
            .filter(|p| p.room.upgrade().is_some_and(|room| !room.storage_failed()))
            .map(|p| p.stored.clone())
            .collect();
        let count = rows.len() as u64;
        let started = std::time::Instant::now();
        let fenced = match store.append(rows).await {
            Ok(appended) => {
                metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(crate::metrics::EVENTS_APPENDED).increment(count);
                appended.fenced
            }
            Err(error) => {
                fail_rooms(&batch, &error);
                Vec::new()
            }
        };
        let full = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        if to_committer.send((full, fenced)).await.is_err() {
            break;
        }
    }
    drop(to_committer);
    let _ = committer.await;
}

/// Storing `batch` failed: stops every run it has events of.
fn fail_rooms(batch: &[Pending], error: &crate::store::StoreError) {
    tracing::error!(%error, "storage failed; stopping the affected runs");
    // Marked before the next batch is taken, so none of their later events is stored.
    let mut failed_rooms: Vec<Arc<Room>> = Vec::new();
    for room in batch.iter().filter_map(|p| p.room.upgrade()) {
        if !failed_rooms.iter().any(|r| Arc::ptr_eq(r, &room)) {
            failed_rooms.push(room);
        }
    }
    for room in failed_rooms {
        room.fail_storage(error);
    }
}

/// Folds and broadcasts each stored batch in its rooms, in order (after a storage failure too:
/// those events are shown, not durable, and their runs stop), then lets waiting publishers go on.
///
/// Events the store refused because their run's lease was lost (`fenced`) are not committed:
/// their room stops driving the run ([`Room::fence`]) and follows the new owner instead.
async fn commit_loop(mut stored: mpsc::Receiver<StoredBatch>, queued: Arc<AtomicUsize>, drained: Arc<Notify>) {
    while let Some((batch, fenced)) = stored.recv().await {
        let taken = batch.len();
        for Pending { room, event, frame, stored } in batch {
            let Some(room) = room.upgrade() else { continue };
            match stored.epoch {
                Some(epoch) if fenced.iter().any(|(dag_id, stale)| *dag_id == stored.dag_id && *stale == epoch) => {
                    room.fence(epoch);
                }
                Some(_) | None => room.commit(event, frame),
            }
        }
        queued.fetch_sub(taken, Ordering::AcqRel);
        drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use futures::future::BoxFuture;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::engine::{DagSpec, EngineConfig, SpecFormat};
    use crate::hub::RoomLimits;
    use crate::protocol::{GraphNode, NodeKind, NodeStatus, RunState, Seq, ServerEventBody};
    use crate::store::{Appended, Claim, DecisionRow, RunRecord, StoreError};

    /// A disk that stalls: each batch waits for a permit; the test hands them out.
    struct StalledDisk {
        permits: Semaphore,
        stored: Mutex<Vec<Seq>>,
    }

    impl Store for StalledDisk {
        fn create_run(&self, _: RunRecord) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
        fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<Appended, StoreError>> {
            Box::pin(async move {
                let permit = self.permits.acquire().await.map_err(|e| StoreError(e.to_string()))?;
                permit.forget();
                self.stored.lock().map_err(|e| StoreError(e.to_string()))?.extend(events.iter().map(|e| e.seq));
                Ok(Appended::default())
            })
        }
        fn runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn events(&self, _: &str, _: Seq, _: Seq) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn claim_decision(&self, _: &str, _: DecisionRow) -> BoxFuture<'_, Result<Claim, StoreError>> {
            Box::pin(async { Ok(Claim::Won) })
        }
        fn decisions(&self, _: &str) -> BoxFuture<'_, Result<Vec<DecisionRow>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn stalled() -> Arc<StalledDisk> {
        Arc::new(StalledDisk { permits: Semaphore::new(0), stored: Mutex::new(Vec::new()) })
    }

    /// While the disk stalls, publishers that wait on `ready` stop at the bound; once it moves,
    /// everything is stored and committed, in order.
    #[tokio::test]
    async fn a_stalled_disk_holds_publishers_at_the_queue_bound() {
        const BOUND: usize = 64;
        let disk = stalled();
        let writer = Writer::spawn_bounded(Arc::clone(&disk) as Arc<dyn Store>, BOUND);
        let node = GraphNode { id: "a".into(), label: "A".into(), kind: NodeKind::Simulate };
        let state = RunState::new("r", "t", "now", 0.0, [(node, vec![])]);
        let room = Room::new(state, RoomLimits::default(), Some(writer.clone()), Vec::new());
        let published = Arc::new(AtomicUsize::new(0));
        let publisher = {
            let (room, published) = (Arc::clone(&room), Arc::clone(&published));
            tokio::spawn(async move {
                for _ in 0..1000 {
                    room.ready().await;
                    room.publish(ServerEventBody::NodeState {
                        node_id: "a".into(),
                        status: NodeStatus::Running,
                        output: None,
                        metrics: None,
                    });
                    published.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let reached_bound = async {
            while published.load(Ordering::SeqCst) < BOUND {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), reached_bound).await.expect("publishes up to the bound");
        let went_past = async {
            while published.load(Ordering::SeqCst) <= BOUND {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(200), went_past).await.is_err(),
            "the publisher waits while the disk stalls"
        );
        assert_eq!(writer.queued(), BOUND);
        assert_eq!(room.seq(), 0, "nothing is committed (or shown) before it is stored");
        disk.permits.add_permits(10_000);
        tokio::time::timeout(Duration::from_secs(10), publisher).await.expect("all published").expect("no panic");
        let committed = async {
            while room.seq() < 1000 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), committed).await.expect("all committed");
        let stored = disk.stored.lock().expect("lock").clone();
        assert_eq!(stored, (1..=1000).collect::<Vec<Seq>>(), "stored once each, in order");
    }

    /// Group commit on each real database: two rooms publish interleaved events; every event
    /// is stored once, in order, byte for byte as it was sent, and a subscriber sees exactly
    /// what is stored.
    #[rstest::rstest]
    #[case::sqlite(crate::store::testing::Backend::Sqlite)]
    #[case::postgres(crate::store::testing::Backend::Postgres)]
    #[tokio::test]
    async fn what_subscribers_see_is_what_each_database_stored(#[case] backend: crate::store::testing::Backend) {
        let scratch = crate::store::testing::Scratch::new(backend, "group_commit").await;
        let store = crate::store::open(&scratch.database, 2).await.expect("opens");
        let writer = Writer::spawn(Arc::clone(&store));
        let node = GraphNode { id: "a".into(), label: "A".into(), kind: NodeKind::Simulate };
        let mut rooms = Vec::new();
        for dag_id in ["r1", "r2"] {
            let record = RunRecord {
                dag_id: dag_id.into(),
                name: "t".into(),
                spec: "{}".into(),
                state: "running".into(),
                started_at: "now".into(),
                finished_at: None,
            };
            store.create_run(record).await.expect("run");
            let state = RunState::new(dag_id, "t", "now", 0.0, [(node.clone(), vec![])]);
            rooms.push(Room::new(state, RoomLimits::default(), Some(writer.clone()), Vec::new()));
        }
        let mut watching = rooms[0].subscribe(None);
        for i in 0..3000 {
            let room = &rooms[i % 2];
            room.ready().await;
            room.publish(ServerEventBody::NodeLog {
                node_id: "a".into(),
                stream: crate::protocol::LogStream::Stdout,
                line: format!("line {i} \u{e9}\"quoted\""),
            });
        }
        let mut seen = Vec::new();
        while seen.len() < 1500 {
            let frame = tokio::time::timeout(Duration::from_secs(10), watching.live.recv())
                .await
                .expect("in time")
                .expect("not lagging");
            seen.push(frame.text.as_str().to_owned());
        }
        assert_eq!(store.events("r1", 0, Seq::MAX).await.expect("events"), seen, "stored as shown, in order");
        assert_eq!(store.events("r2", 0, Seq::MAX).await.expect("events").len(), 1500);
    }

    /// A coordinator with a thousand instant nodes and a stalled disk stops taking node
    /// messages near the bound; its memory does not grow with the run.
    #[tokio::test]
    async fn a_coordinator_waits_for_a_stalled_disk() {
        const BOUND: usize = 100;
        let disk = stalled();
        let writer = Writer::spawn_bounded(Arc::clone(&disk) as Arc<dyn Store>, BOUND);
        let mut text = String::from("name = \"wide\"\nmax_parallel = 64\n");
        for i in 0..1000 {
            text.push_str(&format!("[[nodes]]\nid = \"n{i}\"\nkind = \"simulate\"\nduration = \"0ms\"\n"));
        }
        let spec = DagSpec::parse(&text, SpecFormat::Toml).expect("valid spec");
        let nodes = spec.nodes.iter().map(|node| (node.graph_node(), node.needs.clone()));
        let state = RunState::new("wide", "wide", "now", 0.0, nodes);
        let room = Room::new(state, RoomLimits::default(), Some(writer.clone()), Vec::new());
        let config = EngineConfig::new(std::env::temp_dir().join("dagstream-writer-test"));
        // Held: a run whose handles are all dropped stops.
        let _handle = crate::engine::run::spawn("wide", spec, Arc::clone(&room), &config);
        // Let it run into the stall, then watch the queue for a while.
        let mut most = 0;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            most = most.max(writer.queued());
        }
        // One node message publishes a few events (running, completed), the start of a node
        // one more per input edge: a step past the bound, never the whole run (3 000+ events).
        assert!(most >= BOUND, "the run reached the bound ({most})");
        assert!(most <= BOUND + 200, "the queue stays near its bound: {most}");
        disk.permits.add_permits(100_000);
        tokio::time::timeout(Duration::from_secs(30), room.completed())
            .await
            .expect("the run completes once the disk moves");
        let stored = disk.stored.lock().expect("lock").len();
        assert_eq!(stored as Seq, room.seq(), "every event is stored");
    }
}
