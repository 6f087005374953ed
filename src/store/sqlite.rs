//! The embedded SQLite store: one file, WAL mode, migrations in `migrations/sqlite/`.
//!
//! Everything but the event log's appends goes through sqlx, whose SQLite connections each live
//! on a thread of their own: a statement is a round trip to that thread, two thread wake-ups.
//! The writer appends on the live path of every event (nobody sees it before it is stored), so
//! its connection ([`SqliteStore::appends`], rusqlite on the same SQLite library) is used in
//! place: a batch of a few events, the live case, is written on the thread that commits it. In
//! WAL mode with `synchronous = NORMAL` that is a write into the log file, no `fsync`: 11 µs
//! p50, 44 µs p99 for one event here, less than the round trip it replaces (at 1 000 dashboards
//! that round trip alone made the fan-out's p99 ~10% slower, `bench fanout`). What could hold
//! the thread longer goes elsewhere: a big batch (a burst) and a batch that finds another
//! connection writing are written on a blocking thread (which waits for the lock), and the log
//! is checkpointed into the database file (the part that does `fsync`) by a pool connection
//! every [`CHECKPOINT_BYTES`], not by the appending connection.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use rusqlite::{ErrorCode, TransactionBehavior};
use sqlx::ConnectOptions;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{
    Appended, AttemptRow, Claim, DecisionRow, GateLinkRow, NotificationRow, RunNotifications, RunRecord, SessionRow,
    Store, StoreError, StoredEvent, UserRow,
};
use crate::protocol::Seq;

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Events a batch may hold to be written in place (see the module's doc); a bigger one goes to
/// a blocking thread.
const IN_PLACE_EVENTS: usize = 16;
/// Bytes of events appended between two checkpoints of the log into the database file (about
/// SQLite's own 1 000 pages).
const CHECKPOINT_BYTES: usize = 4 << 20;

/// The appends' statements, prepared when the store opens (each connection reads the schema at
/// its first statement) and kept prepared.
const INSERT_EVENT: &str = "INSERT INTO events (dag_id, seq, body) VALUES (?1, ?2, ?3)";
const UPDATE_RUN_STATE: &str = "UPDATE runs SET state = ?1, finished_at = ?2 WHERE dag_id = ?3";

/// The embedded SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
    /// The event writer's own connection, used in place (see the module's doc). It never
    /// checkpoints by itself; SQLite takes one writer at a time anyway.
    appends: Arc<Mutex<rusqlite::Connection>>,
    /// Bytes of events appended since the last checkpoint started.
    unchecked: AtomicUsize,
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
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // No log line per statement, as on PostgreSQL (`store::postgres::connect_options`).
            .disable_statement_logging();
        let what = path.display().to_string();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A file on this machine does not go away between two uses; pinging it before each
            // use would put one more round trip to SQLite's thread in front of the statement.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::from_sqlx(&format!("cannot open the database {what}"), e))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError(format!("cannot prepare the database {what}: {e}")))?;
        // A read-only file opens fine; find out now rather than at the first event.
        sqlx::query("UPDATE meta SET value = value WHERE key = 'schema'")
            .execute(&pool)
            .await
            .map_err(|e| StoreError::from_sqlx(&format!("the database {what} is not writable"), e))?;
        let appends = rusqlite::Connection::open(path)
            .and_then(|connection| {
                connection.execute_batch(
                    "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;",
                )?;
                connection.prepare_cached(INSERT_EVENT)?;
                connection.prepare_cached(UPDATE_RUN_STATE)?;
                Ok(connection)
            })
            .map_err(|e| StoreError(format!("cannot open the database {what}: {e}")))?;
        Ok(SqliteStore { pool, appends: Arc::new(Mutex::new(appends)), unchecked: AtomicUsize::new(0) })
    }

    /// Counts `bytes` appended, and past [`CHECKPOINT_BYTES`] since the last checkpoint starts
    /// one on a pool connection (`PASSIVE`: it copies what no reader still needs and waits for
    /// nobody).
    fn appended(&self, bytes: usize) {
        if self.unchecked.fetch_add(bytes, Ordering::Relaxed) + bytes < CHECKPOINT_BYTES {
            return;
        }
        self.unchecked.store(0, Ordering::Relaxed);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                // The log only grows until the next checkpoint: nothing is lost.
                tracing::warn!(%error, "cannot checkpoint the database's log");
            }
        });
    }
}

/// Writes `events` on the appending connection, all or nothing, waiting at most `busy` for
/// another connection's write lock.
fn write_events(appends: &Mutex<rusqlite::Connection>, events: &[StoredEvent], busy: Duration) -> rusqlite::Result<()> {
    // A panic while the lock was held unwound through the transaction, which rolled back.
    let mut connection = appends.lock().unwrap_or_else(PoisonError::into_inner);
    connection.busy_timeout(busy)?;
    if let [event] = events
        && event.run_state.is_none()
    {
        // One statement is atomic on its own.
        return insert_event(&connection, event);
    }
    // Takes the write lock first: a busy database fails here, before anything is written.
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for event in events {
        insert_event(&transaction, event)?;
        if let Some(state) = event.run_state {
            let finished = state.is_terminal().then(|| event.at.to_string());
            transaction.prepare_cached(UPDATE_RUN_STATE)?.execute(rusqlite::params![
                state.as_str(),
                finished,
                &*event.dag_id
            ])?;
        }
    }
    transaction.commit()
}

fn insert_event(connection: &rusqlite::Connection, event: &StoredEvent) -> rusqlite::Result<()> {
    connection.prepare_cached(INSERT_EVENT)?.execute(rusqlite::params![
        &*event.dag_id,
        event.seq as i64,
        &*event.json
    ])?;
    Ok(())
}

fn cannot_store(error: impl std::fmt::Display) -> StoreError {
    StoreError(format!("cannot store events: {error}"))
}

/// Another connection holds the write lock.
fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(error.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

impl Store for SqliteStore {
    fn save_session(&self, session: SessionRow) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // Expired sessions go when a new one comes: the table stays as small as the logins.
            let now = super::unix_now();
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

    fn add_user(&self, user: UserRow) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO users (name, token_sha256, role) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING")
                .bind(&user.name)
                .bind(&user.token_sha256)
                .bind(&user.role)
                .execute(&self.pool)
                .await
                .map(|done| done.rows_affected() == 1)
                .map_err(|e| StoreError::from_sqlx("cannot add the user", e))
        })
    }

    fn users(&self) -> BoxFuture<'_, Result<Vec<UserRow>, StoreError>> {
        Box::pin(async move {
            sqlx::query_as("SELECT name, token_sha256, role FROM users ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| StoreError::from_sqlx("cannot read users", e))
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

    fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<Appended, StoreError>> {
        Box::pin(async move {
            if events.iter().any(|event| event.epoch.is_some()) {
                // Leases are a cluster's, and a cluster keeps its runs in PostgreSQL.
                return Err(StoreError("SQLite keeps no run leases: a cluster needs PostgreSQL".into()));
            }
            if events.is_empty() {
                return Ok(Appended::default());
            }
            let bytes = events.iter().map(|event| event.json.len()).sum();
            // In place when small and the lock is free; `None`: on a blocking thread.
            let in_place = (events.len() <= IN_PLACE_EVENTS)
                .then(|| write_events(&self.appends, &events, Duration::ZERO))
                .filter(|written| !written.as_ref().is_err_and(is_busy));
            let written = match in_place {
                Some(written) => written,
                None => {
                    let appends = Arc::clone(&self.appends);
                    tokio::task::spawn_blocking(move || write_events(&appends, &events, BUSY_TIMEOUT))
                        .await
                        .map_err(cannot_store)?
                }
            };
            written.map_err(cannot_store)?;
            self.appended(bytes);
            Ok(Appended::default())
        })
    }

    fn run(&self, dag_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move {
            sqlx::query_as("SELECT dag_id, name, spec, state, started_at, finished_at FROM runs WHERE dag_id = ?")
                .bind(dag_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| StoreError::from_sqlx("cannot read the run", e))
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

    fn claim_decision(&self, dag_id: &str, decision: DecisionRow) -> BoxFuture<'_, Result<Claim, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move {
            let fail = |e| StoreError::from_sqlx("cannot record the decision", e);
            let inserted = sqlx::query(
                "INSERT INTO decisions (dag_id, node_id, round, decision, feedback, decided_by, decided_at, inputs) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dag_id, node_id, round) DO NOTHING",
            )
            .bind(&dag_id)
            .bind(&decision.node_id)
            .bind(decision.round)
            .bind(&decision.decision)
            .bind(&decision.feedback)
            .bind(&decision.decided_by)
            .bind(&decision.decided_at)
            .bind(&decision.inputs)
            .execute(&self.pool)
            .await
            .map_err(fail)?;
            if inserted.rows_affected() == 1 {
                return Ok(Claim::Won);
            }
            sqlx::query_as(
                "SELECT node_id, round, decision, feedback, decided_by, decided_at, inputs FROM decisions \
                 WHERE dag_id = ? AND node_id = ? AND round = ?",
            )
            .bind(&dag_id)
            .bind(&decision.node_id)
            .bind(decision.round)
            .fetch_one(&self.pool)
            .await
            .map(Claim::Taken)
            .map_err(fail)
        })
    }

    fn queue_notifications(&self, rows: Vec<NotificationRow>) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let fail = |e| StoreError::from_sqlx("cannot queue notifications", e);
            let mut tx = self.pool.begin().await.map_err(fail)?;
            let mut new = 0;
            for row in rows {
                let done = sqlx::query(
                    "INSERT INTO notifications (id, dag_id, seq, topic, url, format, secret, body, created_at, next_attempt_at, attempts, outcome) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 'pending') ON CONFLICT (id) DO NOTHING",
                )
                .bind(&row.id)
                .bind(&row.dag_id)
                .bind(row.seq)
                .bind(&row.topic)
                .bind(&row.url)
                .bind(&row.format)
                .bind(&row.secret)
                .bind(&row.body)
                .bind(row.created_at)
                .bind(row.next_attempt_at)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
                new += done.rows_affected() as usize;
            }
            tx.commit().await.map_err(fail)?;
            Ok(new)
        })
    }

    fn due_notifications(
        &self,
        now: i64,
        hold_until: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<NotificationRow>, StoreError>> {
        Box::pin(async move {
            sqlx::query_as(
                "UPDATE notifications SET next_attempt_at = ? WHERE id IN ( \
                   SELECT id FROM notifications WHERE outcome = 'pending' AND next_attempt_at <= ? \
                   ORDER BY next_attempt_at LIMIT ?) \
                 RETURNING id, dag_id, seq, topic, url, format, secret, body, created_at, next_attempt_at, attempts, outcome",
            )
            .bind(hold_until)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot take due notifications", e))
        })
    }

    fn record_attempt(
        &self,
        attempt: AttemptRow,
        next_attempt_at: Option<i64>,
        outcome: &str,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let outcome = outcome.to_owned();
        Box::pin(async move {
            let fail = |e| StoreError::from_sqlx("cannot record a delivery attempt", e);
            let mut tx = self.pool.begin().await.map_err(fail)?;
            sqlx::query(
                "INSERT INTO notification_attempts (notification_id, attempt, at, status, error) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (notification_id, attempt) DO NOTHING",
            )
            .bind(&attempt.notification_id)
            .bind(attempt.attempt)
            .bind(attempt.at)
            .bind(attempt.status)
            .bind(&attempt.error)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
            sqlx::query(
                "UPDATE notifications SET attempts = ?, next_attempt_at = ?, outcome = ?, \
                 body = CASE WHEN ? = 'pending' THEN body ELSE '' END, secret = CASE WHEN ? = 'pending' THEN secret ELSE NULL END WHERE id = ?",
            )
            .bind(attempt.attempt)
            .bind(next_attempt_at)
            .bind(&outcome)
            .bind(&outcome)
            .bind(&outcome)
            .bind(&attempt.notification_id)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
            tx.commit().await.map_err(fail)
        })
    }

    fn add_gate_links(&self, links: Vec<GateLinkRow>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let fail = |e| StoreError::from_sqlx("cannot keep approval links", e);
            let mut tx = self.pool.begin().await.map_err(fail)?;
            for link in links {
                sqlx::query(
                    "INSERT INTO gate_links (token_sha256, dag_id, node_id, waiting_seq, person, created_at, used_at) \
                     VALUES (?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (token_sha256) DO NOTHING",
                )
                .bind(&link.token_sha256)
                .bind(&link.dag_id)
                .bind(&link.node_id)
                .bind(link.waiting_seq)
                .bind(&link.person)
                .bind(link.created_at)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            }
            tx.commit().await.map_err(fail)
        })
    }

    fn gate_link(&self, token_sha256: &str) -> BoxFuture<'_, Result<Option<GateLinkRow>, StoreError>> {
        let token_sha256 = token_sha256.to_owned();
        Box::pin(async move {
            sqlx::query_as(
                "SELECT token_sha256, dag_id, node_id, waiting_seq, person, created_at, used_at FROM gate_links \
                 WHERE token_sha256 = ?",
            )
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot read an approval link", e))
        })
    }

    fn use_gate_link(&self, token_sha256: &str, at: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        let token_sha256 = token_sha256.to_owned();
        Box::pin(async move {
            let done = sqlx::query("UPDATE gate_links SET used_at = ? WHERE token_sha256 = ? AND used_at IS NULL")
                .bind(at)
                .bind(token_sha256)
                .execute(&self.pool)
                .await
                .map_err(|e| StoreError::from_sqlx("cannot use an approval link", e))?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn release_gate_link(&self, token_sha256: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let token_sha256 = token_sha256.to_owned();
        Box::pin(async move {
            sqlx::query("UPDATE gate_links SET used_at = NULL WHERE token_sha256 = ?")
                .bind(token_sha256)
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| StoreError::from_sqlx("cannot release an approval link", e))
        })
    }

    fn notifications(&self, dag_id: &str) -> BoxFuture<'_, Result<RunNotifications, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move {
            let fail = |e| StoreError::from_sqlx("cannot read notifications", e);
            let rows: Vec<NotificationRow> = sqlx::query_as(
                "SELECT id, dag_id, seq, topic, url, format, NULL AS secret, body, created_at, next_attempt_at, attempts, outcome \
                 FROM notifications WHERE dag_id = ? ORDER BY seq, id",
            )
            .bind(&dag_id)
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?;
            let attempts = sqlx::query_as(
                "SELECT a.notification_id, a.attempt, a.at, a.status, a.error FROM notification_attempts a \
                 JOIN notifications n ON n.id = a.notification_id WHERE n.dag_id = ? ORDER BY a.notification_id, a.attempt",
            )
            .bind(&dag_id)
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?;
            Ok((rows, attempts))
        })
    }

    fn decisions(&self, dag_id: &str) -> BoxFuture<'_, Result<Vec<DecisionRow>, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move {
            sqlx::query_as(
                "SELECT node_id, round, decision, feedback, decided_by, decided_at, inputs FROM decisions WHERE dag_id = ? \
                 ORDER BY decided_at, node_id, round",
            )
            .bind(dag_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot read decisions", e))
        })
    }
}
