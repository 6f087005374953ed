//! The embedded SQLite store: one file, WAL mode, migrations in `migrations/sqlite/`.

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::ConnectOptions;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{
    Appended, AttemptRow, Claim, DecisionRow, GateLinkRow, NotificationRow, RunNotifications, RunRecord, SessionRow,
    Store, StoreError, StoredEvent, UserRow,
};
use crate::protocol::Seq;

/// Rows per `INSERT` statement (3 bound values each, far below SQLite's variable limit).
const ROWS_PER_INSERT: usize = 256;

/// The embedded SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
    /// The event writer's own connection, opened with the store and never closed: an append
    /// never waits for a connection to be opened (a pool opens them as needed and closes idle
    /// ones) nor prepares its statements again, and SQLite takes one writer at a time anyway.
    appends: SqlitePool,
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
            .foreign_keys(true)
            // No log line per statement, as on PostgreSQL (`store::postgres::connect_options`).
            .disable_statement_logging();
        let what = path.display().to_string();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A file on this machine does not go away between two uses; pinging it before each
            // use would put one more round trip to SQLite's thread in front of the statement.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::from_sqlx(&format!("cannot open the database {what}"), e))?;
        let appends = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_lazy_with(options);
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError(format!("cannot prepare the database {what}: {e}")))?;
        // A read-only file opens fine; find out now rather than at the first event.
        sqlx::query("UPDATE meta SET value = value WHERE key = 'schema'")
            .execute(&pool)
            .await
            .map_err(|e| StoreError::from_sqlx(&format!("the database {what} is not writable"), e))?;
        // Opened now (after the migrations): the first event does not wait for it.
        drop(
            appends
                .acquire()
                .await
                .map_err(|e| StoreError::from_sqlx(&format!("cannot open the database {what}"), e))?,
        );
        Ok(SqliteStore { pool, appends })
    }
}

/// One `INSERT` of `events` (at most [`ROWS_PER_INSERT`]).
fn insert_events(events: &[StoredEvent]) -> sqlx::QueryBuilder<'_, sqlx::Sqlite> {
    let mut insert = sqlx::QueryBuilder::new("INSERT INTO events (dag_id, seq, body) ");
    insert.push_values(events, |mut row, event| {
        row.push_bind(&*event.dag_id).push_bind(event.seq as i64).push_bind(&*event.json);
    });
    insert
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
            let fail = |e| StoreError::from_sqlx("cannot store events", e);
            if events.iter().any(|event| event.epoch.is_some()) {
                // Leases are a cluster's, and a cluster keeps its runs in PostgreSQL.
                return Err(StoreError("SQLite keeps no run leases: a cluster needs PostgreSQL".into()));
            }
            if events.is_empty() {
                return Ok(Appended::default());
            }
            let mut connection = self.appends.acquire().await.map_err(fail)?;
            if events.len() <= ROWS_PER_INSERT && events.iter().all(|event| event.run_state.is_none()) {
                // One statement is atomic on its own: one round trip to SQLite's thread, where a
                // transaction takes three.
                insert_events(&events).build().execute(&mut *connection).await.map_err(fail)?;
                return Ok(Appended::default());
            }
            let mut tx = sqlx::Connection::begin(&mut *connection).await.map_err(fail)?;
            // Many rows per statement: one round trip to SQLite per chunk, not per event.
            for chunk in events.chunks(ROWS_PER_INSERT) {
                insert_events(chunk).build().execute(&mut *tx).await.map_err(fail)?;
            }
            for event in &events {
                if let Some(state) = event.run_state {
                    let finished = state.is_terminal().then(|| event.at.to_string());
                    sqlx::query("UPDATE runs SET state = ?, finished_at = ? WHERE dag_id = ?")
                        .bind(state.as_str())
                        .bind(finished)
                        .bind(&*event.dag_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                }
            }
            tx.commit().await.map_err(fail)?;
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
