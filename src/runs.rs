//! Every run this server knows: start one from a spec, find one by id, list them; with a store,
//! every run is recorded, and at start-up every stored run is loaded again and resumed.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use futures::future::BoxFuture;

use tokio::sync::{broadcast, mpsc};

use crate::engine::{self, DagSpec, EngineConfig, RunHandle, SpecError};
use crate::external::{EngineLink, ExternalRun};
use crate::hub::Writer;
use crate::hub::{Authority, Frame, Room, RoomLimits};
use crate::protocol::{Applied, ClientEvent, RunPhase, RunState, RunSummary, Seq, ServerEvent, ServerEventBody};
use crate::store::{RunRecord, Store, StoreError};

/// Changes the run list feed holds for a slow reader before it must reload the whole list.
const FEED_QUEUE: usize = 1024;

/// One run: its room (state, log, subscribers) and what drives it.
#[derive(Clone)]
pub struct RunEntry {
    pub room: Arc<Room>,
    /// Where the run's commands go.
    pub driver: Driver,
    /// The spec it runs, as started (to run it again); `None` for runs an external engine
    /// drives, and for stored runs whose spec cannot be read.
    pub spec: Option<Arc<DagSpec>>,
}

/// What drives a run, and so where its commands go.
#[derive(Clone)]
pub enum Driver {
    /// This server's engine: the run's coordinator takes commands through the handle (and
    /// refuses them itself once the run has ended).
    Engine(RunHandle),
    /// An external engine, through its link (commands wait for it while it is away).
    External(Arc<EngineLink>),
    /// Another instance of the cluster: this one mirrors the run, and hands its commands to
    /// that instance ([`ClusterLink::forward`]).
    Remote,
    /// Nothing: the run ended before this server loaded it, or could not be resumed.
    Ended,
}

impl RunEntry {
    /// The coordinator's handle, for a run this server's engine drives.
    pub fn handle(&self) -> Option<&RunHandle> {
        match &self.driver {
            Driver::Engine(handle) => Some(handle),
            Driver::External(_) | Driver::Remote | Driver::Ended => None,
        }
    }
}

/// Why a run could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A valid spec this server will not run.
    #[error("{0}")]
    Refused(String),
}

/// What a registry that is one instance of a cluster asks of the cluster
/// (`cluster::Member` answers).
pub trait ClusterLink: Send + Sync + 'static {
    /// Places a new, recorded run on a live instance: answers the lease epoch when this
    /// instance is to drive it, `None` when another one was chosen (and told).
    fn place(&self, dag_id: &str) -> BoxFuture<'_, Result<Option<i64>, StoreError>>;
    /// Hands a command on a run another instance drives to that instance and answers its
    /// verdict, or why it could not be asked (in words for the user).
    fn forward(&self, dag_id: &str, event: ClientEvent, actor: &str) -> BoxFuture<'_, Result<(), String>>;
    /// Claims an ended run's lease for a repair that reopens it: answers the lease epoch, or
    /// `None` when another instance reopened it first and holds it now.
    fn reopen(&self, dag_id: &str) -> BoxFuture<'_, Result<Option<i64>, StoreError>>;
}

/// A registry's ties to its cluster.
struct Membership {
    link: Arc<dyn ClusterLink>,
    /// Where every room hands its committed events, for the other instances.
    relay: mpsc::UnboundedSender<crate::hub::Relayed>,
    /// Where rooms report a lost lease.
    fenced: mpsc::UnboundedSender<Arc<str>>,
}

/// The registry of runs. Cheap to share behind an `Arc`.
pub struct Runs {
    /// Runs by `dag_id`.
    by_id: RwLock<HashMap<String, RunEntry>>,
    /// Buffer sizes for every new room.
    limits: RoomLimits,
    /// Where runs execute.
    engine: EngineConfig,
    /// Where runs and events are stored, with the writer that commits them; `None`: memory only.
    storage: Option<(Arc<dyn Store>, Writer)>,
    /// The id of every run whose line in the run list changed (new runs included).
    feed: broadcast::Sender<Arc<str>>,
    /// Set when this registry is one instance of a cluster ([`Runs::join`]).
    cluster: OnceLock<Membership>,
    /// Where every room hands its milestones, when notifications are on ([`Runs::notify_into`]).
    milestones: OnceLock<mpsc::UnboundedSender<crate::hub::Milestone>>,
}

impl Runs {
    /// A registry that keeps everything in memory.
    pub fn new(limits: RoomLimits, engine: EngineConfig) -> Self {
        Runs {
            by_id: RwLock::new(HashMap::new()),
            limits,
            engine,
            storage: None,
            feed: broadcast::channel(FEED_QUEUE).0,
            cluster: OnceLock::new(),
            milestones: OnceLock::new(),
        }
    }

    /// A registry backed by `store`: loads every stored run, resumes the ones that were still
    /// going, and stores everything from now on. Must be called within a tokio runtime.
    pub async fn open(limits: RoomLimits, engine: EngineConfig, store: Arc<dyn Store>) -> Result<Self, StoreError> {
        Runs::open_notifying(limits, engine, store, None).await
    }

    /// [`Runs::open`], with every room handing its milestones to `milestones` (notifications).
    pub async fn open_notifying(
        limits: RoomLimits,
        engine: EngineConfig,
        store: Arc<dyn Store>,
        milestones: Option<mpsc::UnboundedSender<crate::hub::Milestone>>,
    ) -> Result<Self, StoreError> {
        let runs = Runs::recording(limits, engine, store);
        if let Some(milestones) = milestones {
            runs.notify_into(milestones);
        }
        runs.load().await?;
        Ok(runs)
    }

    /// Every room, from now on, hands its milestones to `milestones`. Call before loading.
    pub fn notify_into(&self, milestones: mpsc::UnboundedSender<crate::hub::Milestone>) {
        let _ = self.milestones.set(milestones);
    }

    /// A registry that stores the runs it starts in `store` and leaves the runs already there
    /// alone (`dagstream run --database`, benchmarks): another server may be driving them.
    /// Must be called within a tokio runtime.
    pub fn recording(limits: RoomLimits, engine: EngineConfig, store: Arc<dyn Store>) -> Self {
        let writer = Writer::spawn(Arc::clone(&store));
        Runs {
            by_id: RwLock::new(HashMap::new()),
            limits,
            engine,
            storage: Some((store, writer)),
            feed: broadcast::channel(FEED_QUEUE).0,
            cluster: OnceLock::new(),
            milestones: OnceLock::new(),
        }
    }

    /// The store, if there is one.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.storage.as_ref().map(|(store, _)| store)
    }

    /// Starts `spec` (checking its graph once more); answers the new run's `dag_id`. With a
    /// store, the run is recorded before it starts. Must be called within a tokio runtime.
    pub async fn start(&self, mut spec: DagSpec) -> Result<String, StartError> {
        engine::spec::check_graph(&spec.nodes)?;
        spec.history = self.cost_history(&spec.name).await;
        if !self.engine.allow_commands
            && let Some(node) = spec.nodes.iter().find(|n| matches!(n.work, engine::spec::NodeWork::Command { .. }))
        {
            return Err(StartError::Refused(format!(
                "this server runs no commands (--no-commands): node {:?} is a command node",
                node.id
            )));
        }
        if self.engine.workers.is_none()
            && let Some((node, pool)) = spec.nodes.iter().find_map(|n| match &n.work {
                engine::spec::NodeWork::Command { pool: Some(pool), .. } => Some((n, pool)),
                engine::spec::NodeWork::Command { pool: None, .. }
                | engine::spec::NodeWork::Simulate { .. }
                | engine::spec::NodeWork::Gate { .. } => None,
            })
        {
            return Err(StartError::Refused(format!(
                "node {:?} runs on pool {pool:?}, and this server has no workers: pools need a cluster (serve --nats) with `dagstream worker --pool {pool}`",
                node.id
            )));
        }
        let dag_id = new_run_id();
        let started_at = crate::protocol::now_rfc3339();
        if let Some((store, _)) = &self.storage {
            let spec_json = serde_json::to_string(&spec.to_file()).map_err(|e| StoreError(e.to_string()))?;
            let record = RunRecord {
                dag_id: dag_id.clone(),
                name: spec.name.clone(),
                spec: spec_json,
                state: RunPhase::Running.as_str().to_owned(),
                started_at: started_at.clone(),
                finished_at: None,
            };
            store.create_run(record).await?;
        }
        let state = initial_state(&dag_id, &spec, &started_at);
        // In a cluster the run is placed on a live instance: this one (with a lease) or another
        // (which this one then mirrors).
        let placed = match self.cluster.get() {
            Some(member) => Some(member.link.place(&dag_id).await?),
            None => None,
        };
        let kept = Arc::new(spec.clone());
        let (room, driver) = match placed {
            Some(None) => (self.new_mirror(state, Vec::new())?, Driver::Remote),
            Some(Some(_)) | None => {
                let room = self.new_room(state, Vec::new());
                if let Some(Some(epoch)) = placed {
                    room.take_over(epoch);
                }
                let handle = engine::run::spawn(&dag_id, spec, Arc::clone(&room), &self.engine);
                (room, Driver::Engine(handle))
            }
        };
        self.write().entry(dag_id.clone()).or_insert(RunEntry { room: Arc::clone(&room), driver, spec: Some(kept) });
        room.announce();
        Ok(dag_id)
    }

    /// What the nodes of spec `name` cost in its newest completed runs (at most
    /// [`engine::forecast::HISTORY_RUNS`]), for the forecasts on gate cards: each node's final
    /// cost in each run, from the stored logs. Empty without a store, or when it cannot be read.
    async fn cost_history(&self, name: &str) -> engine::forecast::CostHistory {
        let mut history = engine::forecast::CostHistory::default();
        let Some(store) = self.store() else { return history };
        let mut past: Vec<RunRecord> = match store.runs().await {
            Ok(runs) => {
                runs.into_iter().filter(|run| run.name == name && run.state == RunPhase::Completed.as_str()).collect()
            }
            Err(error) => {
                tracing::warn!(%error, "past runs cannot be read: forecasts use the spec's hints only");
                return history;
            }
        };
        past.sort_by(|a, b| b.started_at.cmp(&a.started_at));
        past.truncate(engine::forecast::HISTORY_RUNS);
        for run in past {
            let Ok(texts) = store.events(&run.dag_id, 0, crate::protocol::Seq::MAX).await else { continue };
            let mut costs: HashMap<String, f64> = HashMap::new();
            for text in texts {
                let Ok(event) = serde_json::from_str::<crate::protocol::ServerEvent>(&text) else { continue };
                if let ServerEventBody::NodeState { node_id, metrics: Some(metrics), .. } = event.body
                    && let Some(cost) = metrics.cost
                {
                    costs.insert(node_id, cost);
                }
            }
            history.runs += 1;
            for (node_id, cost) in costs {
                history.per_node.entry(node_id).or_default().push(cost);
            }
        }
        history
    }

    /// Creates a run that an external engine drives (it is not executed here); answers its
    /// `dag_id`. With a store, the definition is recorded first.
    pub async fn start_external(&self, run: ExternalRun) -> Result<String, StartError> {
        let dag_id = new_run_id();
        let started_at = crate::protocol::now_rfc3339();
        if let Some((store, _)) = &self.storage {
            let record = RunRecord {
                dag_id: dag_id.clone(),
                name: run.name.clone(),
                spec: serde_json::to_string(&run).map_err(|e| StoreError(e.to_string()))?,
                state: RunPhase::Running.as_str().to_owned(),
                started_at: started_at.clone(),
                finished_at: None,
            };
            store.create_run(record).await?;
        }
        let room = self.new_room(run.initial_state(&dag_id, &started_at), Vec::new());
        let entry = RunEntry { room: Arc::clone(&room), driver: Driver::External(Arc::default()), spec: None };
        self.write().insert(dag_id.clone(), entry);
        room.announce();
        Ok(dag_id)
    }

    pub fn get(&self, dag_id: &str) -> Option<RunEntry> {
        self.read().get(dag_id).cloned()
    }

    /// Dashboards subscribed to the runs here, and the longest queue one of them has to send.
    pub fn fanout(&self) -> (usize, usize) {
        self.read()
            .values()
            .map(|entry| entry.room.fanout())
            .fold((0, 0), |(n, deepest), (subs, queued)| (n + subs, deepest.max(queued)))
    }

    /// Every run, newest first.
    pub fn list(&self) -> Vec<RunSummary> {
        let rooms: Vec<Arc<Room>> = self.read().values().map(|entry| Arc::clone(&entry.room)).collect();
        let mut summaries: Vec<RunSummary> = rooms.iter().map(|room| room.summary()).collect();
        summaries.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.dag_id.cmp(&b.dag_id)));
        summaries
    }

    /// Loads every stored run: finished ones as they ended, unfinished ones resumed. In a
    /// cluster every run is loaded as a mirror: instances claim the unfinished ones.
    async fn load(&self) -> Result<(), StoreError> {
        let Some((store, _)) = &self.storage else { return Ok(()) };
        for record in store.runs().await? {
            let texts = store.events(&record.dag_id, 0, u64::MAX).await?;
            // A run resumed here forecasts its gates from the same history as when it started.
            let history = if record.finished_at.is_none() && self.cluster.get().is_none() {
                self.cost_history(&record.name).await
            } else {
                engine::forecast::CostHistory::default()
            };
            let entry = self.restore(record, texts, history)?;
            let dag_id = entry.room.dag_id().to_owned();
            self.write().insert(dag_id, entry);
        }
        Ok(())
    }

    /// Rebuilds one run from its record and stored events; resumes it if it had not ended
    /// (alone; in a cluster it is mirrored until an instance claims it).
    fn restore(
        &self,
        record: RunRecord,
        texts: Vec<String>,
        history: engine::forecast::CostHistory,
    ) -> Result<RunEntry, StoreError> {
        let mut stored = StoredRun::read(&record, texts);
        let spec = stored.spec.as_ref().ok().filter(|_| stored.external.is_none()).cloned().map(Arc::new);
        let keep = stored.frames.len().saturating_sub(self.limits.log_window);
        let recent = stored.frames.split_off(keep);
        if self.cluster.get().is_some() {
            let ended = stored.state.results.is_some();
            let room = self.new_mirror(stored.state, recent)?;
            return Ok(RunEntry { room, driver: if ended { Driver::Ended } else { Driver::Remote }, spec });
        }
        let room = self.new_room(stored.state.clone(), recent);
        if finished_within(&record, RENOTIFY_WINDOW) {
            self.renotify(&record.dag_id, &stored.log);
        }
        let driver = self.drive(&record, stored, &room, history);
        Ok(RunEntry { room, driver, spec })
    }

    /// Hands the milestones of a stored log to the notifier again, so a notification whose
    /// event was stored just before a crash is queued now. Queueing is idempotent (the same
    /// notification has the same id), so what was queued already is not queued twice.
    fn renotify(&self, dag_id: &str, log: &[ServerEvent]) {
        let Some(milestones) = self.milestones.get() else { return };
        let dag_id: Arc<str> = dag_id.into();
        for event in log.iter().filter(|event| crate::hub::is_milestone(&event.body)) {
            // The notifier ends only with the server.
            // Events of the run's last trace, which this server does not know: no trace id.
            let _ = milestones.send(crate::hub::Milestone {
                dag_id: Arc::clone(&dag_id),
                event: event.clone(),
                trace_id: None,
            });
        }
    }

    /// What drives a stored run from now on: nothing if it ended, its external engine, or this
    /// server's engine, resumed from the log. A run that cannot be resumed is marked failed
    /// with the reason.
    fn drive(
        &self,
        record: &RunRecord,
        stored: StoredRun,
        room: &Arc<Room>,
        history: engine::forecast::CostHistory,
    ) -> Driver {
        let StoredRun { state, log, mut spec, external, broken, .. } = stored;
        if let Ok(spec) = &mut spec {
            spec.history = history;
        }
        if let Some(Ok(_)) = external {
            // Not ours to resume: the engine reconnects and goes on.
            return Driver::External(Arc::default());
        }
        if state.results.is_some() {
            return Driver::Ended;
        }
        let spec = match external {
            Some(Err(problem)) => Err(problem),
            Some(Ok(_)) | None => spec,
        };
        let resumed = match (spec, broken) {
            (Err(problem), _) => Err(format!("its spec cannot be read: {problem}")),
            (Ok(_), Some(problem)) => Err(format!("its log is damaged: {problem}")),
            // Nothing was stored yet (the run was placed on this instance, or its first
            // owner died at once): it starts as new.
            (Ok(spec), None) if log.is_empty() => {
                Ok(engine::run::spawn(&record.dag_id, spec, Arc::clone(room), &self.engine))
            }
            (Ok(spec), None) => engine::run::resume(&record.dag_id, spec, &log, &state, Arc::clone(room), &self.engine),
        };
        match resumed {
            Ok(handle) => Driver::Engine(handle),
            Err(problem) => {
                tracing::error!(dag_id = %record.dag_id, %problem, "run cannot be resumed");
                room.publish(ServerEventBody::Error {
                    node_id: None,
                    message: format!("run cannot be resumed: {problem}"),
                });
                room.publish(ServerEventBody::RunStateChanged { state: RunPhase::Failed });
                room.publish(ServerEventBody::ExecutionComplete { results: Default::default() });
                Driver::Ended
            }
        }
    }

    /// Drives an ended run again with this server's engine, for a repair: the run as its stored
    /// log left it, resumed (nothing starts until the repair says what runs again). Answers
    /// the run's handle; a run some engine drives already keeps it. In a cluster this instance
    /// first claims the ended run's lease ([`ClusterLink::reopen`]); `Ok(None)` then means
    /// another instance reopened it first and drives it now (commands go there). Refused for a
    /// run whose log cannot be resumed.
    pub async fn reopen(&self, dag_id: &str) -> Result<Option<RunHandle>, String> {
        let entry = self.get(dag_id).ok_or_else(|| format!("no run {dag_id:?}"))?;
        let epoch = match self.cluster.get() {
            None => {
                if let Driver::Engine(handle) = &entry.driver {
                    return Ok(Some(handle.clone()));
                }
                None
            }
            Some(member) => match member.link.reopen(dag_id).await {
                Ok(Some(epoch)) => Some(epoch),
                Ok(None) => return Ok(None),
                Err(error) => {
                    tracing::warn!(parent: &entry.room.lines(), dag_id, %error, "cannot claim an ended run to reopen it");
                    return Err("the run cannot be reopened now: try again".into());
                }
            },
        };
        let store = self.store_or_fail().map_err(|e| e.to_string())?;
        let unreadable = |error: StoreError| {
            tracing::error!(parent: &entry.room.lines(), dag_id, %error, "a run to reopen cannot be read");
            "the run cannot be read from the store now: try again".to_owned()
        };
        // In a cluster the claim waited for the last owner's last append: the stored log is whole.
        let record =
            store.run(dag_id).await.map_err(unreadable)?.ok_or_else(|| format!("run {dag_id} is not stored"))?;
        let texts = store.events(dag_id, 0, Seq::MAX).await.map_err(unreadable)?;
        let history = self.cost_history(&record.name).await;
        let stored = StoredRun::read(&record, texts);
        if let Some(problem) = &stored.broken {
            return Err(format!("the run's log is damaged ({problem}): run it again instead"));
        }
        let mut spec = stored.spec.map_err(|problem| format!("the run's spec cannot be read ({problem})"))?;
        spec.history = history;
        if let Some(epoch) = epoch {
            let room = &entry.room;
            // This instance may still drive the run (a repair it claimed the run for was
            // refused): that coordinator stops; the new one starts from the stored log.
            if let Authority::Leased(held) = room.authority() {
                room.stop_driving(held);
            }
            catch_up(room, &stored.log, &stored.frames, stored.state.seq).map_err(unreadable)?;
            room.take_over(epoch);
        }
        let mut runs = self.write();
        let Some(entry) = runs.get_mut(dag_id) else { return Err(format!("no run {dag_id:?}")) };
        match (&entry.driver, epoch) {
            // Someone reopened it meanwhile (on this server).
            (Driver::Engine(handle), None) => Ok(Some(handle.clone())),
            (Driver::External(_), _) => Err("an external engine drives this run".into()),
            (Driver::Remote, None) => Err("this run is driven elsewhere".into()),
            (Driver::Ended, None) | (Driver::Engine(_) | Driver::Remote | Driver::Ended, Some(_)) => {
                let state = entry.room.snapshot();
                let resumed =
                    engine::run::resume(dag_id, spec, &stored.log, &state, Arc::clone(&entry.room), &self.engine);
                let handle = resumed.inspect_err(|_| {
                    if let Some(epoch) = epoch {
                        entry.room.stop_driving(epoch);
                    }
                })?;
                entry.driver = Driver::Engine(handle.clone());
                if let Some(epoch) = epoch {
                    let room = &entry.room;
                    tracing::info!(parent: &room.lines(), dag_id, epoch, seq = room.seq(), "run reopened: driving it here");
                }
                Ok(Some(handle))
            }
        }
    }

    /// Makes this registry one instance of a cluster: new runs are placed through `link`, and
    /// every room hands its committed events to `relay` and reports a lost lease to `fenced`.
    /// Call before [`Runs::open_member`] loads anything.
    pub fn join(
        &self,
        link: Arc<dyn ClusterLink>,
        relay: mpsc::UnboundedSender<crate::hub::Relayed>,
        fenced: mpsc::UnboundedSender<Arc<str>>,
    ) {
        let _ = self.cluster.set(Membership { link, relay, fenced });
    }

    /// A registry that is one instance of a cluster on `store`: [`Runs::recording`], joined
    /// with [`Runs::join`], with every stored run loaded as a mirror.
    pub async fn open_member(
        limits: RoomLimits,
        engine: EngineConfig,
        store: Arc<dyn Store>,
        link: Arc<dyn ClusterLink>,
        relay: mpsc::UnboundedSender<crate::hub::Relayed>,
        fenced: mpsc::UnboundedSender<Arc<str>>,
        milestones: Option<mpsc::UnboundedSender<crate::hub::Milestone>>,
    ) -> Result<Self, StoreError> {
        let runs = Runs::recording(limits, engine, store);
        runs.join(link, relay, fenced);
        if let Some(milestones) = milestones {
            runs.notify_into(milestones);
        }
        runs.load().await?;
        Ok(runs)
    }

    /// Mirrors a run another instance created, from the store, unless it is known already.
    pub async fn mirror_stored(&self, dag_id: &str) -> Result<(), StoreError> {
        if self.get(dag_id).is_some() {
            return Ok(());
        }
        let store = self.store_or_fail()?;
        let Some(record) = store.run(dag_id).await? else { return Ok(()) };
        let texts = store.events(dag_id, 0, u64::MAX).await?;
        // A mirror: another instance drives it, with its own history.
        let entry = self.restore(record, texts, engine::forecast::CostHistory::default())?;
        let mut runs = self.write();
        if !runs.contains_key(dag_id) {
            runs.insert(dag_id.to_owned(), entry.clone());
            drop(runs);
            entry.room.announce();
        }
        Ok(())
    }

    /// This instance claimed run `dag_id` with lease `epoch`: reads its whole log from the
    /// store (the claim waited for the last owner's last append), brings the run's room up to
    /// it, and resumes the run here as a restart would.
    pub async fn adopt(&self, dag_id: &str, epoch: i64) -> Result<(), StoreError> {
        let store = self.store_or_fail()?;
        let record = store.run(dag_id).await?.ok_or_else(|| StoreError(format!("run {dag_id} is not stored")))?;
        let texts = store.events(dag_id, 0, u64::MAX).await?;
        let stored = StoredRun::read(&record, texts);
        let room = match self.get(dag_id) {
            Some(entry) => entry.room,
            None => {
                let entry = self.restore(record.clone(), Vec::new(), engine::forecast::CostHistory::default())?;
                self.write().entry(dag_id.to_owned()).or_insert(entry).room.clone()
            }
        };
        catch_up(&room, &stored.log, &stored.frames, stored.state.seq)?;
        room.take_over(epoch);
        self.renotify(dag_id, &stored.log);
        let history = self.cost_history(&record.name).await;
        let seq = room.seq();
        let driver = self.drive(&record, stored, &room, history);
        // Logged once the coordinator has made the run's new trace.
        tracing::info!(parent: &room.lines(), dag_id, epoch, seq, "run claimed: driving it here");
        if let Some(entry) = self.write().get_mut(dag_id) {
            entry.driver = driver;
        }
        room.announce();
        Ok(())
    }

    /// This instance lost run `dag_id`'s lease: its room already follows the new owner; its
    /// commands go there from now on.
    pub fn let_go(&self, dag_id: &str) {
        if let Some(entry) = self.write().get_mut(dag_id)
            && entry.room.authority() == Authority::Mirror
            && matches!(entry.driver, Driver::Engine(_))
        {
            entry.driver = Driver::Remote;
        }
    }

    /// (run, epoch) of every lease this instance holds on a run still going, for renewal.
    pub fn leases(&self) -> Vec<(String, i64)> {
        self.read()
            .iter()
            .filter(|(_, entry)| !entry.room.is_complete())
            .filter_map(|(dag_id, entry)| match entry.room.authority() {
                Authority::Leased(epoch) => Some((dag_id.clone(), epoch)),
                Authority::Sole | Authority::Mirror => None,
            })
            .collect()
    }

    /// Rooms of runs driven elsewhere that have not completed yet, for catching up from the
    /// store.
    pub fn followed(&self) -> Vec<Arc<Room>> {
        self.read()
            .values()
            .filter(|entry| entry.room.authority() == Authority::Mirror && !entry.room.is_complete())
            .map(|entry| Arc::clone(&entry.room))
            .collect()
    }

    /// True when this registry is one instance of a cluster.
    pub fn is_member(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// Ids of every run this registry knows.
    pub fn ids(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Hands a command on a run driven elsewhere to its owner.
    pub async fn forward(&self, dag_id: &str, event: ClientEvent, actor: &str) -> Result<(), String> {
        match self.cluster.get() {
            Some(member) => member.link.forward(dag_id, event, actor).await,
            None => Err("this run is driven by another server".into()),
        }
    }

    fn store_or_fail(&self) -> Result<&Arc<dyn Store>, StoreError> {
        self.store().ok_or_else(|| StoreError("this server keeps no store".into()))
    }

    /// A room for a run another instance drives.
    fn new_mirror(&self, state: RunState, recent: Vec<Frame>) -> Result<Arc<Room>, StoreError> {
        let (_, writer) = self.storage.as_ref().ok_or_else(|| StoreError("a cluster needs a store".into()))?;
        let room = Room::mirror(state, self.limits, writer.clone(), recent);
        self.link_room(&room);
        Ok(room)
    }

    fn link_room(&self, room: &Room) {
        room.set_feed(self.feed.clone());
        if let Some(milestones) = self.milestones.get() {
            room.set_milestones(milestones.clone());
        }
        if let Some(member) = self.cluster.get() {
            room.set_cluster_links(member.relay.clone(), member.fenced.clone());
        }
    }

    fn new_room(&self, state: RunState, recent: Vec<Frame>) -> Arc<Room> {
        let writer = self.storage.as_ref().map(|(_, writer)| writer.clone());
        let room = Room::new(state, self.limits, writer, recent);
        self.link_room(&room);
        room
    }

    /// Ids of runs whose line in the run list changes, from now on.
    pub fn changes(&self) -> broadcast::Receiver<Arc<str>> {
        self.feed.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, RunEntry>> {
        // Writers only insert whole entries, so a poisoned map is still consistent.
        self.by_id.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, RunEntry>> {
        self.by_id.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A stored run read back: what its spec and its events fold to, without starting anything.
/// Restarts resume from it; `dagstream migrate` compares it on both sides of a copy.
pub struct StoredRun {
    /// The run's record folded with every readable event ([`RunState::apply`]).
    pub state: RunState,
    /// The events folded in, in order.
    pub log: Vec<ServerEvent>,
    /// The same events as stored, for `since` replay.
    pub frames: Vec<Frame>,
    /// The spec of an engine run, or why it cannot be read.
    spec: Result<DagSpec, String>,
    /// Set when the run was created by an external engine (or looks like one and cannot be read).
    external: Option<Result<ExternalRun, String>>,
    /// Why the log stops being readable before its end, if it does.
    pub broken: Option<String>,
}

impl StoredRun {
    /// Folds `record`'s spec with its stored events (`texts`, in `seq` order).
    pub fn read(record: &RunRecord, texts: Vec<String>) -> StoredRun {
        let value: Result<serde_json::Value, String> = serde_json::from_str(&record.spec).map_err(|e| e.to_string());
        let external = match &value {
            Ok(value) if ExternalRun::is_external(value) => Some(ExternalRun::from_value(value.clone())),
            _ => None,
        };
        let spec = value.and_then(|value| DagSpec::from_value(value).map_err(|e| e.to_string()));
        let mut state = match (&external, &spec) {
            (Some(Ok(run)), _) => run.initial_state(&record.dag_id, &record.started_at),
            (None, Ok(spec)) => initial_state(&record.dag_id, spec, &record.started_at),
            (Some(Err(_)), _) | (None, Err(_)) => {
                RunState::new(&record.dag_id, &record.name, &record.started_at, 0.0, [])
            }
        };
        // Stored events are numbered 1..=N without a gap (the writer stores them in order).
        let stored = texts.len() as Seq;
        let mut log = Vec::with_capacity(texts.len());
        let mut frames = Vec::new();
        let mut broken = None;
        for text in texts {
            match serde_json::from_str::<ServerEvent>(&text) {
                Ok(event) if state.apply(&event) == Applied::Folded => {
                    frames.push(Frame { seq: event.seq, text: text.into() });
                    log.push(event);
                }
                Ok(event) => broken = Some(format!("event {} does not follow event {}", event.seq, state.seq)),
                Err(error) => broken = Some(format!("event after {} cannot be read: {error}", state.seq)),
            }
            if broken.is_some() {
                break;
            }
        }
        if broken.is_some() {
            // What follows is numbered after the last stored event, so nothing overwrites the
            // events that could not be read; the snapshot is the run as far as it could be read.
            state.seq = stored;
        }
        StoredRun { state, log, frames, spec, external, broken }
    }
}

/// A run's state before its first event: every node of the spec pending.
pub fn initial_state(dag_id: &str, spec: &DagSpec, started_at: &str) -> RunState {
    let nodes = spec.nodes.iter().map(|node| (node.graph_node(), node.needs.clone()));
    RunState::new(dag_id, spec.name.clone(), started_at, spec.budget.unwrap_or(0.0), nodes)
}

/// How long after its end a run's notifications are looked at again when the server starts
/// (longer than a notification is retried).
const RENOTIFY_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// True for a run still going, or one that ended within `window` of now.
fn finished_within(record: &RunRecord, window: std::time::Duration) -> bool {
    let Some(finished_at) = &record.finished_at else { return true };
    humantime::parse_rfc3339_weak(finished_at)
        .ok()
        .and_then(|at| std::time::SystemTime::now().duration_since(at).ok())
        .is_none_or(|ago| ago <= window)
}

/// A short, URL-safe, random run id.
fn new_run_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_owned()
}

/// Brings a mirrored run's room up to its whole stored log, before this instance drives it.
fn catch_up(room: &Room, log: &[ServerEvent], frames: &[Frame], stored_seq: Seq) -> Result<(), StoreError> {
    for (event, frame) in log.iter().zip(frames) {
        room.follow(event.clone(), frame.clone());
    }
    if room.seq() != stored_seq {
        return Err(StoreError(format!(
            "run {}: its room is at event {} but the store at {}",
            room.dag_id(),
            room.seq(),
            stored_seq
        )));
    }
    Ok(())
}
