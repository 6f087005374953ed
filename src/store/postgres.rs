//! The PostgreSQL store: the same logical schema as SQLite's, migrations in
//! `migrations/postgres/` (each in one transaction, under sqlx's advisory lock, so instances
//! that start together migrate once). Event bodies are `json` (kept byte for byte), the spec is
//! `jsonb`. A batch of events is one `INSERT … SELECT FROM UNNEST(…)` in one transaction: one
//! round trip per batch, whatever its size.

use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{Claim, DecisionRow, RunRecord, SessionRow, Store, StoreError, StoredEvent, UserRow};
use crate::protocol::Seq;

/// How long opening waits for a connection before it says the server cannot be reached.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
}

/// Reads a `postgres://` URL, or says what is wrong with it (never echoing a password).
pub(super) fn connect_options(url: &str) -> Result<PgConnectOptions, String> {
    PgConnectOptions::from_str(url).map_err(|e| format!("{:?} is not a PostgreSQL URL: {e}", super::redacted(url)))
}

/// `host:port/database`, for messages.
fn place(options: &PgConnectOptions) -> String {
    format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or("(default)"))
}

impl PgStore {
    /// Connects with a pool of `pool_size` connections and migrates the database. Fails with
    /// the host and what went wrong when the server cannot be reached, refuses the login, or a
    /// migration fails (which then leaves the schema as it was).
    pub async fn open(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let options = connect_options(url).map_err(StoreError)?;
        let place = place(&options);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::from_sqlx(&format!("cannot connect to PostgreSQL at {place}"), e))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError(format!("cannot prepare the database at {place}: {e}")))?;
        Ok(PgStore { pool })
    }
}

impl Store for PgStore {
    fn save_session(&self, session: SessionRow) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // Expired sessions go when a new one comes: the table stays as small as the logins.
            let now = super::unix_now();
            let mut tx = self.pool.begin().await.map_err(|e| StoreError::from_sqlx("cannot store the session", e))?;
            sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx("cannot expire sessions", e))?;
            sqlx::query("INSERT INTO sessions (id_hash, user_name, expires_at) VALUES ($1, $2, $3)")
                .bind(&session.id_hash)
                .bind(&session.user_name)
                .bind(session.expires_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx("cannot store the session", e))?;
            tx.commit().await.map_err(|e| StoreError::from_sqlx("cannot store the session", e))
        })
    }

    fn delete_session(&self, id_hash: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let id_hash = id_hash.to_owned();
        Box::pin(async move {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
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
            sqlx::query(
                "INSERT INTO users (name, token_sha256, role) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            )
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
                "INSERT INTO runs (dag_id, name, spec, state, started_at, finished_at) \
                 VALUES ($1, $2, $3::jsonb, $4, $5, $6)",
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
            // Each run's last state in the batch, and when it ended if it did: only the last one
            // of a batch stands.
            let mut states: Vec<(&str, &str, Option<&str>)> = Vec::new();
            for event in &events {
                let Some(state) = event.run_state else { continue };
                let finished = state.is_terminal().then_some(&*event.at);
                match states.iter_mut().find(|(dag_id, ..)| *dag_id == &*event.dag_id) {
                    Some(last) => *last = (last.0, state.as_str(), finished.or(last.2)),
                    None => states.push((&*event.dag_id, state.as_str(), finished)),
                }
            }
            let mut tx = self.pool.begin().await.map_err(fail)?;
            // COPY, the cheapest way into PostgreSQL: half the server's time of an INSERT that
            // unnests arrays (measured with `dagstream bench store`).
            let mut copy = tx.copy_in_raw("COPY events (dag_id, seq, body) FROM STDIN").await.map_err(fail)?;
            copy.send(copy_rows(&events)).await.map_err(fail)?;
            copy.finish().await.map_err(fail)?;
            for (dag_id, state, finished) in states {
                sqlx::query("UPDATE runs SET state = $1, finished_at = COALESCE($2, finished_at) WHERE dag_id = $3")
                    .bind(state)
                    .bind(finished)
                    .bind(dag_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
            }
            tx.commit().await.map_err(fail)
        })
    }

    fn runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
        Box::pin(async move {
            sqlx::query_as(
                "SELECT dag_id, name, spec::text AS spec, state, started_at, finished_at FROM runs \
                 ORDER BY started_at, dag_id",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot list runs", e))
        })
    }

    fn events(&self, dag_id: &str, after: Seq, up_to: Seq) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT body::text FROM events WHERE dag_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
            )
            .bind(dag_id)
            .bind(after.min(i64::MAX as u64) as i64)
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
            // A second inserter of the same key waits for the first one's commit, then inserts
            // nothing; the read after it sees the winner's row.
            let inserted = sqlx::query(
                "INSERT INTO decisions (dag_id, node_id, round, decision, feedback, decided_by, decided_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (dag_id, node_id, round) DO NOTHING",
            )
            .bind(&dag_id)
            .bind(&decision.node_id)
            .bind(decision.round)
            .bind(&decision.decision)
            .bind(&decision.feedback)
            .bind(&decision.decided_by)
            .bind(&decision.decided_at)
            .execute(&self.pool)
            .await
            .map_err(fail)?;
            if inserted.rows_affected() == 1 {
                return Ok(Claim::Won);
            }
            sqlx::query_as(
                "SELECT node_id, round, decision, feedback, decided_by, decided_at FROM decisions \
                 WHERE dag_id = $1 AND node_id = $2 AND round = $3",
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

    fn decisions(&self, dag_id: &str) -> BoxFuture<'_, Result<Vec<DecisionRow>, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move {
            sqlx::query_as(
                "SELECT node_id, round, decision, feedback, decided_by, decided_at FROM decisions WHERE dag_id = $1 \
                 ORDER BY decided_at, node_id, round",
            )
            .bind(dag_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot read decisions", e))
        })
    }
}

/// The events as rows of COPY's text format: tab-separated columns, one row per line, with
/// backslash, tab, newline and carriage return escaped.
fn copy_rows(events: &[StoredEvent]) -> Vec<u8> {
    let mut rows = Vec::with_capacity(events.iter().map(|e| e.dag_id.len() + e.json.len() + 24).sum());
    let field = |rows: &mut Vec<u8>, text: &str| {
        for byte in text.bytes() {
            match byte {
                b'\\' => rows.extend_from_slice(b"\\\\"),
                b'\t' => rows.extend_from_slice(b"\\t"),
                b'\n' => rows.extend_from_slice(b"\\n"),
                b'\r' => rows.extend_from_slice(b"\\r"),
                other => rows.push(other),
            }
        }
    };
    for event in events {
        field(&mut rows, &event.dag_id);
        rows.push(b'\t');
        rows.extend_from_slice(event.seq.to_string().as_bytes());
        rows.push(b'\t');
        field(&mut rows, &event.json);
        rows.push(b'\n');
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_escape_what_the_text_format_reads_as_special() {
        let event = StoredEvent {
            dag_id: "run".into(),
            seq: 7,
            json: r#"{"line":"a\\b\"c","raw":"tab\there"}"#.into(),
            run_state: None,
            at: "t".into(),
        };
        let mut raw = event.clone();
        raw.json = "x\ty\nz\r".into();
        let rows = String::from_utf8(copy_rows(&[event, raw])).expect("utf-8");
        assert_eq!(rows, "run\t7\t{\"line\":\"a\\\\\\\\b\\\\\"c\",\"raw\":\"tab\\\\there\"}\nrun\t7\tx\\ty\\nz\\r\n");
    }
}
