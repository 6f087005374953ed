//! `dagstream bench engine`: how fast the engine gets through large DAGs of zero-duration
//! simulated nodes, with no subscriber attached; `bench store`: events persisted per second;
//! `bench fanout` ([`fanout`]): delivery to many subscribers. On demand only, never timed tests.

pub mod fanout;
mod floor;
mod subscriber;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::{DagSpec, EngineConfig, NodeSpec, NodeWork};
use crate::hub::RoomLimits;
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
    /// Attach one subscriber that takes every event.
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

/// Starts the run and waits for `execution_complete` (and, with a subscriber, for it to have
/// received every event); answers the time and the event count.
async fn run_to_end(runs: &Runs, spec: DagSpec, subscriber: bool) -> Result<(Duration, u64), String> {
    let started = Instant::now();
    let dag_id = runs.start(spec).await.map_err(|e| e.to_string())?;
    let run = runs.get(&dag_id).ok_or("the run vanished")?;
    let reader = subscriber.then(|| {
        let mut live = run.room.subscribe(None).live;
        let room = Arc::clone(&run.room);
        tokio::spawn(async move {
            let mut received = 0u64;
            loop {
                match live.recv().await {
                    Ok(frame) => {
                        received += 1;
                        if frame.text.as_str().contains("\"type\":\"execution_complete\"") {
                            return Ok(received);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        return Err(format!("the subscriber lagged by {n} events (seq {})", room.seq()));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(received),
                }
            }
        })
    });
    run.room.completed().await;
    if let Some(reader) = reader {
        reader.await.map_err(|e| e.to_string())??;
    }
    Ok((started.elapsed(), run.room.seq()))
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
