//! The PostgreSQL store: the same logical schema as SQLite's, migrations in
//! `migrations/postgres/` (each in one transaction, under sqlx's advisory lock, so instances
//! that start together migrate once). Event bodies are `json` (kept byte for byte), the spec is
//! `jsonb`. A batch of events is one `INSERT … SELECT FROM UNNEST(…)` in one transaction: one
//! round trip per batch, whatever its size.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::ConnectOptions;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{
    Appended, AttemptRow, Claim, DecisionRow, GateLinkRow, NotificationRow, RunNotifications, RunRecord, SessionRow,
    Store, StoreError, StoredEvent, UserRow,
};
use crate::protocol::Seq;

/// How long opening waits for a connection before it says the server cannot be reached.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
}

/// Reads a `postgres://` URL, or says what is wrong with it (never echoing a password).
///
/// sqlx's log line per statement is off: besides its volume, the check whether to write it,
/// made after every query on the runtime's threads, leaves tracing-subscriber's per-layer
/// filter state stale (tokio-rs/tracing#2519), and with traces exported the next line or span
/// on that thread was lost (a cluster instance lost most of its own lines, and its runs their
/// traces; `tests/cluster.rs` checks both).
pub(super) fn connect_options(url: &str) -> Result<PgConnectOptions, String> {
    PgConnectOptions::from_str(url)
        .map(|options| options.disable_statement_logging())
        .map_err(|e| format!("{:?} is not a PostgreSQL URL: {e}", super::redacted(url)))
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

    fn session(&self, id_hash: &str) -> BoxFuture<'_, Result<Option<SessionRow>, StoreError>> {
        let id_hash = id_hash.to_owned();
        Box::pin(async move {
            sqlx::query_as::<_, SessionRow>("SELECT id_hash, user_name, expires_at FROM sessions WHERE id_hash = $1")
                .bind(id_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| StoreError::from_sqlx("cannot read the session", e))
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

    fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<Appended, StoreError>> {
        Box::pin(async move {
            let fail = |e| StoreError::from_sqlx("cannot store events", e);
            let mut tx = self.pool.begin().await.map_err(fail)?;
            let fenced = fence(&mut tx, &events).await.map_err(fail)?;
            let events: Vec<&StoredEvent> = events
                .iter()
                .filter(|event| !fenced.iter().any(|(run, epoch)| *run == event.dag_id && Some(*epoch) == event.epoch))
                .collect();
            // Each run's last state in the batch, and when it ended if that state is an end:
            // only the last one of a batch stands (a repair's `running` reopens an ended run).
            let mut states: Vec<(&str, &str, Option<&str>)> = Vec::new();
            for event in &events {
                let Some(state) = event.run_state else { continue };
                let finished = state.is_terminal().then_some(&*event.at);
                match states.iter_mut().find(|(dag_id, ..)| *dag_id == &*event.dag_id) {
                    Some(last) => *last = (last.0, state.as_str(), finished),
                    None => states.push((&*event.dag_id, state.as_str(), finished)),
                }
            }
            if !events.is_empty() {
                // COPY, the cheapest way into PostgreSQL: half the server's time of an INSERT
                // that unnests arrays (measured with `dagstream bench store`).
                let mut copy = tx.copy_in_raw("COPY events (dag_id, seq, body) FROM STDIN").await.map_err(fail)?;
                copy.send(copy_rows(&events)).await.map_err(fail)?;
                copy.finish().await.map_err(fail)?;
            }
            for (dag_id, state, finished) in states {
                // An end frees the run's lease at once: a repair may reopen it on any instance
                // (`PgStore::reopen_run`) without waiting for the lease to run out.
                sqlx::query(
                    "UPDATE runs SET state = $1, finished_at = $2, \
                     lease_until = CASE WHEN $2::text IS NULL THEN lease_until END WHERE dag_id = $3",
                )
                .bind(state)
                .bind(finished)
                .bind(dag_id)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            }
            tx.commit().await.map_err(fail)?;
            Ok(Appended { fenced })
        })
    }

    fn run(&self, dag_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move {
            sqlx::query_as(
                "SELECT dag_id, name, spec::text AS spec, state, started_at, finished_at FROM runs WHERE dag_id = $1",
            )
            .bind(dag_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot read the run", e))
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
                "INSERT INTO decisions (dag_id, node_id, round, decision, feedback, decided_by, decided_at, inputs) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (dag_id, node_id, round) DO NOTHING",
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

    fn queue_notifications(&self, rows: Vec<NotificationRow>) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let fail = |e| StoreError::from_sqlx("cannot queue notifications", e);
            let mut tx = self.pool.begin().await.map_err(fail)?;
            let mut new = 0;
            for row in rows {
                let done = sqlx::query(
                    "INSERT INTO notifications (id, dag_id, seq, topic, url, format, secret, body, created_at, next_attempt_at, attempts, outcome) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, 'pending') ON CONFLICT (id) DO NOTHING",
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
                "UPDATE notifications SET next_attempt_at = $1 WHERE id IN ( \
                   SELECT id FROM notifications WHERE outcome = 'pending' AND next_attempt_at <= $2 \
                   ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
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
                "INSERT INTO notification_attempts (notification_id, attempt, at, status, error) VALUES ($1, $2, $3, $4, $5) \
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
                "UPDATE notifications SET attempts = $1, next_attempt_at = $2, outcome = $3, \
                 body = CASE WHEN $3 = 'pending' THEN body ELSE '' END, secret = CASE WHEN $3 = 'pending' THEN secret ELSE NULL END WHERE id = $4",
            )
            .bind(attempt.attempt)
            .bind(next_attempt_at)
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
                     VALUES ($1, $2, $3, $4, $5, $6, NULL) ON CONFLICT (token_sha256) DO NOTHING",
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
                 WHERE token_sha256 = $1",
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
            let done = sqlx::query("UPDATE gate_links SET used_at = $1 WHERE token_sha256 = $2 AND used_at IS NULL")
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
            sqlx::query("UPDATE gate_links SET used_at = NULL WHERE token_sha256 = $1")
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
                "SELECT id, dag_id, seq, topic, url, format, NULL::text AS secret, body, created_at, next_attempt_at, attempts, outcome \
                 FROM notifications WHERE dag_id = $1 ORDER BY seq, id",
            )
            .bind(&dag_id)
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?;
            let attempts = sqlx::query_as(
                "SELECT a.notification_id, a.attempt, a.at, a.status, a.error FROM notification_attempts a \
                 JOIN notifications n ON n.id = a.notification_id WHERE n.dag_id = $1 ORDER BY a.notification_id, a.attempt",
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
                "SELECT node_id, round, decision, feedback, decided_by, decided_at, inputs FROM decisions WHERE dag_id = $1 \
                 ORDER BY decided_at, node_id, round",
            )
            .bind(dag_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot read decisions", e))
        })
    }
}

/// The (run, epoch) of `events` whose epoch is no longer the run's: their owner was fenced out
/// by a newer claim. The rows of the others are locked (`FOR SHARE`) until the transaction
/// ends, so a claim, which updates the row, waits for this append to commit: no event of an old
/// epoch is stored after a new owner read the log.
async fn fence(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    events: &[StoredEvent],
) -> Result<Vec<(Arc<str>, i64)>, sqlx::Error> {
    let mut leases: Vec<(&Arc<str>, i64)> = Vec::new();
    for event in events {
        if let Some(epoch) = event.epoch
            && !leases.iter().any(|(dag_id, held)| **dag_id == event.dag_id && *held == epoch)
        {
            leases.push((&event.dag_id, epoch));
        }
    }
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = leases.iter().map(|(dag_id, _)| &***dag_id).collect();
    let epochs: Vec<i64> = leases.iter().map(|(_, epoch)| *epoch).collect();
    let current: Vec<(String, i64)> = sqlx::query_as(
        "SELECT r.dag_id, r.epoch FROM runs r JOIN UNNEST($1::text[], $2::bigint[]) AS held (dag_id, epoch) \
         ON r.dag_id = held.dag_id AND r.epoch = held.epoch FOR SHARE OF r",
    )
    .bind(&ids)
    .bind(&epochs)
    .fetch_all(&mut **tx)
    .await?;
    Ok(leases
        .into_iter()
        .filter(|(dag_id, epoch)| !current.iter().any(|(id, current)| id.as_str() == &***dag_id && current == epoch))
        .map(|(dag_id, epoch)| (Arc::clone(dag_id), epoch))
        .collect())
}

/// A duration as PostgreSQL reads `$n::float8 * interval '1 millisecond'`.
fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The condition under which `$me` may claim a run: it is unfinished, driven by dagstream's
/// engine (not an external one), and its lease is free or expired, or it was placed on `$me`
/// and not claimed yet (epoch 0).
const CLAIMABLE: &str = "finished_at IS NULL AND NOT COALESCE((spec->>'external')::boolean, false) \
     AND (lease_until IS NULL OR lease_until < clock_timestamp() OR (owner = $me AND epoch = 0))";

/// A run a repair may reopen on instance `$2`: ended, not an external engine's, and its lease
/// free, run out, or `$2`'s own.
const REOPENABLE: &str = "finished_at IS NOT NULL AND NOT COALESCE((spec->>'external')::boolean, false) \
     AND (lease_until IS NULL OR lease_until < clock_timestamp() OR owner = $2)";

/// Run leases and cluster membership (`dagstream serve --nats`): what several instances on one
/// database agree through. Every time is the database's clock.
impl PgStore {
    /// Says instance `id` (answering at `address`) is alive now.
    pub async fn heartbeat(&self, id: &str, address: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (id, address, seen_at) VALUES ($1, $2, clock_timestamp()) \
             ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, seen_at = EXCLUDED.seen_at",
        )
        .bind(id)
        .bind(address)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|e| StoreError::from_sqlx("cannot record the instance", e))
    }

    /// Instance `id` leaves: it is no longer a candidate for new runs, and the leases it holds
    /// end now, so other instances claim its runs at once rather than after the lease time.
    pub async fn leave(&self, id: &str) -> Result<(), StoreError> {
        let fail = |e| StoreError::from_sqlx("cannot leave the cluster", e);
        let mut tx = self.pool.begin().await.map_err(fail)?;
        sqlx::query("DELETE FROM instances WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(fail)?;
        sqlx::query("UPDATE runs SET lease_until = NULL WHERE owner = $1 AND finished_at IS NULL")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    /// Every instance seen within `ttl`, with its address.
    pub async fn live_instances(&self, ttl: Duration) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query_as(
            "SELECT id, address FROM instances \
             WHERE seen_at > clock_timestamp() - $1::float8 * interval '1 millisecond' ORDER BY id",
        )
        .bind(millis(ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("cannot read instances", e))
    }

    /// Places a new run (epoch 0) on the live instance (seen within `ttl`) that owns the fewest
    /// unfinished runs, holding it for that instance for `ttl`; answers its id, or `None` when
    /// no instance is live. The instance then claims it ([`PgStore::claim_run`]); if it never
    /// does, the lease runs out and any instance may.
    pub async fn place_run(&self, dag_id: &str, ttl: Duration) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "WITH chosen AS ( \
                SELECT i.id FROM instances i \
                WHERE i.seen_at > clock_timestamp() - $2::float8 * interval '1 millisecond' \
                ORDER BY (SELECT count(*) FROM runs r WHERE r.owner = i.id AND r.finished_at IS NULL), random() \
                LIMIT 1) \
             UPDATE runs SET owner = chosen.id, lease_until = clock_timestamp() + $2::float8 * interval '1 millisecond' \
             FROM chosen WHERE runs.dag_id = $1 AND runs.epoch = 0 RETURNING runs.owner",
        )
        .bind(dag_id)
        .bind(millis(ttl))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("cannot place the run", e))
    }

    /// Claims run `dag_id` for instance `me` for `ttl` if it is claimable (see [`CLAIMABLE`]):
    /// answers the new epoch, or `None` when another instance holds it or it has ended. One
    /// conditional `UPDATE`: of several claimers, exactly one gets the row.
    pub async fn claim_run(&self, dag_id: &str, me: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        self.take_lease(dag_id, me, ttl, &CLAIMABLE.replace("$me", "$2"), "cannot claim the run").await
    }

    /// Claims ended run `dag_id` for instance `me` for `ttl`, for a repair that reopens it:
    /// answers the new epoch, or `None` when the run has not ended, is an external engine's, or
    /// another instance reopened it and still holds its lease. One conditional `UPDATE`: of
    /// several instances reopening the run at once, exactly one gets it. The run stays ended
    /// in the store until the repair's first events are stored (they set `finished_at` back to
    /// `NULL`); if no repair follows, the lease runs out and the run stays as it was.
    pub async fn reopen_run(&self, dag_id: &str, me: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        self.take_lease(dag_id, me, ttl, REOPENABLE, "cannot reopen the run").await
    }

    /// Gives run `dag_id`'s lease to instance `me` for `ttl` with a new epoch, if the row meets
    /// `condition` (SQL over `runs`, `$2` being `me`): answers the new epoch, or `None`.
    async fn take_lease(
        &self,
        dag_id: &str,
        me: &str,
        ttl: Duration,
        condition: &str,
        failure: &'static str,
    ) -> Result<Option<i64>, StoreError> {
        let take = format!(
            "UPDATE runs SET owner = $2, epoch = epoch + 1, \
             lease_until = clock_timestamp() + $3::float8 * interval '1 millisecond' \
             WHERE dag_id = $1 AND {condition} RETURNING epoch"
        );
        sqlx::query_scalar(&take)
            .bind(dag_id)
            .bind(me)
            .bind(millis(ttl))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(failure, e))
    }

    /// Runs instance `me` could claim now, oldest first.
    pub async fn claimable_runs(&self, me: &str) -> Result<Vec<String>, StoreError> {
        let query =
            format!("SELECT dag_id FROM runs WHERE {} ORDER BY started_at, dag_id", CLAIMABLE.replace("$me", "$1"));
        sqlx::query_scalar(&query)
            .bind(me)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot look for runs to claim", e))
    }

    /// Extends by `ttl` the leases `me` holds on `held` (run, epoch); answers the runs whose
    /// lease it still holds. A run missing from the answer was claimed by another instance:
    /// `me` must stop driving it.
    pub async fn renew_leases(
        &self,
        me: &str,
        held: &[(String, i64)],
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = held.iter().map(|(dag_id, _)| dag_id.as_str()).collect();
        let epochs: Vec<i64> = held.iter().map(|(_, epoch)| *epoch).collect();
        sqlx::query_scalar(
            "UPDATE runs r SET lease_until = clock_timestamp() + $4::float8 * interval '1 millisecond' \
             FROM UNNEST($1::text[], $2::bigint[]) AS held (dag_id, epoch) \
             WHERE r.dag_id = held.dag_id AND r.epoch = held.epoch AND r.owner = $3 RETURNING r.dag_id",
        )
        .bind(&ids)
        .bind(&epochs)
        .bind(me)
        .bind(millis(ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("cannot renew leases", e))
    }

    /// The instance holding run `dag_id`'s lease now, if any.
    pub async fn owner(&self, dag_id: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT owner FROM runs WHERE dag_id = $1 AND owner IS NOT NULL AND lease_until > clock_timestamp()",
        )
        .bind(dag_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("cannot read the run's owner", e))
    }

    /// The `seq` of the last stored event of each of `dag_ids` that has events.
    pub async fn last_seqs(&self, dag_ids: &[String]) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as(
            "SELECT run.dag_id, last.seq FROM UNNEST($1::text[]) AS run (dag_id) \
             CROSS JOIN LATERAL (SELECT max(seq) AS seq FROM events e WHERE e.dag_id = run.dag_id) AS last \
             WHERE last.seq IS NOT NULL",
        )
        .bind(dag_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("cannot read the runs' positions", e))
    }

    /// Ids of every run (or of the unfinished ones only), oldest first.
    pub async fn run_ids(&self, unfinished_only: bool) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT dag_id FROM runs WHERE finished_at IS NULL OR NOT $1 ORDER BY started_at, dag_id")
            .bind(unfinished_only)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx("cannot list runs", e))
    }
}

/// The events as rows of COPY's text format: tab-separated columns, one row per line, with
/// backslash, tab, newline and carriage return escaped.
fn copy_rows(events: &[&StoredEvent]) -> Vec<u8> {
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
            epoch: None,
        };
        let mut raw = event.clone();
        raw.json = "x\ty\nz\r".into();
        let rows = String::from_utf8(copy_rows(&[&event, &raw])).expect("utf-8");
        assert_eq!(rows, "run\t7\t{\"line\":\"a\\\\\\\\b\\\\\"c\",\"raw\":\"tab\\\\there\"}\nrun\t7\tx\\ty\\nz\\r\n");
    }
}
