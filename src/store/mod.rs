//! Durable storage of runs, their event logs, gate decisions and login sessions, behind the
//! small [`Store`] trait. A leaf: it knows the wire protocol's types and nothing else of
//! dagstream. Each backend is one file: [`sqlite`] is the embedded default (one file under
//! `--data`, WAL mode, migrations in `migrations/`).
//!
//! The engine never talks to a store: rooms hand their events to the hub's writer
//! (`hub::writer`), which commits them in batches (group commit) and only then lets the rooms
//! fold and broadcast them.

mod sqlite;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::protocol::{RunPhase, Seq, ServerEvent, ServerEventBody};

pub use sqlite::SqliteStore;

/// A storage failure, in words for the log and for the run's `error` event.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl StoreError {
    fn from_sqlx(context: &str, error: sqlx::Error) -> Self {
        StoreError(format!("{context}: {error}"))
    }
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct RunRecord {
    pub dag_id: String,
    pub name: String,
    /// The spec as JSON (the structure of `SpecFile`).
    pub spec: String,
    /// Last known run state (`running`, `completed`, ...).
    pub state: String,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// One event to store, as serialized for the wire.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub dag_id: Arc<str>,
    pub seq: Seq,
    pub json: Arc<str>,
    /// Set for `gate_resolved`: the row of the decisions table.
    pub decision: Option<DecisionRow>,
    /// Set for `run_state`: the run's new state.
    pub run_state: Option<RunPhase>,
    pub at: Arc<str>,
}

/// A gate decision as stored.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct DecisionRow {
    pub node_id: String,
    pub decision: String,
    pub feedback: Option<String>,
    pub decided_by: String,
    pub decided_at: String,
}

impl StoredEvent {
    /// The row(s) an event becomes; `at` (RFC 3339) is when it was published.
    pub fn new(dag_id: Arc<str>, event: &ServerEvent, json: Arc<str>, at: Arc<str>) -> Self {
        let decision = match &event.body {
            ServerEventBody::GateResolved { node_id, decision, feedback, decided_by, decided_at } => {
                Some(DecisionRow {
                    node_id: node_id.clone(),
                    decision: decision.as_str().to_owned(),
                    feedback: feedback.clone(),
                    decided_by: decided_by.clone(),
                    decided_at: decided_at.clone(),
                })
            }
            _ => None,
        };
        let run_state = match &event.body {
            ServerEventBody::RunStateChanged { state } => Some(*state),
            _ => None,
        };
        StoredEvent { dag_id, seq: event.seq, json, decision, run_state, at }
    }
}

/// Where runs and their events are kept. Small on purpose, so another database can stand in.
pub trait Store: Send + Sync + 'static {
    /// Records a new run before any of its events.
    fn create_run(&self, run: RunRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Appends events (of any runs, each run's in `seq` order) in one transaction.
    fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Every run, oldest first.
    fn runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>>;
    /// Events of a run with `seq` in `after+1 ..= up_to`, in order, as JSON.
    fn events(&self, dag_id: &str, after: Seq, up_to: Seq) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
    /// Every decision of a run, oldest first.
    fn decisions(&self, dag_id: &str) -> BoxFuture<'_, Result<Vec<DecisionRow>, StoreError>>;
    /// Keeps a login session. A store that does not keep sessions signs users out on restart.
    fn save_session(&self, _session: SessionRow) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    /// Forgets a login session (logout).
    fn delete_session(&self, _id_hash: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    /// Every kept session; expired ones are dropped by the caller.
    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionRow>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A login session as stored: the hash of its id, never the id.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct SessionRow {
    pub id_hash: String,
    pub user_name: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[cfg(test)]
mod tests;
