//! Every run this server knows: start one from a spec, find one by id, list them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::engine::{self, DagSpec, EngineConfig, RunHandle, SpecError};
use crate::hub::{Room, RoomLimits};
use crate::protocol::{RunState, RunSummary};

/// One run: its room (state, log, subscribers) and the way in to its coordinator.
#[derive(Clone)]
pub struct RunEntry {
    pub room: Arc<Room>,
    pub handle: RunHandle,
}

/// The registry of runs. Cheap to share behind an `Arc`.
pub struct Runs {
    /// Runs by `dag_id`.
    by_id: RwLock<HashMap<String, RunEntry>>,
    /// Buffer sizes for every new room.
    limits: RoomLimits,
    /// Where runs execute.
    engine: EngineConfig,
}

impl Runs {
    pub fn new(limits: RoomLimits, engine: EngineConfig) -> Self {
        Runs { by_id: RwLock::new(HashMap::new()), limits, engine }
    }

    /// Starts `spec` (checking its graph once more); answers the new run's `dag_id`. Must be
    /// called within a tokio runtime.
    pub fn start(&self, spec: DagSpec) -> Result<String, SpecError> {
        engine::spec::check_graph(&spec.nodes)?;
        let dag_id = new_run_id();
        let nodes = spec.nodes.iter().map(|node| (node.graph_node(), node.needs.clone()));
        let budget = spec.budget.unwrap_or(0.0);
        let state = RunState::new(dag_id.clone(), spec.name.clone(), engine::now_rfc3339(), budget, nodes);
        let room = Arc::new(Room::new(state, self.limits));
        let handle = engine::run::spawn(&dag_id, spec, Arc::clone(&room), &self.engine);
        self.write().insert(dag_id.clone(), RunEntry { room, handle });
        Ok(dag_id)
    }

    pub fn get(&self, dag_id: &str) -> Option<RunEntry> {
        self.read().get(dag_id).cloned()
    }

    /// Every run, newest first.
    pub fn list(&self) -> Vec<RunSummary> {
        let rooms: Vec<Arc<Room>> = self.read().values().map(|entry| Arc::clone(&entry.room)).collect();
        let mut summaries: Vec<RunSummary> = rooms.iter().map(|room| room.summary()).collect();
        summaries.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.dag_id.cmp(&b.dag_id)));
        summaries
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, RunEntry>> {
        // Writers only insert whole entries, so a poisoned map is still consistent.
        self.by_id.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, RunEntry>> {
        self.by_id.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A short, URL-safe, random run id.
fn new_run_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_owned()
}
