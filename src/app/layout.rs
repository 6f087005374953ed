//! Layered (Sugiyama-style) layout of a DAG for drawing, computed in the browser from the run's
//! state: layers by longest path from the sources, crossing reduction by barycentres, then
//! coordinates left to right. Given the previous layout, nodes already on screen keep their
//! places as far as possible and new ones go where their upstream nodes are.

use std::collections::HashMap;

/// Width of a node box.
pub const NODE_WIDTH: f64 = 180.0;
/// Height of a node box.
pub const NODE_HEIGHT: f64 = 44.0;
/// Horizontal gap between layers (room for the edges).
pub const LAYER_GAP: f64 = 70.0;
/// Vertical gap between nodes of a layer.
pub const ROW_GAP: f64 = 14.0;
/// Barycentre sweeps when laying out from scratch.
const SWEEPS: usize = 6;

const ROW: f64 = NODE_HEIGHT + ROW_GAP;
const COLUMN: f64 = NODE_WIDTH + LAYER_GAP;

/// Where every node goes: its box's top-left corner, and the size of the whole drawing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    pub positions: HashMap<String, (f64, f64)>,
    pub width: f64,
    pub height: f64,
}

impl Layout {
    /// An edge from `from`'s right side to `to`'s left side as an SVG path (a cubic curve).
    pub fn edge_path(&self, from: &str, to: &str) -> Option<String> {
        let (fx, fy) = *self.positions.get(from)?;
        let (tx, ty) = *self.positions.get(to)?;
        let (x1, y1) = (fx + NODE_WIDTH, fy + NODE_HEIGHT / 2.0);
        let (x2, y2) = (tx, ty + NODE_HEIGHT / 2.0);
        let bend = ((x2 - x1) / 2.0).max(30.0);
        Some(format!("M{x1:.1},{y1:.1} C{:.1},{y1:.1} {:.1},{y2:.1} {x2:.1},{y2:.1}", x1 + bend, x2 - bend))
    }
}

/// Lays out `nodes` (id and the ids it needs, in a stable order). Needs that are not nodes are
/// ignored; a cycle (which a valid run never has) cannot hang it.
pub fn layout(nodes: &[(String, Vec<String>)], previous: Option<&Layout>) -> Layout {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    let needs: Vec<Vec<usize>> =
        nodes.iter().map(|(_, needs)| needs.iter().filter_map(|n| index.get(n.as_str()).copied()).collect()).collect();
    let layer_of = longest_path_layers(&needs);
    let layer_count = layer_of.iter().copied().max().map_or(0, |l| l + 1);
    let mut layers: Vec<Vec<usize>> = vec![Vec::new(); layer_count];
    for (node, &layer) in layer_of.iter().enumerate() {
        layers[layer].push(node);
    }
    let previous = previous.filter(|p| !p.positions.is_empty());
    let mut positions = HashMap::with_capacity(nodes.len());
    match previous {
        None => {
            reduce_crossings(&mut layers, &needs);
            let tallest = layers.iter().map(Vec::len).max().unwrap_or(0) as f64;
            for (layer, members) in layers.iter().enumerate() {
                let offset = (tallest - members.len() as f64) / 2.0 * ROW;
                for (row, &node) in members.iter().enumerate() {
                    positions.insert(nodes[node].0.clone(), (layer as f64 * COLUMN, offset + row as f64 * ROW));
                }
            }
        }
        Some(previous) => {
            for (layer, members) in layers.iter().enumerate() {
                let x = layer as f64 * COLUMN;
                // Nodes already placed keep their height; new ones take the first free slot at
                // or below the middle of their upstream nodes.
                let mut taken: Vec<f64> = Vec::new();
                let mut fresh = Vec::new();
                for &node in members {
                    match previous.positions.get(&nodes[node].0) {
                        Some(&(_, y)) => {
                            positions.insert(nodes[node].0.clone(), (x, y));
                            taken.push(y);
                        }
                        None => fresh.push(node),
                    }
                }
                for node in fresh {
                    let ups: Vec<f64> =
                        needs[node].iter().filter_map(|&n| positions.get(&nodes[n].0).map(|&(_, y)| y)).collect();
                    let wanted = if ups.is_empty() { 0.0 } else { ups.iter().sum::<f64>() / ups.len() as f64 };
                    let y = free_slot(&taken, wanted);
                    taken.push(y);
                    positions.insert(nodes[node].0.clone(), (x, y));
                }
            }
        }
    }
    let width = layer_count as f64 * COLUMN - LAYER_GAP;
    let height = positions.values().map(|&(_, y)| y + NODE_HEIGHT).fold(0.0, f64::max);
    Layout { positions, width: width.max(0.0), height }
}

/// The first height at or below `wanted` (on the row grid) that overlaps no taken one.
fn free_slot(taken: &[f64], wanted: f64) -> f64 {
    let mut y = (wanted / ROW).round().max(0.0) * ROW;
    while taken.iter().any(|&t| (t - y).abs() < ROW - 0.5) {
        y += ROW;
    }
    y
}

/// Layer of each node: 0 for nodes without needs, else one more than its deepest need.
fn longest_path_layers(needs: &[Vec<usize>]) -> Vec<usize> {
    let mut dependents = vec![Vec::new(); needs.len()];
    let mut open: Vec<usize> = needs.iter().map(Vec::len).collect();
    for (node, node_needs) in needs.iter().enumerate() {
        for &need in node_needs {
            dependents[need].push(node);
        }
    }
    let mut layer = vec![0; needs.len()];
    let mut ready: Vec<usize> = (0..needs.len()).filter(|&n| open[n] == 0).collect();
    let mut placed = 0;
    while let Some(node) = ready.pop() {
        placed += 1;
        for &dependent in &dependents[node] {
            layer[dependent] = layer[dependent].max(layer[node] + 1);
            open[dependent] -= 1;
            if open[dependent] == 0 {
                ready.push(dependent);
            }
        }
    }
    // Nodes on a cycle were never ready: they stay in layer 0 rather than hang the layout.
    debug_assert!(placed <= needs.len());
    layer
}

/// Reorders each layer by the barycentre of its neighbours in the layer before (downward
/// sweeps) and after (upward sweeps).
fn reduce_crossings(layers: &mut [Vec<usize>], needs: &[Vec<usize>]) {
    let mut dependents = vec![Vec::new(); needs.len()];
    for (node, node_needs) in needs.iter().enumerate() {
        for &need in node_needs {
            dependents[need].push(node);
        }
    }
    let mut position = vec![0.0; needs.len()];
    for members in layers.iter() {
        for (row, &node) in members.iter().enumerate() {
            position[node] = row as f64;
        }
    }
    for sweep in 0..SWEEPS {
        let downward = sweep % 2 == 0;
        let order: Vec<usize> =
            if downward { (1..layers.len()).collect() } else { (0..layers.len().saturating_sub(1)).rev().collect() };
        for layer in order {
            let neighbours = if downward { needs } else { &dependents };
            let mut keyed: Vec<(f64, usize)> = layers[layer]
                .iter()
                .map(|&node| {
                    let around = &neighbours[node];
                    let key = if around.is_empty() {
                        position[node]
                    } else {
                        around.iter().map(|&n| position[n]).sum::<f64>() / around.len() as f64
                    };
                    (key, node)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            layers[layer] = keyed.into_iter().map(|(_, node)| node).collect();
            for (row, &node) in layers[layer].iter().enumerate() {
                position[node] = row as f64;
            }
        }
    }
}

/// Number of edge crossings between consecutive layers (for tests and tuning).
pub fn crossings(layout: &Layout, nodes: &[(String, Vec<String>)]) -> usize {
    let edges: Vec<((f64, f64), (f64, f64))> = nodes
        .iter()
        .flat_map(|(id, needs)| needs.iter().map(move |need| (need.as_str(), id.as_str())))
        .filter_map(|(from, to)| Some((*layout.positions.get(from)?, *layout.positions.get(to)?)))
        .collect();
    let mut count = 0;
    for (i, a) in edges.iter().enumerate() {
        for b in &edges[i + 1..] {
            let same_span = a.0.0 == b.0.0 && a.1.0 == b.1.0;
            if same_span && (a.0.1 - b.0.1) * (a.1.1 - b.1.1) < 0.0 {
                count += 1;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        edges.iter().map(|(id, needs)| (id.to_string(), needs.iter().map(|n| n.to_string()).collect())).collect()
    }

    fn layer_of(layout: &Layout, id: &str) -> usize {
        (layout.positions[id].0 / COLUMN).round() as usize
    }

    #[test]
    fn layers_follow_the_longest_path() {
        let nodes = graph(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &["a", "c"]), ("e", &[])]);
        let layout = layout(&nodes, None);
        let layers: Vec<usize> = ["a", "b", "c", "d", "e"].iter().map(|id| layer_of(&layout, id)).collect();
        assert_eq!(layers, [0, 1, 2, 3, 0]);
        assert_eq!(layout.width, 4.0 * COLUMN - LAYER_GAP);
    }

    #[test]
    fn nodes_of_a_layer_never_overlap() {
        let mut edges: Vec<(String, Vec<String>)> = vec![("root".into(), vec![])];
        for i in 0..50 {
            edges.push((format!("n{i}"), vec!["root".into()]));
        }
        let layout = layout(&edges, None);
        let mut ys: Vec<f64> = (0..50).map(|i| layout.positions[&format!("n{i}")].1).collect();
        ys.sort_by(f64::total_cmp);
        assert!(ys.windows(2).all(|w| w[1] - w[0] >= NODE_HEIGHT));
    }

    #[test]
    fn crossing_reduction_untangles_a_crossed_pair() {
        // Spec order puts x2 above x1, but x1 follows a1 (top) and x2 follows a2 (bottom).
        let nodes = graph(&[("a1", &[]), ("a2", &[]), ("x2", &["a2"]), ("x1", &["a1"])]);
        let laid = layout(&nodes, None);
        assert_eq!(crossings(&laid, &nodes), 0);
        assert!(laid.positions["x1"].1 < laid.positions["x2"].1);
    }

    #[test]
    fn a_shuffled_lattice_reaches_the_fewest_crossings() {
        // Three layers of four, pairs of nodes needing the same two nodes of the layer before,
        // listed shuffled. Each such pair crosses once whatever the order: 4 is the minimum,
        // and the spec order has far more.
        let nodes = graph(&[
            ("a0", &[]),
            ("a1", &[]),
            ("a2", &[]),
            ("a3", &[]),
            ("b3", &["a3", "a2"]),
            ("b0", &["a0", "a1"]),
            ("b2", &["a2", "a3"]),
            ("b1", &["a1", "a0"]),
            ("c1", &["b0", "b1"]),
            ("c3", &["b2", "b3"]),
            ("c0", &["b0", "b1"]),
            ("c2", &["b3", "b2"]),
        ]);
        let laid = layout(&nodes, None);
        assert_eq!(crossings(&laid, &nodes), 4);
    }

    #[test]
    fn nodes_on_screen_keep_their_places_when_nodes_are_added() {
        let before = graph(&[("plan", &[]), ("merge", &["plan"]), ("other", &[])]);
        let first = layout(&before, None);
        let after = graph(&[
            ("plan", &[]),
            ("merge", &["plan", "w1", "w2"]),
            ("other", &[]),
            ("w1", &["plan"]),
            ("w2", &["plan"]),
        ]);
        let second = layout(&after, Some(&first));
        assert_eq!(second.positions["plan"], first.positions["plan"]);
        assert_eq!(second.positions["other"], first.positions["other"]);
        assert_eq!(second.positions["merge"].1, first.positions["merge"].1, "merge moves right, not up or down");
        assert_eq!(layer_of(&second, "merge"), 2);
        assert_ne!(second.positions["w1"], second.positions["w2"]);
    }

    #[test]
    fn unknown_needs_and_cycles_do_not_hang() {
        let nodes = graph(&[("a", &["ghost"]), ("b", &["c"]), ("c", &["b"])]);
        let laid = layout(&nodes, None);
        assert_eq!(laid.positions.len(), 3);
    }

    #[test]
    fn edges_are_curves_between_box_sides() {
        let nodes = graph(&[("a", &[]), ("b", &["a"])]);
        let laid = layout(&nodes, None);
        let path = laid.edge_path("a", "b").expect("both placed");
        assert!(path.starts_with(&format!("M{:.1},", NODE_WIDTH)), "{path}");
        assert!(laid.edge_path("a", "ghost").is_none());
    }

    #[test]
    fn a_thousand_nodes_lay_out() {
        let nodes: Vec<(String, Vec<String>)> = (0..1000)
            .map(|i| (format!("n{i}"), if i == 0 { vec![] } else { vec![format!("n{}", (i * 7919) % i)] }))
            .collect();
        let laid = layout(&nodes, None);
        assert_eq!(laid.positions.len(), 1000);
    }
}
