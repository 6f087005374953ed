//! The run's DAG as SVG: layered layout, node colour by status (running nodes pulse), edges
//! that light up on `edge_active`, new nodes that fade in while the others keep their places;
//! pan (drag), zoom (wheel, buttons) and fit-to-screen. Each node reads its own signal, so one
//! node's change redraws that node and its incoming edges only.

use leptos::prelude::*;

use super::layout::{self, Layout, NODE_HEIGHT, NODE_WIDTH};
use super::live_run::{LiveRun, NodeSignal};
use crate::protocol::{NodeKind, NodeStatus};

/// Two fingers' points in the graph box.
type TwoPoints = [(f64, f64); 2];

/// What the pointers on the graph are doing, with where it started (points in the box) and the
/// view then.
#[derive(Clone, Copy)]
enum Gesture {
    Idle,
    /// One pointer pans.
    Drag {
        from: (f64, f64),
        view: View,
    },
    /// Two fingers pinch.
    Pinch {
        from: TwoPoints,
        view: View,
    },
}

/// Pan and zoom of the drawing: screen = drawing × scale + (x, y).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    pub x: f64,
    pub y: f64,
    pub scale: f64,
}

const MIN_SCALE: f64 = 0.05;
const MAX_SCALE: f64 = 3.0;
/// Nodes added to the drawing per animation frame: small enough that one frame's work (building
/// the nodes, then style and layout) stays well under 50 ms on a slow laptop.
const DRAW_BATCH: usize = 25;
/// Above this many running nodes the graph stops pulsing and animating edges (see `.busy`).
const BUSY_RUNNING: usize = 24;
/// A graph with more nodes than this never pulses (in a large run the running count crosses
/// [`BUSY_RUNNING`] every time a wide layer starts or ends, and each switch restyled the whole
/// drawing), and draws its nodes compact: a box filled in its status colour with the label, no
/// status dot or status text. At the scale that fits such a graph on screen the dot is a pixel
/// and the text unreadable, and they were two of a node's five elements, restyled, laid out (the
/// text) and repainted at every status change: in the 1 000-node benchmark, leaving them out took
/// the p95 frame while streaming from 17–20 ms to 14–15 ms.
const CALM_ABOVE_NODES: usize = 200;
/// Margin around the drawing when fitting it to the screen, in screen pixels.
const FIT_MARGIN: f64 = 24.0;

impl View {
    /// Zooms by `factor` keeping the drawing point under (`cx`, `cy`) where it is.
    pub fn zoom_at(self, factor: f64, cx: f64, cy: f64) -> View {
        let scale = (self.scale * factor).clamp(MIN_SCALE, MAX_SCALE);
        let ratio = scale / self.scale;
        View { x: cx - (cx - self.x) * ratio, y: cy - (cy - self.y) * ratio, scale }
    }

    /// Follows two fingers from `from` to `to` (points in the box): the drawing point under the
    /// fingers' midpoint stays under it, and the scale changes as the distance between them.
    pub fn pinch(self, from: TwoPoints, to: TwoPoints) -> View {
        let distance = |[(ax, ay), (bx, by)]: TwoPoints| (ax - bx).hypot(ay - by).max(1.0);
        let middle = |[(ax, ay), (bx, by)]: TwoPoints| ((ax + bx) / 2.0, (ay + by) / 2.0);
        let ((fx, fy), (tx, ty)) = (middle(from), middle(to));
        let zoomed = self.zoom_at(distance(to) / distance(from), fx, fy);
        View { x: zoomed.x + tx - fx, y: zoomed.y + ty - fy, ..zoomed }
    }

    /// The view that shows all of a `width` × `height` drawing in a `screen_w` × `screen_h` box.
    pub fn fit(width: f64, height: f64, screen_w: f64, screen_h: f64) -> View {
        let usable_w = (screen_w - 2.0 * FIT_MARGIN).max(1.0);
        let usable_h = (screen_h - 2.0 * FIT_MARGIN).max(1.0);
        let scale = (usable_w / width.max(1.0)).min(usable_h / height.max(1.0)).clamp(MIN_SCALE, 1.25);
        View { x: (screen_w - width * scale) / 2.0, y: (screen_h - height * scale) / 2.0, scale }
    }
}

#[component]
pub fn Graph(live_run: LiveRun, selected: RwSignal<Option<String>>) -> impl IntoView {
    let previous: StoredValue<Option<Layout>> = StoredValue::new(None);
    let laid = Memo::new(move |_| {
        let nodes: Vec<(String, Vec<String>)> = live_run
            .nodes
            .with(|nodes| nodes.iter().map(|n| (n.id.clone(), n.view.with_untracked(|v| v.needs.clone()))).collect());
        let next = previous.with_value(|p| layout::layout(&nodes, p.as_ref()));
        previous.set_value(Some(next.clone()));
        next
    });
    let view = RwSignal::new(View { x: FIT_MARGIN, y: FIT_MARGIN, scale: 1.0 });
    // How many nodes are drawn. The graph is built in the browser after hydration (the run view
    // puts it after the first frame), and its drawing a batch per frame, so a large graph never
    // blocks the page for long (the node list below is the server-rendered view of the nodes).
    let drawn = RwSignal::new(0usize);
    let visible = move || {
        let limit = drawn.get();
        live_run.nodes.with(|nodes| nodes.iter().take(limit).cloned().collect::<Vec<_>>())
    };
    let svg = NodeRef::<leptos::svg::Svg>::new();
    // True while the view is the fitted one (nobody zoomed or dragged since): the box changing
    // size (the node panel opens or closes, the window is resized) then fits it again.
    let fitted = StoredValue::new(true);
    let fit = move || {
        if let Some(svg) = svg.get_untracked() {
            let (width, height) = (f64::from(svg.client_width()), f64::from(svg.client_height()));
            laid.with_untracked(|l| view.set(View::fit(l.width, l.height, width, height)));
            fitted.set_value(true);
        }
    };
    let refit = move || {
        if fitted.get_value() {
            request_animation_frame(fit);
        }
    };
    // The node panel takes part of the graph's row while it is open.
    Effect::new(move |was_open: Option<bool>| {
        let open = selected.with(Option::is_some);
        if was_open.is_some_and(|was| was != open) {
            refit();
        }
        open
    });
    #[cfg(feature = "hydrate")]
    {
        let resized = window_event_listener(leptos::ev::resize, move |_| refit());
        on_cleanup(move || resized.remove());
    }
    let zoom = move |factor: f64, cx: f64, cy: f64| {
        fitted.set_value(false);
        view.update(|v| *v = v.zoom_at(factor, cx, cy));
    };
    // Set once the first full drawing is there: nodes drawn after it come from mutations.
    let first_drawing_done = StoredValue::new(false);
    // In the browser: fit the view to the layout first (the server cannot know the screen), then
    // draw in batches into that view; moving the view of a drawn graph re-lays out every node.
    Effect::new(move |_| {
        let total = live_run.nodes.with(Vec::len);
        let now = drawn.get();
        if now >= total {
            // Nodes removed: draw no more than there are (setting an equal value would loop).
            if now > total {
                drawn.set(total);
            }
            if total > 0 {
                first_drawing_done.set_value(true);
            }
            return;
        }
        let draw_next_batch = move || {
            request_animation_frame(move || {
                if now == 0 {
                    fit();
                }
                drawn.set((now + DRAW_BATCH).min(total))
            })
        };
        if now == 0 {
            // Lay the graph out in a task of its own, after the one that brought the nodes (a
            // large run's snapshot) and before the first frame, which then only fits the view
            // and draws the first batch.
            set_timeout(
                move || {
                    // `None`: the graph was taken off the page meanwhile.
                    if laid.try_with_untracked(|_| ()).is_some() {
                        draw_next_batch();
                    }
                },
                std::time::Duration::ZERO,
            );
        } else {
            draw_next_batch();
        }
    });
    // Pointers down on the graph (pointer id, where in the box), and what they do. `moved`
    // tells a drag or a pinch from a click.
    let pointers: StoredValue<Vec<(i32, (f64, f64))>> = StoredValue::new(Vec::new());
    let gesture = StoredValue::new(Gesture::Idle);
    let moved = StoredValue::new(false);
    let two_fingers = move || {
        pointers.with_value(|p| match p.as_slice() {
            [(_, a), (_, b), ..] => Some([*a, *b]),
            _ => None,
        })
    };
    let lift = move |ev: leptos::ev::PointerEvent| {
        pointers.update_value(|p| p.retain(|(id, _)| *id != ev.pointer_id()));
        gesture.set_value(Gesture::Idle);
    };

    view! {
        <section class="graph" data-testid="graph">
            <div class="graph-tools">
                <button title="Zoom in" data-testid="zoom-in" on:click=move |_| zoom(1.25, 200.0, 150.0)>"+"</button>
                <button title="Zoom out" data-testid="zoom-out" on:click=move |_| zoom(0.8, 200.0, 150.0)>"−"</button>
                <button title="Fit to screen" data-testid="fit" on:click=move |_| fit()>"Fit"</button>
            </div>
            <svg
                node_ref=svg
                class="graph-svg"
                class:busy=move || {
                    live_run.progress.with(|p| p.total > CALM_ABOVE_NODES || p.running > BUSY_RUNNING)
                }
                data-testid="graph-svg"
                data-scale=move || format!("{:.3}", view.get().scale)
                data-pan=move || { let v = view.get(); format!("{:.0},{:.0}", v.x, v.y) }
                on:wheel=move |ev: leptos::ev::WheelEvent| {
                    ev.prevent_default();
                    let factor = if ev.delta_y() < 0.0 { 1.15 } else { 1.0 / 1.15 };
                    zoom(factor, f64::from(ev.offset_x()), f64::from(ev.offset_y()));
                }
                on:pointerdown=move |ev: leptos::ev::PointerEvent| {
                    let at = in_box(svg, &ev);
                    pointers.update_value(|p| {
                        p.retain(|(id, _)| *id != ev.pointer_id());
                        p.push((ev.pointer_id(), at));
                    });
                    let start = view.get_untracked();
                    if let Some(from) = two_fingers() {
                        // A second finger: the pinch takes over from the drag (and is no click).
                        gesture.set_value(Gesture::Pinch { from, view: start });
                        moved.set_value(true);
                        fitted.set_value(false);
                    } else {
                        gesture.set_value(Gesture::Drag { from: at, view: start });
                        moved.set_value(false);
                    }
                }
                on:pointermove=move |ev: leptos::ev::PointerEvent| {
                    let at = in_box(svg, &ev);
                    pointers.update_value(|p| {
                        if let Some(pointer) = p.iter_mut().find(|(id, _)| *id == ev.pointer_id()) {
                            pointer.1 = at;
                        }
                    });
                    match gesture.get_value() {
                        Gesture::Idle => {}
                        Gesture::Drag { from: (x0, y0), view: start } => {
                            let (dx, dy) = (at.0 - x0, at.1 - y0);
                            if dx.abs() + dy.abs() > 3.0 {
                                moved.set_value(true);
                                fitted.set_value(false);
                            }
                            view.set(View { x: start.x + dx, y: start.y + dy, ..start });
                        }
                        Gesture::Pinch { from, view: start } => {
                            if let Some(to) = two_fingers() {
                                view.set(start.pinch(from, to));
                            }
                        }
                    }
                }
                on:pointerup=lift
                on:pointercancel=lift
                on:pointerleave=lift
            >
                <g style:transform=move || {
                    let v = view.get();
                    format!("translate({:.1}px, {:.1}px) scale({:.4})", v.x, v.y, v.scale)
                }>
                    <g class="edges">
                        <For each=visible key=|node| node.id.clone() let:node>
                            <NodeEdges node laid/>
                        </For>
                    </g>
                    <g class="gnodes">
                        <For each=visible key=|node| node.id.clone() let:node>
                            <GraphNode
                                node
                                laid
                                selected
                                moved
                                fresh=first_drawing_done.get_value()
                                compact=live_run.nodes.with_untracked(|nodes| nodes.len() > CALM_ABOVE_NODES)
                            />
                        </For>
                    </g>
                </g>
            </svg>
        </section>
    }
}

/// Where a pointer is, in the graph box's own pixels (the view's coordinates).
fn in_box(svg: NodeRef<leptos::svg::Svg>, ev: &leptos::ev::PointerEvent) -> (f64, f64) {
    let (x, y) = (f64::from(ev.client_x()), f64::from(ev.client_y()));
    #[cfg(feature = "hydrate")]
    if let Some(svg) = svg.get_untracked() {
        let rect = svg.get_bounding_client_rect();
        return (x - rect.left(), y - rect.top());
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = svg;
    (x, y)
}

#[component]
fn NodeEdges(node: NodeSignal, laid: Memo<Layout>) -> impl IntoView {
    let id = node.id.clone();
    let needs = node.view.with_untracked(|v| v.needs.clone());
    needs
        .into_iter()
        .map(|need| {
            let (to, from) = (id.clone(), need.clone());
            // Data went along it; it flows (animates) while the node it feeds runs.
            let class = move || {
                node.view.with(|v| match (v.active_inputs.contains(&need), v.status) {
                    (true, NodeStatus::Running) => "edge active flowing",
                    (true, _) => "edge active",
                    (false, _) => "edge",
                })
            };
            view! {
                <path
                    class=class
                    d=move || laid.with(|l| l.edge_path(&from, &to).unwrap_or_default())
                ></path>
            }
        })
        .collect_view()
}

#[component]
fn GraphNode(
    node: NodeSignal,
    laid: Memo<Layout>,
    selected: RwSignal<Option<String>>,
    moved: StoredValue<bool>,
    /// Added after the first drawing (by a mutation): it fades in.
    fresh: bool,
    /// Part of a large graph: drawn without status dot and text (see [`CALM_ABOVE_NODES`]).
    compact: bool,
) -> impl IntoView {
    let NodeSignal { id, view } = node;
    let position = {
        let id = id.clone();
        move || laid.with(|l| l.positions.get(&id).copied().unwrap_or_default())
    };
    let status = move || view.with(|v| v.status.as_str());
    let is_selected = {
        let id = id.clone();
        move || selected.with(|s| s.as_deref() == Some(id.as_str()))
    };
    let kind = view.with_untracked(|v| v.kind);
    let label = move || {
        let label = view.with(|v| v.label.clone());
        if label.chars().count() > 22 { format!("{}…", label.chars().take(21).collect::<String>()) } else { label }
    };
    let click_id = id.clone();
    view! {
        <g
            class=move || format!("gnode status-{}{}", status(), if is_selected() { " selected" } else { "" })
            class:gate=kind == NodeKind::Gate
            class:fresh=fresh
            class:compact=compact
            data-testid=format!("gnode-{id}")
            data-status=status
            transform=move || { let (x, y) = position(); format!("translate({x:.1} {y:.1})") }
            on:click=move |_| {
                if !moved.get_value() {
                    selected.set(Some(click_id.clone()));
                }
            }
        >
            <rect width=NODE_WIDTH height=NODE_HEIGHT rx="8"></rect>
            {if compact {
                view! { <text x="14" y="27" class="glabel">{label}</text> }.into_any()
            } else {
                view! {
                    <circle class="status-dot" cx="14" cy=NODE_HEIGHT / 2.0 r="5"></circle>
                    <text x="26" y="19" class="glabel">{label}</text>
                    <text x="26" y="34" class="gstatus">{status}</text>
                }
                    .into_any()
            }}
        </g>
    }
}

#[cfg(test)]
mod tests {
    use super::View;

    #[test]
    fn zoom_keeps_the_point_under_the_cursor() {
        let view = View { x: 10.0, y: 20.0, scale: 1.0 };
        let zoomed = view.zoom_at(2.0, 110.0, 120.0);
        // The drawing point under (110, 120) was (100, 100); it still is.
        assert_eq!(((110.0 - zoomed.x) / zoomed.scale, (120.0 - zoomed.y) / zoomed.scale), (100.0, 100.0));
        assert_eq!(view.zoom_at(1000.0, 0.0, 0.0).scale, 3.0, "zoom is bounded");
    }

    #[test]
    fn a_pinch_keeps_the_point_between_the_fingers_under_them_and_scales_with_their_spread() {
        let view = View { x: 10.0, y: 20.0, scale: 0.5 };
        let drawing_at = |v: View, (sx, sy): (f64, f64)| ((sx - v.x) / v.scale, (sy - v.y) / v.scale);
        let from = [(100.0, 100.0), (140.0, 100.0)];
        // Spread to twice the distance, and moved 30 px right together.
        let to = [(110.0, 100.0), (190.0, 100.0)];
        let pinched = view.pinch(from, to);
        assert!((pinched.scale - 1.0).abs() < 1e-9, "twice the spread, twice the scale");
        let (before, after) = (drawing_at(view, (120.0, 100.0)), drawing_at(pinched, (150.0, 100.0)));
        assert!((before.0 - after.0).abs() < 1e-9 && (before.1 - after.1).abs() < 1e-9, "{before:?} {after:?}");
        assert_eq!(view.pinch(from, from), view, "fingers that did not move change nothing");
    }

    #[test]
    fn fit_shows_the_whole_drawing_centred() {
        let fitted = View::fit(2000.0, 500.0, 1000.0, 600.0);
        assert!(fitted.scale * 2000.0 <= 1000.0);
        assert!((fitted.x * 2.0 + 2000.0 * fitted.scale - 1000.0).abs() < 1e-9, "centred");
    }
}
