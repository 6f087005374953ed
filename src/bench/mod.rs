//! `dagstream bench engine`: how fast the engine gets through large DAGs of zero-duration
//! simulated nodes, with no subscriber attached or with one dashboard that reads every event
//! through the room's fan-out; `bench store`: events persisted per second;
//! `bench fanout` ([`fanout`]): delivery to many subscribers. On demand only, never timed tests.

pub mod fanout;
mod floor;
mod subscriber;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, DuplexStream};

use crate::engine::{DagSpec, EngineConfig, NodeSpec, NodeWork};
use crate::hub::fanout::Outbox;
use crate::hub::{Room, RoomLimits};
use crate::runs::Runs;
use crate::store::{DEFAULT_POOL_SIZE, Database};

/// The shapes the engine benchmark runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Every node independent: one wide layer.
    Wide,
    /// Each node needs the one before.
    Chain,
    /// Random acyclic edges (each from an earlier node to a later one).
    Random,
}

/// Settings of one benchmark run.
#[derive(Clone, Debug)]
pub struct EngineBench {
    pub nodes: usize,
    /// Edges of the random shape.
    pub edges: usize,
    pub max_parallel: usize,
    pub shapes: Vec<Shape>,
    /// Seed of the random shape, so runs are comparable.
    pub seed: u64,
    /// Persist every event in a new SQLite file in the bench's temporary directory.
    pub store: bool,
    /// Persist into this database instead (implies `store`). The runs are added to what it
    /// holds; use a scratch database.
    pub database: Option<Database>,
    /// Attach one dashboard ([`Dashboard`]) that reads every event.
    pub subscriber: bool,
    /// Runs of each shape; the median is reported.
    pub repeat: usize,
}

/// What one shape took.
#[derive(Clone, Debug)]
pub struct ShapeResult {
    pub shape: Shape,
    pub nodes: usize,
    pub edges: usize,
    pub events: u64,
    pub elapsed: Duration,
}

/// A DAG of `nodes` zero-duration, zero-cost simulate nodes in `shape`.
pub fn dag(shape: Shape, nodes: usize, edges: usize, seed: u64) -> DagSpec {
    let id = |i: usize| format!("n{i}");
    let mut needs: Vec<Vec<String>> = vec![Vec::new(); nodes];
    match shape {
        Shape::Wide => {}
        Shape::Chain => {
            for (i, node_needs) in needs.iter_mut().enumerate().skip(1) {
                node_needs.push(id(i - 1));
            }
        }
        Shape::Random => {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut chosen = std::collections::HashSet::with_capacity(edges);
            let possible = nodes.saturating_mul(nodes.saturating_sub(1)) / 2;
            while chosen.len() < edges.min(possible) {
                let a = rng.random_range(0..nodes);
                let b = rng.random_range(0..nodes);
                let (from, to) = (a.min(b), a.max(b));
                if from != to && chosen.insert((from, to)) {
                    needs[to].push(id(from));
                }
            }
        }
    }
    let nodes = needs
        .into_iter()
        .enumerate()
        .map(|(i, needs)| NodeSpec {
            id: id(i),
            label: None,
            needs,
            timeout: None,
            retries: 0,
            work: NodeWork::Simulate {
                duration: Duration::ZERO,
                cost: 0.0,
                tokens_in: None,
                tokens_out: None,
                fail_rate: 0.0,
                output: None,
            },
        })
        .collect();
    DagSpec {
        name: format!("bench-{shape:?}").to_lowercase(),
        budget: None,
        budget_step: 0.0,
        max_parallel: 0,
        nodes,
        notify: Vec::new(),
        started_by: None,
        history: Default::default(),
    }
}

/// Runs every shape once (after a small warm-up run) and answers the timings.
pub async fn engine(settings: &EngineBench) -> Result<Vec<ShapeResult>, String> {
    let work_root = std::env::temp_dir().join(format!("dagstream-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work_root);
    std::fs::create_dir_all(&work_root).map_err(|e| e.to_string())?;
    let engine = EngineConfig::new(work_root.join("runs"));
    let database =
        settings.database.clone().or_else(|| settings.store.then(|| Database::Sqlite(work_root.join("bench.db"))));
    let runs = match &database {
        Some(database) => {
            let store = crate::store::open(database, DEFAULT_POOL_SIZE).await.map_err(|e| e.to_string())?;
            Arc::new(Runs::recording(RoomLimits::default(), engine, store))
        }
        None => Arc::new(Runs::new(RoomLimits::default(), engine)),
    };
    let subscriber = settings.subscriber;
    let mut results = Vec::new();
    let warm_up = dag(Shape::Wide, 100, 0, settings.seed);
    run_to_end(&runs, DagSpec { max_parallel: settings.max_parallel, ..warm_up }, subscriber).await?;
    for &shape in &settings.shapes {
        let mut spec = dag(shape, settings.nodes, settings.edges, settings.seed);
        spec.max_parallel = settings.max_parallel;
        let edges = spec.nodes.iter().map(|n| n.needs.len()).sum();
        // The median of the repeats: one run on a busy machine says little.
        let mut timings = Vec::new();
        let mut events = 0;
        for _ in 0..settings.repeat.max(1) {
            let (elapsed, counted) = run_to_end(&runs, spec.clone(), subscriber).await?;
            timings.push(elapsed);
            events = counted;
        }
        timings.sort();
        let elapsed = timings[timings.len() / 2];
        results.push(ShapeResult { shape, nodes: settings.nodes, edges, events, elapsed });
    }
    let _ = std::fs::remove_dir_all(work_root);
    Ok(results)
}

/// Starts the run and waits for `execution_complete` (and, with a subscriber, for its dashboard
/// to have read it); answers the time and the event count.
async fn run_to_end(runs: &Runs, spec: DagSpec, subscriber: bool) -> Result<(Duration, u64), String> {
    let started = Instant::now();
    let dag_id = runs.start(spec).await.map_err(|e| e.to_string())?;
    let run = runs.get(&dag_id).ok_or("the run vanished")?;
    let dashboard = subscriber.then(|| Dashboard::attach(&run.room));
    run.room.completed().await;
    if let Some(dashboard) = dashboard {
        dashboard.read_to_completion().await?;
    }
    Ok((started.elapsed(), run.room.seq()))
}

/// A dashboard with no network under it: an outbox on an in-memory pipe, attached to the room's
/// fan-out as a socket is. The room holds the run back while its fan-out is behind, and keeps
/// what the dashboard has not read yet, as for any dashboard (a bare receiver of the room's
/// broadcast is waited for by nobody, and falls off the ring in a fast run). Every event is
/// framed and written once more than with no dashboard.
struct Dashboard {
    outbox: Arc<Outbox>,
    /// The dashboard's end of the pipe.
    screen: DuplexStream,
    /// False when the run had ended before it was attached: nothing more will come.
    expects_completion: bool,
}

impl Dashboard {
    /// Bytes the pipe holds, about what a socket's send buffer would.
    const PIPE_BYTES: usize = 64 * 1024;

    fn attach(room: &Room) -> Dashboard {
        let (socket, screen) = tokio::io::duplex(Self::PIPE_BYTES);
        let outbox = Outbox::new(socket);
        // Position first: if the run has not ended after that, its `execution_complete` comes
        // after the position, so the shard writes it.
        let position = room.seq();
        let expects_completion = !room.is_complete();
        room.attach(&outbox, position);
        Dashboard { outbox, screen, expects_completion }
    }

    /// Reads the pipe until the run's `execution_complete` has come through it.
    async fn read_to_completion(self) -> Result<(), String> {
        const COMPLETE: &[u8] = br#""type":"execution_complete""#;
        let Dashboard { outbox, mut screen, expects_completion } = self;
        if !expects_completion {
            return Ok(());
        }
        let reading = async {
            let mut buffer = vec![0u8; Self::PIPE_BYTES];
            // The end of the previous read, so a marker cut in two by the pipe is still found.
            let mut seen = Vec::with_capacity(Self::PIPE_BYTES + COMPLETE.len());
            loop {
                let read = screen.read(&mut buffer).await.map_err(|e| e.to_string())?;
                if read == 0 {
                    return Err("the dashboard's stream ended before execution_complete".to_owned());
                }
                seen.extend_from_slice(&buffer[..read]);
                if seen.windows(COMPLETE.len()).any(|window| window == COMPLETE) {
                    return Ok(());
                }
                seen.drain(..seen.len().saturating_sub(COMPLETE.len() - 1));
            }
        };
        // The outbox writes what the pipe could not take at once as the dashboard reads.
        tokio::select! {
            read = reading => {
                outbox.close();
                read
            }
            ended = outbox.follow() => Err(format!("the dashboard's stream ended before execution_complete: {ended:?}")),
        }
    }
}

/// Settings of the store benchmark.
#[derive(Clone, Debug)]
pub struct StoreBench {
    /// Events to persist.
    pub events: usize,
    /// Where (`None`: a new SQLite file in a temporary directory). The run is added to what the
    /// database holds.
    pub database: Option<Database>,
}

/// Events persisted per second through the group-commit writer into a database: publishes
/// `events` log lines into one run and waits until the last is stored and committed.
pub async fn store(settings: &StoreBench) -> Result<String, String> {
    let work_root = std::env::temp_dir().join(format!("dagstream-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work_root);
    std::fs::create_dir_all(&work_root).map_err(|e| e.to_string())?;
    let database = settings.database.clone().unwrap_or_else(|| Database::Sqlite(work_root.join("bench.db")));
    let store = crate::store::open(&database, DEFAULT_POOL_SIZE).await.map_err(|e| e.to_string())?;
    let runs = Runs::recording(RoomLimits::default(), EngineConfig::new(work_root.join("runs")), store);
    // A run that waits at a gate forever: its room takes the benchmark's events.
    let spec = DagSpec {
        name: "bench-store".into(),
        budget: None,
        budget_step: 0.0,
        max_parallel: 1,
        notify: Vec::new(),
        started_by: None,
        history: Default::default(),
        nodes: vec![NodeSpec {
            id: "hold".into(),
            label: None,
            needs: Vec::new(),
            timeout: None,
            retries: 0,
            work: NodeWork::Gate {
                title: "hold".into(),
                prompt: String::new(),
                options: vec![crate::protocol::Decision::Approve],
                on_timeout: None,
                rules: crate::engine::spec::GateRules::default(),
                inputs: Vec::new(),
            },
        }],
    };
    let dag_id = runs.start(spec).await.map_err(|e| e.to_string())?;
    let room = runs.get(&dag_id).ok_or("the run vanished")?.room;
    while room.seq() < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    for i in 0..settings.events {
        room.publish(crate::protocol::ServerEventBody::NodeLog {
            node_id: "hold".into(),
            stream: crate::protocol::LogStream::Stdout,
            line: format!("benchmark line {i} with a little text in it, as a command would print"),
        });
    }
    room.publish(crate::protocol::ServerEventBody::ExecutionComplete { results: Default::default() });
    room.completed().await;
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(work_root);
    let per_second = settings.events as f64 / elapsed.as_secs_f64();
    Ok(format!(
        "{database}: persisted {} events in {:.1} ms: {:.0} events/s ({:.2} µs each, group commit)\n",
        settings.events,
        elapsed.as_secs_f64() * 1e3,
        per_second,
        elapsed.as_secs_f64() * 1e6 / settings.events.max(1) as f64
    ))
}

/// The report printed by the command.
pub fn report(results: &[ShapeResult]) -> String {
    let mut out = String::from("shape   nodes   edges   events   total       per node\n");
    for r in results {
        let per_node = r.elapsed.as_secs_f64() * 1e6 / r.nodes.max(1) as f64;
        out.push_str(&format!(
            "{:<7} {:>6} {:>7} {:>8}   {:>8.1} ms  {:>6.2} µs\n",
            format!("{:?}", r.shape).to_lowercase(),
            r.nodes,
            r.edges,
            r.events,
            r.elapsed.as_secs_f64() * 1e3,
            per_node
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole bench, stored and watched, on a run longer than the room's broadcast ring.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_engine_bench_runs_with_a_store_and_a_dashboard() {
        let nodes = 3000;
        let settings = EngineBench {
            nodes,
            edges: 0,
            max_parallel: 0,
            shapes: vec![Shape::Wide],
            seed: 1,
            store: true,
            database: None,
            subscriber: true,
            repeat: 1,
        };
        let results = engine(&settings).await.expect("the bench runs to its end");
        // Per node ready and done, plus the run's start, state and end.
        assert_eq!(results[0].events, 2 * nodes as u64 + 4);
    }

    /// A dashboard that reads nothing until its run has ended still reads the end: the room's
    /// fan-out kept the frames for it (a bare receiver of the room's broadcast falls off the ring
    /// and is told it lagged, which is what the bench's subscriber did in a fast run).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dashboard_that_reads_only_after_its_run_ended_reads_the_end() {
        let nodes = 3000;
        assert!(2 * nodes > RoomLimits::default().subscriber_queue, "the run overflows the ring");
        let root = std::env::temp_dir().join(format!("dagstream-bench-test-{}", std::process::id()));
        let runs = Runs::new(RoomLimits::default(), EngineConfig::new(&root));
        let dag_id = runs.start(dag(Shape::Wide, nodes, 0, 1)).await.expect("the run starts");
        let run = runs.get(&dag_id).expect("the run is known");
        let dashboard = Dashboard::attach(&run.room);
        assert!(dashboard.expects_completion, "attached while the run goes on");
        run.room.completed().await;
        tokio::time::timeout(Duration::from_secs(30), dashboard.read_to_completion())
            .await
            .expect("the dashboard reads on")
            .expect("the dashboard reads the run's end");
        let _ = std::fs::remove_dir_all(root);
    }
}
