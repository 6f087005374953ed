//! Durable storage of runs, their event logs, gate decisions and login sessions, behind the
//! small [`Store`] trait. A leaf: it knows the wire protocol's types and nothing else of
//! dagstream. Each backend is one file, chosen by the `--database` URL ([`Database`], [`open`]):
//! [`sqlite`] is the embedded default (one file under `--data`, WAL mode, migrations in
//! `migrations/sqlite/`), [`postgres`] keeps the same logical schema in PostgreSQL
//! (`migrations/postgres/`).
//!
//! The engine never writes events to a store: rooms hand them to the hub's writer
//! (`hub::writer`), which commits them in batches (group commit) and only then lets the rooms
//! fold and broadcast them. A gate decision is recorded first, by itself, with
//! [`Store::claim_decision`]: the database keeps one decision per gate round, so of several
//! deciders, in one process or several, exactly one wins and the others learn who did.

mod postgres;
mod sqlite;
#[doc(hidden)]
pub mod testing;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::protocol::{RunPhase, Seq, ServerEvent, ServerEventBody};

pub use postgres::PgStore;
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

/// Connections a PostgreSQL store keeps open when `--pool-size` does not say.
pub const DEFAULT_POOL_SIZE: u32 = 8;

/// Which database a `--database` URL names.
#[derive(Clone, Debug, PartialEq)]
pub enum Database {
    /// `sqlite://PATH`: a file on this machine (created when missing).
    Sqlite(PathBuf),
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?...]` (or `postgresql://`).
    Postgres(String),
}

impl Database {
    /// The default: `dagstream.db` in the data directory.
    pub fn in_data_dir(data: &Path) -> Self {
        Database::Sqlite(data.join("dagstream.db"))
    }
}

impl FromStr for Database {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err(format!("{url:?} names no file: write sqlite://PATH"));
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Read it now, so a malformed URL stops the command before anything starts.
            postgres::connect_options(url)?;
            return Ok(Database::Postgres(url.to_owned()));
        }
        Err(format!(
            "{:?} is not a database URL dagstream knows: use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE",
            redacted(url)
        ))
    }
}

/// The URL as it may be shown: without its password.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Database::Postgres(url) => f.write_str(&redacted(url)),
        }
    }
}

/// A URL with the password between `:` and `@` of its authority replaced by `***`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => url.to_owned(),
    }
}

/// Opens (and migrates) the store a URL names. `pool_size` is PostgreSQL's connection count;
/// SQLite keeps its own few connections to the file.
pub async fn open(database: &Database, pool_size: u32) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match database {
        Database::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
        Database::Postgres(url) => Arc::new(PgStore::open(url, pool_size).await?),
    })
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
    /// When the run ended; `None` while it runs, and again once a repair reopened it.
    pub finished_at: Option<String>,
}

/// One event to store, as serialized for the wire.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub dag_id: Arc<str>,
    pub seq: Seq,
    pub json: Arc<str>,
    /// Set for `run_state`: the run's new state.
    pub run_state: Option<RunPhase>,
    pub at: Arc<str>,
    /// In a cluster: the epoch of the lease its run's owner holds. The store refuses the event
    /// when the run has been claimed since (a newer epoch): the writer was fenced out.
    /// `None` on a single server, which owns every run it drives.
    pub epoch: Option<i64>,
}

/// A gate decision as stored: the one decision of a gate's round.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct DecisionRow {
    pub node_id: String,
    /// Which of the gate's waits this decision ends, from 1: a gate that `modify` sent back
    /// waits again, and that wait gets a decision of its own.
    pub round: i64,
    pub decision: String,
    pub feedback: Option<String>,
    pub decided_by: String,
    pub decided_at: String,
    /// The values of the gate's form, as JSON text.
    pub inputs: Option<String>,
}

impl StoredEvent {
    /// The row(s) an event becomes; `at` (RFC 3339) is when it was published.
    pub fn new(dag_id: Arc<str>, event: &ServerEvent, json: Arc<str>, at: Arc<str>) -> Self {
        let run_state = if let ServerEventBody::RunStateChanged { state } = &event.body { Some(*state) } else { None };
        StoredEvent { dag_id, seq: event.seq, json, run_state, at, epoch: None }
    }
}

/// Where runs and their events are kept. Small on purpose, so another database can stand in.
pub trait Store: Send + Sync + 'static {
    /// Records a new run before any of its events.
    fn create_run(&self, run: RunRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Appends events (of any runs, each run's in `seq` order) in one transaction. Events that
    /// carry an epoch are stored only if it is still their run's epoch; the runs whose events
    /// were refused for that are answered ([`Appended::fenced`]), the others' are stored.
    fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<Appended, StoreError>>;
    /// One run's record, if it exists.
    fn run(&self, dag_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StoreError>> {
        let dag_id = dag_id.to_owned();
        Box::pin(async move { Ok(self.runs().await?.into_iter().find(|run| run.dag_id == dag_id)) })
    }
    /// Every run, oldest first.
    fn runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>>;
    /// Events of a run with `seq` in `after+1 ..= up_to`, in order, as JSON.
    fn events(&self, dag_id: &str, after: Seq, up_to: Seq) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
    /// Records `decision` as the one decision of its gate round, unless that round already has
    /// one: then that one is answered and nothing changes. The database decides (a unique key
    /// on run, gate and round), so this holds across processes.
    fn claim_decision(&self, dag_id: &str, decision: DecisionRow) -> BoxFuture<'_, Result<Claim, StoreError>>;
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
    /// One kept session, by the hash of its id: how an instance of a cluster learns of a
    /// sign-in on another.
    fn session(&self, id_hash: &str) -> BoxFuture<'_, Result<Option<SessionRow>, StoreError>> {
        let id_hash = id_hash.to_owned();
        Box::pin(async move { Ok(self.sessions().await?.into_iter().find(|row| row.id_hash == id_hash)) })
    }
    /// Adds a user; `false` when one of that name exists (nothing changes then).
    fn add_user(&self, _user: UserRow) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Err(StoreError("this store keeps no users".into())) })
    }
    /// Every user kept in the database, by name.
    fn users(&self) -> BoxFuture<'_, Result<Vec<UserRow>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Adds notifications to the outbox; one whose id is there already is left as it is.
    /// Answers how many were new.
    fn queue_notifications(&self, _rows: Vec<NotificationRow>) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async { Err(StoreError("this store keeps no notifications".into())) })
    }
    /// Takes up to `limit` pending notifications due at `now` (Unix ms) for sending: each is
    /// held until `hold_until`, so no other sender takes it meanwhile (in a cluster, every
    /// instance sends); if its sender dies, it is due again then.
    fn due_notifications(
        &self,
        _now: i64,
        _hold_until: i64,
        _limit: i64,
    ) -> BoxFuture<'_, Result<Vec<NotificationRow>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Records one attempt of a notification, and what follows: another attempt at
    /// `next_attempt_at`, or none (`outcome` delivered or failed; the secret and the body, with
    /// any approval links in it, are then forgotten).
    fn record_attempt(
        &self,
        _attempt: AttemptRow,
        _next_attempt_at: Option<i64>,
        _outcome: &str,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    /// A run's notifications (oldest first) and all their attempts.
    fn notifications(&self, _dag_id: &str) -> BoxFuture<'_, Result<RunNotifications, StoreError>> {
        Box::pin(async { Ok((Vec::new(), Vec::new())) })
    }
    /// Keeps approval links (their hashes); one whose hash is there already is left as it is.
    fn add_gate_links(&self, _links: Vec<GateLinkRow>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError("this store keeps no approval links".into())) })
    }
    /// The approval link with this token hash, if any.
    fn gate_link(&self, _token_sha256: &str) -> BoxFuture<'_, Result<Option<GateLinkRow>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    /// Marks a link used at `at` (Unix ms) unless it was used already: `true` when this call
    /// used it. The database decides, so of two presses of one link exactly one gets `true`.
    fn use_gate_link(&self, _token_sha256: &str, _at: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
    /// Makes a used link usable again: its decision was refused, and changed nothing.
    fn release_gate_link(&self, _token_sha256: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

/// An approval link as kept (`crate::links`): the hash of its token, never the token.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct GateLinkRow {
    pub token_sha256: String,
    pub dag_id: String,
    pub node_id: String,
    /// The `seq` of the `human_gate_waiting` that opened the wait it may decide.
    pub waiting_seq: i64,
    /// Who it lets decide: their name signs the decision.
    pub person: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; set once used.
    pub used_at: Option<i64>,
}

/// A run's notifications (oldest first) and every attempt of each.
pub type RunNotifications = (Vec<NotificationRow>, Vec<AttemptRow>);

/// A notification as the outbox keeps it (`notify::outbox`).
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct NotificationRow {
    /// The same for every attempt: receivers deduplicate on it.
    pub id: String,
    pub dag_id: String,
    pub seq: i64,
    pub topic: String,
    pub url: String,
    pub format: String,
    /// Kept while pending.
    pub secret: Option<String>,
    pub body: String,
    /// Unix ms.
    pub created_at: i64,
    pub next_attempt_at: Option<i64>,
    pub attempts: i64,
    /// `pending`, `delivered` or `failed`.
    pub outcome: String,
}

/// One attempt to deliver a notification.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct AttemptRow {
    pub notification_id: String,
    /// From 1.
    pub attempt: i64,
    /// Unix ms.
    pub at: i64,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<i64>,
    /// What went wrong, when it did.
    pub error: Option<String>,
}

/// A user who may sign in, as stored: the hash of their token, never the token. Every instance
/// on the database knows them (the users file is one machine's).
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct UserRow {
    pub name: String,
    /// SHA-256 of the token, hex.
    pub token_sha256: String,
    /// `viewer`, `approver`, `admin` or `engine`.
    pub role: String,
}

/// Now in Unix seconds, as sessions store their expiry.
fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// What [`Store::append`] did besides storing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Appended {
    /// (run, epoch) of the events that were not stored because the run was claimed by another
    /// instance since (the epoch is stale). Whoever drives the run with that epoch must stop.
    pub fenced: Vec<(Arc<str>, i64)>,
}

/// What [`Store::claim_decision`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// This decision is the gate round's decision.
    Won,
    /// Another decider was first: its decision stands.
    Taken(DecisionRow),
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
