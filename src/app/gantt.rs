//! The Gantt view of a run: one row per node, its segments on a time axis from the run's start:
//! queued (its needs done, not started yet), each earlier attempt or gate wait, and the current
//! one (running, waiting at a gate, or how it ended). Live: running segments grow with the clock.
//!
//! Bars are drawn in milliseconds since the run's start inside one SVG whose `viewBox` is the
//! run's span, so the clock's tick changes one attribute rather than every bar; a bar keeps at
//! least a pixel of width with a stroke that does not scale. A 1 000-node run is 1 000 rows in a
//! scrolling box, of which only those in sight (and [`OVERSCAN`] on either side) are built: all
//! of them took one 120–130 ms task when the view opened (`make bench-dashboard`).

use leptos::prelude::*;

use super::clock::{parse_ms, use_now};
use super::live_run::{LiveRun, NodeSignal};
use crate::protocol::{NodeKind, NodeStatus, NodeView};

/// A node that waited less than this between being ready and starting is not drawn queued:
/// that is the engine's own overhead, not a queue.
const QUEUED_MIN_MS: f64 = 100.0;
/// Height of one row, in pixels.
const ROW: usize = 18;
/// Height of a bar within its row.
const BAR: usize = 12;
/// Rows built above and below the ones in sight, so a scroll shows built rows at once.
const OVERSCAN: usize = 20;
/// Height of the scrolling box until it is measured (its CSS `max-height`).
const BODY_HEIGHT: f64 = 420.0;

/// One segment of a node's row.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// `queued`, or a node status (`running`, `waiting`, `completed`, `failed`, `cancelled`);
    /// an earlier attempt that did not complete is `retried`.
    pub kind: &'static str,
    /// Milliseconds since the run's start.
    pub from: f64,
    /// `None`: still going (it ends now).
    pub to: Option<f64>,
}

/// The segments of `node`, times in milliseconds since `start`. `ready_at` is when its last need
/// completed (for a node without needs, the run's start); `None`: it is not ready yet.
pub fn segments(node: &NodeView, start: f64, ready_at: Option<f64>) -> Vec<Segment> {
    let at = |rfc3339: &str| parse_ms(rfc3339).map(|ms| ms - start);
    let mut segments = Vec::new();
    let first_start = node
        .past_attempts
        .first()
        .map(|attempt| attempt.started_at.as_str())
        .or(node.metrics.started_at.as_deref())
        .and_then(at);
    // A gate takes no slot, so it never queues: it waits from the moment it is ready. A gap
    // before its start means it was added later (a budget gate, with no needs, is added when
    // spend reaches the budget).
    let queues = node.kind != NodeKind::Gate;
    if let Some(ready) = ready_at.filter(|_| queues) {
        match (first_start, node.status) {
            (Some(first), _) if first - ready >= QUEUED_MIN_MS => {
                segments.push(Segment { kind: "queued", from: ready, to: Some(first) })
            }
            (None, NodeStatus::Pending) => segments.push(Segment { kind: "queued", from: ready, to: None }),
            (Some(_), _) | (None, _) => {}
        }
    }
    for attempt in &node.past_attempts {
        let (Some(from), Some(to)) = (at(&attempt.started_at), at(&attempt.ended_at)) else { continue };
        let kind = match attempt.status {
            NodeStatus::Running => "retried",
            status => status.as_str(),
        };
        segments.push(Segment { kind, from, to: Some(to) });
    }
    if let Some(from) = node.metrics.started_at.as_deref().and_then(at) {
        let to = node.metrics.finished_at.as_deref().and_then(at);
        let to = match node.status {
            NodeStatus::Running | NodeStatus::Waiting => to,
            // Ended without a finish time (cancelled while waiting): a sliver at its start.
            _ => Some(to.unwrap_or(from)),
        };
        segments.push(Segment { kind: node.status.as_str(), from, to });
    }
    segments
}

/// The Gantt view, split out of the run view's wasm (`cargo leptos build --split`): its code is
/// fetched when the view is first shown.
#[lazy]
pub fn gantt_view(live_run: LiveRun, selected: RwSignal<Option<String>>) -> AnyView {
    view! { <Gantt live_run selected/> }.into_any()
}

/// The Gantt view of `live_run`; clicking a row selects its node.
#[component]
pub fn Gantt(live_run: LiveRun, selected: RwSignal<Option<String>>) -> impl IntoView {
    let now = use_now();
    let start = parse_ms(&live_run.started_at()).unwrap_or(0.0);
    // The time axis: from the run's start to now while it goes, to its last activity after.
    let span = move || {
        let end = if live_run.finished.get() {
            live_run.last_activity().as_deref().and_then(parse_ms).unwrap_or_else(|| now.get())
        } else {
            now.get()
        };
        (end - start).max(1000.0)
    };
    let rows = move || live_run.nodes.with(Vec::len);
    // The rows in sight, from the scrolling box's position: `first..end`.
    let body = NodeRef::<leptos::html::Div>::new();
    let scroll_top = RwSignal::new(0.0_f64);
    let body_height = RwSignal::new(BODY_HEIGHT);
    let measure = move || {
        if let Some(element) = body.get_untracked() {
            scroll_top.set(f64::from(element.scroll_top()));
            body_height.set(f64::from(element.client_height()).max(ROW as f64));
        }
    };
    let in_sight = Memo::new(move |_| visible_rows(scroll_top.get(), body_height.get(), rows()));
    let ticks = move || {
        let span = span();
        let step = tick_step(span);
        (0..)
            .map(|i| i as f64 * step)
            .take_while(|t| *t <= span)
            .map(|t| (format!("{:.3}%", t / span * 100.0), format_tick(t)))
            .collect::<Vec<_>>()
    };
    view! {
        <section class="gantt panel" data-testid="gantt">
            <div class="gantt-axis">
                <span></span>
                <div class="gantt-ticks">
                    {move || {
                        ticks()
                            .into_iter()
                            .map(|(left, text)| view! { <span class="tick mono small" style:left=left>{text}</span> })
                            .collect_view()
                    }}
                </div>
            </div>
            <div class="gantt-body" node_ref=body on:scroll=move |_| measure()>
                <ol class="gantt-labels" style:height=move || format!("{}px", rows() * ROW)>
                    <For
                        each={move || rows_in_sight(live_run, in_sight.get())}
                        key={|(row, node): &(usize, NodeSignal)| (*row, node.id.clone())}
                        let((row, node))
                    >
                        <li
                            style:top=format!("{}px", row * ROW)
                            class:selected={
                                let id = node.id.clone();
                                move || selected.with(|s| s.as_deref() == Some(id.as_str()))
                            }
                            on:click={
                                let id = node.id.clone();
                                move |_| selected.set(Some(id.clone()))
                            }
                        >
                            {move || node.view.with(|v| v.label.clone())}
                        </li>
                    </For>
                </ol>
                <svg
                    class="gantt-bars"
                    preserveAspectRatio="none"
                    height=move || (rows() * ROW).to_string()
                    viewBox=move || format!("0 0 {:.0} {}", span(), rows() * ROW)
                >
                    <For
                        each={move || rows_in_sight(live_run, in_sight.get())}
                        key={|(row, node): &(usize, NodeSignal)| (*row, node.id.clone())}
                        children={move |(row, node): (usize, NodeSignal)| view! { <GanttRow live_run node row start now/> }}
                    />
                </svg>
            </div>
            <p class="gantt-legend muted small">
                <span class="key queued"></span>"queued " <span class="key running"></span>"running "
                <span class="key waiting"></span>"waiting at a gate " <span class="key retried"></span>"attempt retried "
                <span class="key completed"></span>"completed " <span class="key failed"></span>"failed"
            </p>
        </section>
    }
}

#[component]
fn GanttRow(live_run: LiveRun, node: NodeSignal, row: usize, start: f64, now: ReadSignal<f64>) -> impl IntoView {
    let view = node.view;
    // When its last need completed; the run's start for a node without needs.
    let ready_at = move || {
        let needs = view.with(|v| v.needs.clone());
        let mut ready = 0.0_f64;
        for need in needs {
            let finished = live_run.node(&need).and_then(|upstream| {
                upstream.with(|u| (u.status == NodeStatus::Completed).then(|| u.metrics.finished_at.clone()).flatten())
            });
            match finished.as_deref().and_then(parse_ms) {
                Some(at) => ready = ready.max(at - start),
                None => return None,
            }
        }
        Some(ready)
    };
    let segments = move || view.with(|v| segments(v, start, ready_at()));
    let y = (row * ROW + (ROW - BAR) / 2).to_string();
    view! {
        <g data-testid=format!("gantt-{}", node.id) data-row=row>
            {move || {
                let label = view.with(|v| v.label.clone());
                segments()
                    .into_iter()
                    .map(|segment| {
                        let Segment { kind, from, to } = segment;
                        // A segment that is still going ends with the clock.
                        let width = move || match to {
                            Some(to) => (to - from).max(0.0),
                            None => (now.get() - start - from).max(0.0),
                        };
                        let label = label.clone();
                        let title = move || format!("{label}: {kind} {:.2} s", width() / 1000.0);
                        view! {
                            <rect
                                class=format!("seg {kind}")
                                data-kind=kind
                                x=format!("{from:.0}")
                                y=y.clone()
                                height=BAR.to_string()
                                width=move || format!("{:.0}", width())
                            >
                                <title>{title}</title>
                            </rect>
                        }
                    })
                    .collect_view()
            }}
        </g>
    }
}

/// The rows to build, `first..end`, for a scrolling box `height` pixels high scrolled to `top`,
/// over `rows` rows: those in sight and [`OVERSCAN`] on either side.
fn visible_rows(top: f64, height: f64, rows: usize) -> (usize, usize) {
    let first = (top.max(0.0) / ROW as f64).floor() as usize;
    let in_sight = (height / ROW as f64).ceil() as usize + 1;
    (first.saturating_sub(OVERSCAN).min(rows), (first + in_sight + OVERSCAN).min(rows))
}

/// The nodes of rows `first..end`, with their row numbers.
fn rows_in_sight(live_run: LiveRun, (first, end): (usize, usize)) -> Vec<(usize, NodeSignal)> {
    live_run.nodes.with(|nodes| {
        nodes
            .get(first..end)
            .unwrap_or_default()
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, node)| (first + i, node))
            .collect()
    })
}

/// A tick every 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min or 1 h: about 6 to 12 on the axis.
fn tick_step(span_ms: f64) -> f64 {
    const STEPS: [f64; 13] = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0];
    STEPS
        .iter()
        .map(|s| s * 1000.0)
        .find(|step| span_ms / step <= 12.0)
        .unwrap_or(3_600_000.0 * (span_ms / 3_600_000.0 / 12.0).ceil())
}

/// `0s`, `45s`, `2m`, `1m 30s`, `1h 05m`.
fn format_tick(ms: f64) -> String {
    let seconds = (ms / 1000.0).round() as u64;
    match (seconds / 3600, (seconds % 3600) / 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AttemptSpan, GraphNode, NodeMetrics, RunState};

    fn node(status: NodeStatus, started: Option<&str>, finished: Option<&str>, past: Vec<AttemptSpan>) -> NodeView {
        let graph = GraphNode { id: "n".into(), label: "N".into(), kind: NodeKind::Command };
        let mut view = RunState::new("r", "t", "x", 0.0, [(graph, vec![])]).nodes["n"].clone();
        view.status = status;
        view.metrics = NodeMetrics {
            started_at: started.map(Into::into),
            finished_at: finished.map(Into::into),
            ..Default::default()
        };
        view.past_attempts = past;
        view
    }

    const T0: &str = "2026-11-26T10:00:00Z";

    fn ms(at: &str) -> f64 {
        parse_ms(at).expect("a time")
    }

    /// A node's segments for each way it can stand.
    #[test]
    fn segments_of_a_node() {
        let start = ms(T0);
        let retried = AttemptSpan {
            started_at: "2026-11-26T10:00:02Z".into(),
            ended_at: "2026-11-26T10:00:03Z".into(),
            status: NodeStatus::Running,
        };
        let seg = |kind, from: f64, to: Option<f64>| Segment { kind, from, to };
        let cases: Vec<(&str, NodeView, Option<f64>, Vec<Segment>)> = vec![
            ("not ready", node(NodeStatus::Pending, None, None, vec![]), None, vec![]),
            (
                "ready, not started",
                node(NodeStatus::Pending, None, None, vec![]),
                Some(500.0),
                vec![seg("queued", 500.0, None)],
            ),
            (
                "started a moment after it was ready: not queued",
                node(NodeStatus::Running, Some("2026-11-26T10:00:01Z"), None, vec![]),
                Some(950.0),
                vec![seg("running", 1000.0, None)],
            ),
            (
                "queued, then running",
                node(NodeStatus::Running, Some("2026-11-26T10:00:01Z"), None, vec![]),
                Some(0.0),
                vec![seg("queued", 0.0, Some(1000.0)), seg("running", 1000.0, None)],
            ),
            (
                "a retried attempt, then completed",
                node(
                    NodeStatus::Completed,
                    Some("2026-11-26T10:00:03Z"),
                    Some("2026-11-26T10:00:04.500Z"),
                    vec![retried],
                ),
                Some(2000.0),
                vec![seg("retried", 2000.0, Some(3000.0)), seg("completed", 3000.0, Some(4500.0))],
            ),
            (
                "a gate waiting",
                node(NodeStatus::Waiting, Some("2026-11-26T10:00:01Z"), None, vec![]),
                Some(1000.0),
                vec![seg("waiting", 1000.0, None)],
            ),
            (
                "a gate added after the run's start (a budget gate) is not drawn queued before it",
                NodeView {
                    kind: NodeKind::Gate,
                    ..node(NodeStatus::Waiting, Some("2026-11-26T10:00:05Z"), None, vec![])
                },
                Some(0.0),
                vec![seg("waiting", 5000.0, None)],
            ),
            (
                "a gate ready and not started yet is not queued either",
                NodeView { kind: NodeKind::Gate, ..node(NodeStatus::Pending, None, None, vec![]) },
                Some(500.0),
                vec![],
            ),
        ];
        for (case, view, ready, expected) in cases {
            assert_eq!(segments(&view, start, ready), expected, "{case}");
        }
    }

    /// Only the rows in sight, and a margin on either side, are built.
    #[test]
    fn rows_in_sight_and_a_margin() {
        let cases = [
            ("a small run: every row", 0.0, 420.0, 5, (0, 5)),
            ("the top of a large run", 0.0, 420.0, 1000, (0, 25 + OVERSCAN)),
            ("scrolled to row 100", 1800.0, 420.0, 1000, (80, 125 + OVERSCAN)),
            ("the bottom", 17_640.0, 420.0, 1000, (960, 1000)),
            ("scrolled past the end (rows went away)", 50_000.0, 420.0, 10, (10, 10)),
        ];
        for (case, top, height, rows, expected) in cases {
            assert_eq!(visible_rows(top, height, rows), expected, "{case}");
        }
    }

    #[test]
    fn ticks_stay_few_and_read_well() {
        assert_eq!(tick_step(5_000.0), 1000.0);
        assert_eq!(tick_step(60_000.0), 5000.0);
        assert_eq!(tick_step(3_600_000.0), 300_000.0);
        assert_eq!(format_tick(90_000.0), "1m 30s");
        assert_eq!(format_tick(3_900_000.0), "1h 05m");
    }
}
