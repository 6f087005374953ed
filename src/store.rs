//! Durable storage of runs, their event logs and gate decisions, behind the small [`Store`]
//! trait; [`SqliteStore`] is the embedded default (one file under `--data`, WAL mode,
//! migrations in `migrations/`).
//!
//! The engine never talks to a store: rooms hand their events to the [`Writer`] task, which
//! commits them in batches (group commit) and only then lets the rooms fold and broadcast them.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::mpsc;

use crate::hub::{Frame, Room};
use crate::protocol::{RunPhase, Seq, ServerEvent, ServerEventBody};

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
    /// The row(s) an event becomes.
    pub fn new(dag_id: Arc<str>, event: &ServerEvent, json: Arc<str>) -> Self {
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
        StoredEvent { dag_id, seq: event.seq, json, decision, run_state, at: crate::engine::now_rfc3339().into() }
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

/// The embedded SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file, switches it to WAL and migrates it.
    /// Fails with a clear message when the file cannot be written or is not a database.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let what = path.display().to_string();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::from_sqlx(&format!("cannot open the database {what}"), e))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError(format!("cannot prepare the database {what}: {e}")))?;
        // A read-only file opens fine; find out now rather than at the first event.
        sqlx::query("UPDATE meta SET value = value WHERE key = 'schema'")
            .execute(&pool)
            .await
            .map_err(|e| StoreError::from_sqlx(&format!("the database {what} is not writable"), e))?;
        Ok(SqliteStore { pool })
    }
}

impl Store for SqliteStore {
    fn save_session(&self, session: SessionRow) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // Expired sessions go when a new one comes: the table stays as small as the logins.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(|e| StoreError::from_sqlx("cannot expire sessions", e))?;
            sqlx::query("INSERT INTO sessions (id_hash, user_name, expires_at) VALUES (?, ?, ?)")
                .bind(&session.id_hash)
                .bind(&session.user_name)
                .bind(session.expires_at)
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| StoreError::from_sqlx("cannot store the session", e))
        })
    }

    fn delete_session(&self, id_hash: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let id_hash = id_hash.to_owned();
        Box::pin(async move {
            sqlx::query("DELETE FROM sessions WHERE id_hash = ?")
                .bind(id_hash)
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| StoreError::from_sqlx("cannot delete the session", e))
        })
    }

    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionRow>, StoreError>> {
        Box::pin(async move {
            sqlx::query_as::<_, SessionRow>("SELECT id_hash, user_name, expires_at FROM sessions")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| StoreError::from_sqlx("cannot read sessions", e))
        })
    }

    fn create_run(&self, run: RunRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO runs (dag_id, name, spec, state, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&run.dag_id)
            .bind(&run.name)
            .bind(&run.spec)
            .bind(&run.state)
            .bind(&run.started_at)
            .bind(&run.finished_at)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::from_sqlx("cannot record the run", e))
        })
    }

    fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let fail = |e| StoreError::from_sqlx("cannot store events", e);
            let mut tx = self.pool.begin().await.map_err(fail)?;
            // Many rows per statement: one round trip to SQLite per chunk, not per event.
            for chunk in events.chunks(ROWS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::new("INSERT INTO events (dag_id, seq, body) ");
                insert.push_values(chunk, |mut row, event| {
                    row.push_bind(&*event.dag_id).push_bind(event.seq as i64).push_bind(&*event.json);
                });
                insert.build().execute(&mut *tx).await.map_err(fail)?;
            }
            for event in &events {
                if let Some(decision) = &event.decision {
                    sqlx::query(
                        "INSERT INTO decisions (dag_id, seq, node_id, decision, feedback, decided_by, decided_at) \
                         VALUES (?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&*event.dag_id)
                    .bind(event.seq as i64)
                    .bind(&decision.node_id)
                    .bind(&decision.decision)
                    .bind(&decision.feedback)
                    .bind(&decision.decided_by)
                    .bind(&decision.decided_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                }
                if let Some(state) = event.run_state {
                    let finished = state.is_terminal().then(|| event.at.to_string());
                    sqlx::query("UPDATE runs SET state = ?, finished_at = COALESCE(?, finished_at) WHERE dag_id = ?")
                        .bind(state.as_str())
                        .bind(finished)
                        .bind(&*event.dag_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                }
            }
            tx.commit().await.map_err(fail)
        })
    }

    fn runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
        Box::pin(async move {
            sqlx::query_as(
                "SELECT dag_id, name, spec, state, started_at, finished_at FROM runs ORDER BY started_at, dag_id",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot list runs", e))
        })
    }

    fn events(&self, dag_id: &str, after: Seq, up_to: Seq) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move {
            sqlx::query_scalar("SELECT body FROM events WHERE dag_id = ? AND seq > ? AND seq <= ? ORDER BY seq")
                .bind(dag_id)
                .bind(after as i64)
                .bind(up_to.min(i64::MAX as u64) as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| StoreError::from_sqlx("cannot read events", e))
        })
    }

    fn decisions(&self, dag_id: &str) -> BoxFuture<'_, Result<Vec<DecisionRow>, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move {
            sqlx::query_as(
                "SELECT node_id, decision, feedback, decided_by, decided_at FROM decisions WHERE dag_id = ? ORDER BY seq",
            )
            .bind(dag_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot read decisions", e))
        })
    }
}

/// Largest batch committed at once. Committed events reach subscribers all at once, so this
/// stays well below a subscriber's queue (`RoomLimits::subscriber_queue`).
const MAX_BATCH: usize = 1024;
/// Rows per `INSERT` statement (3 bound values each, far below SQLite's variable limit).
const ROWS_PER_INSERT: usize = 256;

/// An event waiting for its commit, and the room that folds and broadcasts it after.
pub struct Pending {
    pub room: Weak<Room>,
    pub event: ServerEvent,
    pub frame: Frame,
    pub stored: StoredEvent,
}

/// The handle rooms use to hand events to the writer.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Writer {
    /// Starts the writer task on the current runtime. It ends when every `Writer` is dropped
    /// and the queue is drained.
    pub fn spawn(store: Arc<dyn Store>) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(store, pending));
        Writer { queue }
    }

    /// Queues an event; gives it back if the writer is gone (then nothing will store it).
    pub fn submit(&self, pending: Pending) -> Result<(), Box<Pending>> {
        self.queue.send(pending).map_err(|unsent| Box::new(unsent.0))
    }
}

async fn write_loop(store: Arc<dyn Store>, mut pending: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Events of a run whose storage already failed are shown but no longer stored, so its
        // stored log stays a gap-free prefix.
        let rows: Vec<StoredEvent> = batch
            .iter()
            .filter(|p| p.room.upgrade().is_some_and(|room| !room.storage_failed()))
            .map(|p| p.stored.clone())
            .collect();
        let result = store.append(rows).await;
        let mut failed_rooms: Vec<Arc<Room>> = Vec::new();
        for Pending { room, event, frame, .. } in batch.drain(..) {
            let Some(room) = room.upgrade() else { continue };
            // Either way the event is shown: after a failure it is not durable, and the run stops.
            room.commit(event, frame);
            if result.is_err() && !failed_rooms.iter().any(|r| Arc::ptr_eq(r, &room)) {
                failed_rooms.push(room);
            }
        }
        if let Err(error) = result {
            tracing::error!(%error, "storage failed; stopping the affected runs");
            for room in failed_rooms {
                room.fail_storage(&error);
            }
        }
    }
}

#[cfg(test)]
mod tests;
