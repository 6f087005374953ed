//! Throwaway databases for tests that run once per backend: a new SQLite file, or a new
//! PostgreSQL database on the server `DAGSTREAM_TEST_POSTGRES` names (the admin URL that
//! `scripts/with-postgres.sh`, and so `make test`, exports), dropped when the test ends.
//! Not used by the server itself.

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::Database;

/// The environment variable with the PostgreSQL server tests make their databases on.
pub const POSTGRES_ENV: &str = "DAGSTREAM_TEST_POSTGRES";

/// The two backends, for `#[case]`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test; a PostgreSQL one is dropped with this value.
pub struct Scratch {
    pub database: Database,
    /// The admin URL and database name to drop; `None` for SQLite (its file is left in the
    /// test's temp dir).
    drop_on_end: Option<(String, String)>,
}

impl Scratch {
    /// A new, empty database of `backend`; `name` makes it recognisable (letters, digits, `_`).
    /// Panics (it is a test) when PostgreSQL is wanted and `DAGSTREAM_TEST_POSTGRES` is not set,
    /// saying how to run the tests.
    pub async fn new(backend: Backend, name: &str) -> Scratch {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("{}_{}_{}", name, std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed));
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("dagstream-scratch-{unique}"));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("a temp dir for the test database");
                Scratch { database: Database::Sqlite(dir.join("test.db")), drop_on_end: None }
            }
            Backend::Postgres => {
                let admin = admin_url();
                let db_name: String = format!("dagstream_{unique}")
                    .to_ascii_lowercase()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .take(63)
                    .collect();
                let mut connection = PgConnection::connect(&admin).await.expect("the test PostgreSQL server answers");
                sqlx::raw_sql(&format!("CREATE DATABASE {db_name}"))
                    .execute(&mut connection)
                    .await
                    .expect("a test database is created");
                let _ = connection.close().await;
                let url = with_database(&admin, &db_name);
                Scratch { database: Database::Postgres(url), drop_on_end: Some((admin, db_name)) }
            }
        }
    }

    /// The URL to pass as `--database`.
    pub fn url(&self) -> String {
        match &self.database {
            Database::Sqlite(path) => format!("sqlite://{}", path.display()),
            Database::Postgres(url) => url.clone(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some((admin, db_name)) = self.drop_on_end.take() else { return };
        // Drop runs inside the test's runtime, which cannot block on itself: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut connection = PgConnection::connect(&admin).await.ok()?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                    .execute(&mut connection)
                    .await
                    .ok()
            })
        });
        let _ = dropped.join();
    }
}

/// `DAGSTREAM_TEST_POSTGRES`, or a panic that says how to get one.
pub fn admin_url() -> String {
    std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
        panic!(
            "this test runs on PostgreSQL too and {POSTGRES_ENV} is not set: run `make test` (it starts a throwaway \
             server), or `scripts/with-postgres.sh cargo test`, or set {POSTGRES_ENV}=postgres://USER@HOST:PORT/DATABASE"
        )
    })
}

/// The same server URL with another database name.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}
