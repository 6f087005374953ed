//! Operator metrics: `GET /metrics` in Prometheus's text format (admin role, e.g. a scraper
//! with the admin token as bearer). Counters and histograms are recorded where things happen,
//! through the `metrics` crate's global recorder (`metrics-exporter-prometheus` renders them);
//! gauges that describe the server as it is (runs by state, subscribers, fan-out queues, spend)
//! are read from the runs when a scrape comes.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `dagstream_runs{state}` | gauge | runs by state |
//! | `dagstream_nodes_total{event}` | counter | node attempts `started`, nodes `finished` and `failed` |
//! | `dagstream_events_appended_total` | counter | events stored (their rate: events per second) |
//! | `dagstream_commit_seconds` | histogram | one group commit of events to the store |
//! | `dagstream_subscribers` | gauge | dashboards subscribed to runs on this instance |
//! | `dagstream_fanout_queue_depth` | gauge | the longest queue of events a subscriber has still to send |
//! | `dagstream_stream_closes_total{code}` | counter | streams closed for being too slow (`4008`) |
//! | `dagstream_gate_wait_seconds` | histogram | from a gate starting to wait to its decision |
//! | `dagstream_spend` | gauge | spend of every run this instance knows |
//! | `dagstream_webhook_deliveries_total{outcome}` | counter | delivery attempts: `delivered`, `retry`, `failed` |
//! | `dagstream_worker_jobs_in_flight` | gauge | command attempts out on remote workers |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::service::Service;

pub const NODES: &str = "dagstream_nodes_total";
pub const EVENTS_APPENDED: &str = "dagstream_events_appended_total";
pub const COMMIT_SECONDS: &str = "dagstream_commit_seconds";
pub const STREAM_CLOSES: &str = "dagstream_stream_closes_total";
pub const GATE_WAIT_SECONDS: &str = "dagstream_gate_wait_seconds";
pub const WEBHOOK_DELIVERIES: &str = "dagstream_webhook_deliveries_total";
pub const WORKER_JOBS_IN_FLIGHT: &str = "dagstream_worker_jobs_in_flight";
const RUNS: &str = "dagstream_runs";
const SUBSCRIBERS: &str = "dagstream_subscribers";
const FANOUT_QUEUE_DEPTH: &str = "dagstream_fanout_queue_depth";
const SPEND: &str = "dagstream_spend";

/// The process's recorder, installed on first use.
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(COMMIT_SECONDS.into()),
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(GATE_WAIT_SECONDS.into()),
                    &[1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 24.0 * 3600.0],
                )
            });
        match builder {
            Ok(builder) => {
                let recorder = builder.build_recorder();
                let handle = recorder.handle();
                // Another recorder first (a test harness): its handle renders what it has.
                if metrics::set_global_recorder(recorder).is_err() {
                    tracing::warn!("a metrics recorder was installed already: /metrics shows only the gauges");
                }
                handle
            }
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// Starts recording (call once at start, so counters count from then).
pub fn install() {
    handle();
}

/// The scrape: the gauges of the runs as they are now, then every metric in Prometheus's text
/// format.
pub fn render(service: &Service) -> String {
    let handle = handle();
    let runs = service.list();
    for phase in crate::protocol::RunPhase::ALL {
        let count = runs.iter().filter(|run| run.state == *phase).count();
        metrics::gauge!(RUNS, "state" => phase.as_str()).set(count as f64);
    }
    metrics::gauge!(SPEND).set(runs.iter().map(|run| run.cost.spent).sum::<f64>());
    let (subscribers, deepest) = service.runs().fanout();
    metrics::gauge!(SUBSCRIBERS).set(subscribers as f64);
    metrics::gauge!(FANOUT_QUEUE_DEPTH).set(deepest as f64);
    handle.run_upkeep();
    handle.render()
}
