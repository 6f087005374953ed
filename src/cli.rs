//! The `dagstream` command line, every subcommand:
//!
//! - `serve` (the default): the dashboard, the REST API and the event streams.
//! - `run SPEC`: one run, headless, with a live terminal view (`terminal`).
//! - `validate SPEC`: check a spec without running it (exit 2 with the reason).
//! - `schema [--protocol]`: the JSON Schema of specs, or of the wire protocol.
//! - `worker --nats URL --pool NAME`: runs a pool's command nodes for a cluster (`jobs`).
//! - `user add NAME --role ROLE [--group NAME]…`: a user of `serve --users FILE`, with a new token.
//! - `migrate --from URL --to URL`: copy every run from one database to another (`migrate`).
//! - `bench engine | store | fanout`: the benchmarks (`bench`).
//!
//! `serve`, `run` and the store benchmarks take `--database URL` (`sqlite://PATH`, the default
//! under `--data`, or `postgres://…`; also `DAGSTREAM_DATABASE`) and `--pool-size`. Every
//! subcommand takes `--log-format text|json` (the log on stderr).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use leptos::prelude::LeptosOptions;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;

use crate::cluster::{self, ClusterConfig};
use crate::engine::{DagSpec, EngineConfig, SpecFormat};
use crate::hub::RoomLimits;
use crate::protocol::Role;
use crate::runs::Runs;
use crate::server::auth::{UserRecord, UsersFile, new_secret};
use crate::server::{AppState, Auth, AuthSettings, StreamConfig, app};
use crate::store::{DEFAULT_POOL_SIZE, Database, PgStore};

#[derive(Parser)]
#[command(name = "dagstream", version, about = "A DAG execution engine with a live control room in the browser")]
struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    command: Option<Command>,
    /// How log lines (on stderr) are written: `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export traces over OTLP/HTTP to this collector (`http://HOST:4318`; `/v1/traces` is
    /// added when the URL has no path): a span per run, per node attempt and per gate wait.
    /// Off by default.
    #[arg(long, global = true, env = "DAGSTREAM_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

/// The shape of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the dashboard, the REST API and the event streams.
    Serve(ServeArgs),
    /// Check a spec file (TOML, or JSON by its .json extension) without running it.
    /// Exit status 0 when valid, 2 with the reason when not.
    Validate {
        /// The spec file.
        spec: PathBuf,
    },
    /// Run a spec headless with a live terminal view. Gates are asked on the terminal (answer
    /// approve, reject, or modify <feedback>). Exit status 0 completed, 1 failed, 130 cancelled,
    /// 2 invalid spec.
    Run {
        /// The spec file.
        spec: PathBuf,
        /// Approve every gate as soon as it waits.
        #[arg(long)]
        approve_all: bool,
        /// Directory for run working directories.
        #[arg(long, default_value = "./data")]
        data: PathBuf,
        /// Store the run in this database (a server on it then shows the run); not stored when
        /// omitted.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Print the JSON Schema of spec files (`schema/dag-spec.schema.json`), or with `--protocol`
    /// of the WebSocket messages (`schema/protocol.schema.json`, described in docs/protocol.md).
    Schema {
        /// The wire protocol's schema instead of the spec's.
        #[arg(long)]
        protocol: bool,
    },
    /// Manage the users of `serve --users FILE`.
    #[command(subcommand)]
    User(UserCommand),
    /// Copy every run, event and decision from one database to another (moving from SQLite to
    /// PostgreSQL), then check the copy by folding each run on both sides. Stop the servers on
    /// both first. Running it again copies only what is missing.
    Migrate {
        /// The database to copy from (sqlite://PATH or postgres://…); it is only read.
        #[arg(long, value_parser = parse_database)]
        from: Database,
        /// The database to copy to; created and migrated as needed.
        #[arg(long, value_parser = parse_database)]
        to: Database,
        /// Copy into a target that already holds runs (runs it has are completed, not doubled).
        #[arg(long)]
        append: bool,
    },
    /// Run the command nodes of one pool (`pool = "NAME"` in a spec) for a cluster: takes jobs
    /// from NATS JetStream and sends their output back. Needs only NATS and the spec's files,
    /// not the database (docs/cluster.md).
    Worker(WorkerArgs),
    /// Benchmarks, run on demand.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
struct WorkerArgs {
    /// The cluster's NATS server.
    #[arg(long, env = "DAGSTREAM_NATS")]
    nats: String,
    /// The pool whose jobs this worker runs (letters, digits, - and _).
    #[arg(long)]
    pool: String,
    /// Jobs run at the same time.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Each job runs in WORK/<dag_id>; created if missing.
    #[arg(long, default_value = "./worker-data")]
    work: PathBuf,
    /// This worker's name, in the run's log when it takes a job (default: a random one).
    #[arg(long)]
    id: Option<String>,
    /// How long a job may go without a sign of life before it goes to another worker; set on
    /// the pool when its first worker starts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ack_wait: std::time::Duration,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user with a new token. Prints the token once; the file keeps only its hash.
    Add {
        /// The user's name (shown as `decided_by` on their decisions).
        name: String,
        /// viewer (watch), approver (also decide gates, pause, resume, cancel), admin (also
        /// start runs and submit specs) or engine (watch, create and drive external runs).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The users file; created if missing. Not used with --database.
        #[arg(long, default_value = "users.toml")]
        users: PathBuf,
        /// A group the user is in, as gates name it (`approvers = ["group:leads"]`);
        /// repeatable. Groups live in the users file.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Keep the user in this database instead (every server on it knows them).
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::from_name(text).ok_or_else(|| format!("{text:?} is not a role: use viewer, approver, admin or engine"))
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Zero-duration simulate nodes through the engine with no subscriber: total and per node.
    Engine {
        /// Nodes per DAG.
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Edges of the random DAG.
        #[arg(long, default_value_t = 50_000)]
        edges: usize,
        /// max_parallel of the runs.
        #[arg(long, default_value_t = 64)]
        max_parallel: usize,
        /// Shapes to run (all when omitted).
        #[arg(long, value_enum)]
        shape: Vec<crate::bench::Shape>,
        /// Seed of the random DAG.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Persist every event in a SQLite store (group commit), as `serve` does.
        #[arg(long)]
        store: bool,
        /// Persist into this database instead of a new SQLite file (implies --store; the runs
        /// are added to what it holds: use a scratch database).
        #[arg(long, value_parser = parse_database)]
        database: Option<Database>,
        /// Attach one dashboard that reads every event through the room's fan-out (over an
        /// in-memory pipe), so the run is held back as with dashboards on sockets.
        #[arg(long)]
        subscriber: bool,
        /// Runs of each shape; the median is reported.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Delivery to many subscribers of one run: a `serve` child process, `clients` dashboards
    /// and an external engine publishing `events`; messages/s, latency, RSS per connection.
    Fanout {
        /// Subscribers of the run.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Events to publish (0: connect only and measure memory).
        #[arg(long, default_value_t = 2000)]
        events: usize,
        /// Events per second (as fast as the server takes them when omitted).
        #[arg(long)]
        rate: Option<u32>,
        /// Threads of the load generator reading the subscribers' sockets.
        #[arg(long, default_value_t = 1)]
        client_threads: usize,
        /// No server: plain threads write each event to every socket, to show what this
        /// machine's loopback TCP allows (the same subscribers read them).
        #[arg(long)]
        floor: bool,
        /// Measure a server that is already running and speaks the seed's stream protocol: the
        /// clients subscribe to this `ws://HOST:PORT/PATH` (with `DAGSTREAM_TOKEN` as bearer
        /// when set) instead of a `serve` the bench starts.
        #[arg(long, requires = "publish_url", conflicts_with = "floor")]
        url: Option<String>,
        /// With `--url`: where the bench publishes the events, a WebSocket that takes server
        /// events (dagstream's engine socket, or a peer's publish socket).
        #[arg(long, requires = "url")]
        publish_url: Option<String>,
        /// Measure a cluster: three `serve --nats` instances on the database of --database (a
        /// scratch PostgreSQL) and the NATS server of --nats; the engine publishes on the first,
        /// the clients are spread over all three.
        #[arg(long, requires_all = ["database", "nats"], conflicts_with_all = ["floor", "url"])]
        cluster: bool,
        /// With --cluster: the instances' PostgreSQL database.
        #[arg(long, requires = "cluster")]
        database: Option<String>,
        /// With --cluster: the instances' NATS server.
        #[arg(long, requires = "cluster")]
        nats: Option<String>,
    },
    /// Events persisted per second through the group-commit writer (into a new SQLite file
    /// unless --database says where).
    Store {
        /// Events to persist.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// The database to persist into (the run is added to what it holds: use a scratch one).
        #[arg(long, value_parser = parse_database)]
        database: Option<Database>,
    },
}

/// Where runs are kept.
#[derive(Args, Clone)]
struct DatabaseArgs {
    /// The database: sqlite://PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE.
    /// `serve`'s default is sqlite://DATA/dagstream.db. The environment variable keeps a
    /// password out of `ps`.
    #[arg(long, env = "DAGSTREAM_DATABASE")]
    database: Option<String>,
    /// Connections kept open to a PostgreSQL database.
    #[arg(long, default_value_t = DEFAULT_POOL_SIZE)]
    pool_size: u32,
}

impl DatabaseArgs {
    /// The database named, if one is; a URL dagstream cannot use is an error (exit 1).
    fn database(&self) -> Result<Option<Database>, String> {
        self.database.as_deref().map(str::parse).transpose()
    }

    /// The store of the database named, opened and migrated, if one is named.
    async fn open(&self) -> Result<Option<Arc<dyn crate::store::Store>>, String> {
        match self.database()? {
            Some(url) => crate::store::open(&url, self.pool_size).await.map(Some).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }
}

fn parse_database(url: &str) -> Result<Database, String> {
    url.parse()
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LEPTOS_SITE_ADDR", default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Directory for the server's data (run working directories, and the database unless
    /// --database names another); created if missing.
    #[arg(long, default_value = "./data")]
    data: PathBuf,
    #[command(flatten)]
    database: DatabaseArgs,
    /// The built site (wasm, JS, CSS). Default: `target/site` here, or next to the binary.
    #[arg(long, env = "LEPTOS_SITE_ROOT")]
    site_root: Option<PathBuf>,
    /// Users who may sign in besides the admin (TOML; make them with `dagstream user add`).
    #[arg(long)]
    users: Option<PathBuf>,
    /// Another origin whose pages may open WebSockets (exact, e.g. https://ops.example.com);
    /// repeatable. The server's own origin is always allowed.
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// Refuse specs with command nodes.
    #[arg(long)]
    no_commands: bool,
    /// How long a sign-in lasts.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    session_ttl: std::time::Duration,
    /// Client events one WebSocket connection may send per second.
    #[arg(long, default_value_t = 20)]
    client_event_rate: u32,
    /// Open WebSocket connections per user.
    #[arg(long, default_value_t = 64)]
    max_connections_per_user: usize,
    /// The server's config file (TOML): `public_url`, `[[notify]]` webhook targets, `[delivery]`
    /// (see README, Notifications).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Join a cluster through this NATS server (nats://HOST:PORT): every instance on the same
    /// PostgreSQL database and NATS serves every run (docs/cluster.md). Needs --database
    /// postgres://…
    #[arg(long, env = "DAGSTREAM_NATS")]
    nats: Option<String>,
    /// This instance's name in the cluster (default: a random one each start).
    #[arg(long, requires = "nats")]
    instance_id: Option<String>,
    /// How long a run's lease lasts without renewal: a crashed instance's runs go on elsewhere
    /// after at most this (renewed every third of it).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, requires = "nats")]
    lease_ttl: std::time::Duration,
}

/// Runs the command line; the process exits with the code this returns.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs what it does; the other commands only what went wrong.
    let default_filter = match cli.command {
        Some(Command::Serve(_)) | None => "info,tower_http=warn",
        Some(
            Command::Validate { .. }
            | Command::Run { .. }
            | Command::Schema { .. }
            | Command::Bench(_)
            | Command::Migrate { .. }
            | Command::User(_),
        ) => "warn",
        Some(Command::Worker(_)) => "info",
    };
    let telemetry = match init_logs(default_filter, cli.log_format, cli.otlp_endpoint.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(problem) => {
            eprintln!("dagstream: {problem}");
            return ExitCode::from(EXIT_INVALID_SPEC);
        }
    };
    let code = dispatch(cli.command).await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    code
}

/// Log lines on stderr (text or JSON) at `default_filter` (unless `RUST_LOG` says otherwise),
/// and with an OTLP endpoint the spans exported as traces.
fn init_logs(
    default_filter: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<Option<crate::telemetry::Telemetry>, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        // Each line one JSON object: time, level, target, the message and its fields, and the
        // spans it was logged in.
        LogFormat::Json => lines.json().with_current_span(true).with_span_list(true).boxed(),
    };
    let (telemetry, traces) = match otlp_endpoint {
        Some(endpoint) => {
            let (telemetry, layer) = crate::telemetry::otlp(endpoint)?;
            (Some(telemetry), Some(layer.with_filter(crate::telemetry::exported())))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(traces).with(lines.with_filter(filter)).init();
    if let Some(endpoint) = otlp_endpoint {
        tracing::info!(url = crate::telemetry::traces_url(endpoint), "exporting traces over OTLP");
    }
    Ok(telemetry)
}

/// Does what the command line asked.
async fn dispatch(command: Option<Command>) -> ExitCode {
    let result = match command {
        Some(Command::Serve(args)) => serve(args).await,
        None => serve(ServeArgs::parse_defaults()).await,
        Some(Command::Validate { spec }) => return validate(&spec),
        Some(Command::Run { spec, approve_all, data, database }) => {
            let spec = match load_spec(&spec) {
                Ok(spec) => spec,
                Err(message) => {
                    eprintln!("{message}");
                    return ExitCode::from(EXIT_INVALID_SPEC);
                }
            };
            let store = match database.open().await {
                Ok(store) => store,
                Err(problem) => {
                    eprintln!("dagstream: {problem}");
                    return ExitCode::FAILURE;
                }
            };
            let options = crate::terminal::RunOptions { approve_all, work_root: data.join("runs"), store };
            return crate::terminal::run(spec, options).await;
        }
        Some(Command::Migrate { from, to, append }) => {
            crate::migrate::migrate(&from, &to, append).await.map(|report| print!("{report}"))
        }
        Some(Command::Schema { protocol: false }) => {
            print!("{}", crate::engine::spec::json_schema());
            Ok(())
        }
        Some(Command::Schema { protocol: true }) => {
            print!("{}", crate::protocol::json_schema());
            Ok(())
        }
        Some(Command::Worker(args)) => worker(args).await,
        Some(Command::User(UserCommand::Add { name, role, users, groups, database })) => {
            add_user(&users, &database, &name, role, &groups).await
        }
        Some(Command::Bench(BenchCommand::Fanout {
            clients,
            events,
            rate,
            client_threads,
            floor,
            url,
            publish_url,
            cluster,
            database,
            nats,
        })) => {
            let outside =
                url.zip(publish_url).map(|(subscribe, publish)| crate::bench::fanout::Outside { subscribe, publish });
            let cluster = match (cluster, database, nats) {
                (true, Some(database), Some(nats)) => Some(crate::bench::fanout::ClusterBench { database, nats }),
                _ => None,
            };
            let settings =
                crate::bench::fanout::FanoutBench { clients, events, rate, client_threads, floor, outside, cluster };
            crate::bench::fanout::fanout(&settings).await.map(|report| print!("{report}"))
        }
        Some(Command::Bench(BenchCommand::Store { events, database })) => {
            crate::bench::store(&crate::bench::StoreBench { events, database }).await.map(|report| print!("{report}"))
        }
        Some(Command::Bench(BenchCommand::Engine {
            nodes,
            edges,
            max_parallel,
            shape,
            seed,
            store,
            database,
            subscriber,
            repeat,
        })) => {
            use crate::bench::{EngineBench, Shape};
            let shapes = if shape.is_empty() { vec![Shape::Wide, Shape::Chain, Shape::Random] } else { shape };
            let settings =
                EngineBench { nodes, edges, max_parallel, shapes, seed, store, database, subscriber, repeat };
            crate::bench::engine(&settings).await.map(|results| print!("{}", crate::bench::report(&results)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dagstream: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `user add`: into the database when one is named, else into the users file.
async fn add_user(
    path: &Path,
    database: &DatabaseArgs,
    name: &str,
    role: Role,
    groups: &[String],
) -> Result<(), String> {
    let (token, place) = match database.database()? {
        Some(_) if !groups.is_empty() => {
            return Err("groups live in the users file: add this user with --users FILE to give them groups".into());
        }
        Some(url) => {
            let (user, token) = UserRecord::new(name, role)?;
            let store = crate::store::open(&url, 1).await.map_err(|e| e.to_string())?;
            let row = crate::store::UserRow {
                name: user.name,
                token_sha256: user.token_sha256,
                role: role.as_str().to_owned(),
            };
            if !store.add_user(row).await.map_err(|e| e.to_string())? {
                return Err(format!("there is already a user called {name:?} in {url}"));
            }
            (token, url.to_string())
        }
        None => {
            let mut file = if path.exists() { UsersFile::load(path)? } else { UsersFile::default() };
            let token = file.add(name, role, groups)?;
            file.save(path)?;
            (token, path.display().to_string())
        }
    };
    println!("added {name} ({}) to {place}", role.as_str());
    println!("token (shown once, only its hash is kept): {token}");
    Ok(())
}

/// The environment variable that sets the admin token of `serve`.
pub const ADMIN_TOKEN_VARIABLE: &str = "DAGSTREAM_TOKEN";

/// Exit status of `validate` for a spec that cannot run (or cannot be read).
const EXIT_INVALID_SPEC: u8 = 2;

/// Reads and validates a spec file; a spec with a `.json` extension is JSON, any other TOML.
pub fn load_spec(path: &Path) -> Result<DagSpec, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    DagSpec::parse(&text, SpecFormat::from_path(path)).map_err(|e| format!("{}: {e}", path.display()))
}

fn validate(path: &Path) -> ExitCode {
    match load_spec(path) {
        Ok(spec) => {
            println!("{}: ok ({} nodes, \"{}\")", path.display(), spec.nodes.len(), spec.name);
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_INVALID_SPEC)
        }
    }
}

impl ServeArgs {
    /// `serve` with its defaults (and environment), for a bare `dagstream`.
    fn parse_defaults() -> Self {
        #[derive(Parser)]
        struct Bare {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Bare::parse_from(["dagstream"]).serve
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.data)
        .map_err(|e| format!("cannot create the data directory {}: {e}", args.data.display()))?;
    let site_root = find_site_root(args.site_root.as_deref())?;
    let leptos_options = LeptosOptions::builder()
        .output_name("dagstream")
        .site_root(site_root.to_string_lossy().into_owned())
        .site_pkg_dir("pkg")
        .site_addr(args.addr)
        .build();
    let database = args.database.database()?.unwrap_or_else(|| Database::in_data_dir(&args.data));
    let mut engine = EngineConfig::new(args.data.join("runs"));
    engine.allow_commands = !args.no_commands;
    let listener =
        tokio::net::TcpListener::bind(args.addr).await.map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let local = listener.local_addr().map_err(|e| format!("cannot read the listening address: {e}"))?;
    let config = match &args.config {
        Some(path) => crate::notify::ServerConfig::load(path)?,
        None => crate::notify::ServerConfig::default(),
    };
    let first_retry = config.delivery.first_retry()?;
    let public_url = config.public_url.clone().unwrap_or_else(|| format!("http://{local}"));
    let config = Arc::new(config);
    let (milestones, milestones_in) = tokio::sync::mpsc::unbounded_channel();
    let (store, runs, mut cluster) = match &args.nats {
        None => {
            let store = crate::store::open(&database, args.database.pool_size).await.map_err(|e| e.to_string())?;
            let runs = Runs::open_notifying(RoomLimits::default(), engine, Arc::clone(&store), Some(milestones))
                .await
                .map_err(|e| e.to_string())?;
            (store, Arc::new(runs), None)
        }
        Some(nats_url) => {
            let Database::Postgres(url) = &database else {
                return Err(format!(
                    "a cluster keeps its runs in PostgreSQL: --nats needs --database postgres://… (not {database})"
                ));
            };
            let store = Arc::new(PgStore::open(url, args.database.pool_size).await.map_err(|e| e.to_string())?);
            let cluster_config = ClusterConfig {
                nats_url: nats_url.clone(),
                instance_id: args.instance_id.clone().unwrap_or_else(|| new_secret()[..8].to_owned()),
                lease_ttl: args.lease_ttl,
                address: format!("http://{local}"),
            };
            let joined =
                cluster::join(cluster_config, RoomLimits::default(), engine, Arc::clone(&store), Some(milestones))
                    .await?;
            let store: Arc<dyn crate::store::Store> = store;
            (store, Arc::clone(&joined.runs), Some(joined))
        }
    };
    let users = match &args.users {
        Some(path) => UsersFile::load(path)?.users,
        None => Vec::new(),
    };
    // The admin token comes from the environment only (a flag would show in `ps`); without it a
    // new random one is made each start.
    let given_token = std::env::var(ADMIN_TOKEN_VARIABLE).ok().filter(|t| !t.is_empty());
    let token_given = given_token.is_some();
    let admin_token = given_token.unwrap_or_else(new_secret);
    let settings = AuthSettings {
        admin_token: admin_token.clone(),
        users,
        allowed_origins: args.allow_origins.clone(),
        session_ttl: args.session_ttl,
        max_connections_per_user: args.max_connections_per_user,
    };
    let auth = Arc::new(Auth::new(settings, Some(Arc::clone(&store))).await?);
    // Notifications: queued from the milestones of the runs driven here, sent by the delivery
    // loop (which a cluster's every instance runs). A waiting gate's carry approval links for
    // everyone who may decide it.
    let wake = Arc::new(tokio::sync::Notify::new());
    let deliveries = tokio_util::sync::CancellationToken::new();
    let directory: Arc<dyn crate::links::Directory> = auth.clone();
    tokio::spawn(crate::notify::outbox::notify_loop(
        milestones_in,
        Arc::clone(&store),
        Arc::clone(&config),
        public_url,
        Arc::clone(&wake),
        Some(Arc::clone(&directory)),
    ));
    let delivery =
        tokio::spawn(crate::notify::outbox::delivery_loop(Arc::clone(&store), first_retry, wake, deliveries.clone()));
    if let Some(joined) = &mut cluster {
        let (logouts, ended_here) = tokio::sync::mpsc::unbounded_channel();
        auth.share_logouts(logouts);
        let shared = Arc::clone(&auth);
        joined.share_logouts(ended_here, move |id_hash| shared.forget_session(id_hash)).await?;
    }
    let (shutdown_tx, shutdown) = watch::channel(false);
    let streams = TaskTracker::new();
    let state = AppState {
        service: crate::service::Service::new(runs).with_directory(directory),
        auth,
        leptos_options,
        shutdown,
        stream: StreamConfig { client_events_per_second: args.client_event_rate, ..StreamConfig::default() },
        streams: streams.clone(),
        request_timeout: crate::server::REQUEST_TIMEOUT,
    };
    tracing::info!(site = %site_root.display(), data = %args.data.display(), %database, "serving");
    println!("dagstream: dashboard on http://{local}");
    // The sign-in link goes to the terminal only, never to the log.
    if token_given {
        println!("dagstream: sign in at http://{local}/login with the token in DAGSTREAM_TOKEN");
    } else {
        println!("dagstream: sign in as admin: http://{local}/login?token={admin_token}");
    }
    crate::server::listen::serve(listener, app(state), async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        // Open streams watch this and close, so the graceful shutdown can finish.
        let _ = shutdown_tx.send(true);
    })
    .await;
    // Let every stream finish sending its close frame (bounded, should a peer stall).
    streams.close();
    if tokio::time::timeout(STREAM_CLOSE_GRACE, streams.wait()).await.is_err() {
        tracing::warn!("some streams did not close in time");
    }
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
    deliveries.cancel();
    let _ = tokio::time::timeout(STREAM_CLOSE_GRACE, delivery).await;
    Ok(())
}

async fn worker(args: WorkerArgs) -> Result<(), String> {
    if !crate::engine::spec::is_valid_id(&args.pool) {
        return Err(format!("pool {:?}: use letters, digits, - and _", args.pool));
    }
    std::fs::create_dir_all(&args.work)
        .map_err(|e| format!("cannot create the work directory {}: {e}", args.work.display()))?;
    let work_root = std::path::absolute(&args.work).unwrap_or(args.work.clone());
    let config = crate::jobs::WorkerConfig {
        nats_url: args.nats,
        pool: args.pool,
        id: args.id.unwrap_or_else(|| format!("worker-{}", &new_secret()[..6])),
        concurrency: args.concurrency,
        work_root,
        ack_wait: args.ack_wait,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: running jobs finish first");
        stop.cancel();
    });
    crate::jobs::work(config, shutdown).await
}

/// How long shutdown waits for open streams to close.
const STREAM_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the built site is: the flag or `LEPTOS_SITE_ROOT`, else `target/site` under the
/// working directory, else `site` next to the binary's directory (`target/release/../site`).
/// A site is a directory with `pkg/dagstream.js` in it.
fn find_site_root(given: Option<&Path>) -> Result<PathBuf, String> {
    let is_site = |dir: &Path| dir.join("pkg/dagstream.js").is_file();
    if let Some(given) = given {
        return if is_site(given) {
            Ok(given.to_path_buf())
        } else {
            Err(format!(
                "--site-root {} has no built site in it (pkg/dagstream.js is missing); build it with `make build`",
                given.display()
            ))
        };
    }
    let mut candidates = vec![PathBuf::from("target/site")];
    if let Some(bin_dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        candidates.push(bin_dir.join("../site"));
        candidates.push(bin_dir.join("site"));
    }
    candidates.iter().find(|dir| is_site(dir)).cloned().ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
        format!(
            "the built site (pkg/dagstream.js) is not in any of: {}. Build it with `make build`, \
             or point --site-root / LEPTOS_SITE_ROOT at it",
            tried.join(", ")
        )
    })
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
