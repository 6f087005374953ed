//! Which nodes may start now: dependency counting, a parallelism limit, skip propagation.
//!
//! Pure bookkeeping in the manner of cargo's `DependencyQueue`: no clocks, no I/O, no tasks.
//! The run coordinator tells it what happened (started, completed, failed, cancelled) and asks
//! what to start next. Nodes are addressed by their index in the spec.

use std::collections::BTreeSet;

/// Where one node is, as far as scheduling is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Some need has not completed yet.
    Blocked,
    /// Every need completed; may start when capacity allows.
    Ready,
    /// Handed to the coordinator by [`Scheduler::take_startable`].
    Started,
    Completed,
    Failed,
    /// A need failed or was skipped, so this node never runs.
    Skipped,
    Cancelled,
}

impl Slot {
    pub fn is_terminal(self) -> bool {
        match self {
            Slot::Completed | Slot::Failed | Slot::Skipped | Slot::Cancelled => true,
            Slot::Blocked | Slot::Ready | Slot::Started => false,
        }
    }
}

/// Why an edge cannot be added at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EdgeRefusal {
    #[error("no such node")]
    UnknownNode,
    #[error("an edge from a node to itself")]
    SelfEdge,
    #[error("its target has already started or finished")]
    TargetStarted,
    #[error("the edge already exists")]
    Duplicate,
    #[error("it would close a cycle")]
    Cycle,
}

#[derive(Clone, Debug)]
struct Entry {
    slot: Slot,
    /// Needs that have not completed yet.
    open_needs: usize,
    /// Nodes that need this one.
    dependents: Vec<usize>,
    /// False for nodes that only wait (gates): they do not count against `max_parallel`.
    takes_capacity: bool,
}

/// Scheduling state of one run.
#[derive(Clone, Debug)]
pub struct Scheduler {
    entries: Vec<Entry>,
    /// Ready nodes that take capacity, lowest index first, so runs follow spec order.
    ready: BTreeSet<usize>,
    /// Ready nodes that take no capacity (gates): they start whenever they are ready.
    ready_free: BTreeSet<usize>,
    max_parallel: usize,
    /// Started nodes that take capacity.
    busy: usize,
    /// Nodes not yet in a terminal slot.
    unfinished: usize,
}

impl Scheduler {
    /// `needs[i]` are the indices node `i` depends on; they must be valid indices and acyclic
    /// (a validated spec guarantees both).
    pub fn new(needs: &[Vec<usize>], takes_capacity: &[bool], max_parallel: usize) -> Self {
        let mut entries: Vec<Entry> = needs
            .iter()
            .zip(takes_capacity)
            .map(|(needs, &takes_capacity)| Entry {
                slot: if needs.is_empty() { Slot::Ready } else { Slot::Blocked },
                open_needs: needs.len(),
                dependents: Vec::new(),
                takes_capacity,
            })
            .collect();
        for (node, node_needs) in needs.iter().enumerate() {
            for &need in node_needs {
                if let Some(entry) = entries.get_mut(need) {
                    entry.dependents.push(node);
                }
            }
        }
        let unfinished = entries.len();
        let mut scheduler = Scheduler {
            entries,
            ready: BTreeSet::new(),
            ready_free: BTreeSet::new(),
            max_parallel: max_parallel.max(1),
            busy: 0,
            unfinished,
        };
        for node in 0..scheduler.entries.len() {
            if scheduler.entries[node].slot == Slot::Ready {
                scheduler.mark_ready(node);
            }
        }
        scheduler
    }

    pub fn slot(&self, node: usize) -> Option<Slot> {
        self.entries.get(node).map(|e| e.slot)
    }

    /// Ready nodes that may start now, marked started: every ready node that takes no capacity,
    /// then the lowest-indexed others while fewer than `max_parallel` run.
    pub fn take_startable(&mut self) -> Vec<usize> {
        let mut started: Vec<usize> = std::mem::take(&mut self.ready_free).into_iter().collect();
        while self.busy < self.max_parallel {
            let Some(node) = self.ready.pop_first() else { break };
            self.busy += 1;
            started.push(node);
        }
        for &node in &started {
            self.entries[node].slot = Slot::Started;
        }
        started.sort_unstable();
        started
    }

    fn mark_ready(&mut self, node: usize) {
        self.entries[node].slot = Slot::Ready;
        if self.entries[node].takes_capacity {
            self.ready.insert(node);
        } else {
            self.ready_free.insert(node);
        }
    }

    fn unmark_ready(&mut self, node: usize) {
        self.ready.remove(&node);
        self.ready_free.remove(&node);
    }

    /// A started node completed: its dependents whose needs are now all complete become ready.
    /// Returns those newly ready nodes.
    pub fn complete(&mut self, node: usize) -> Vec<usize> {
        if !self.finish(node, Slot::Completed) {
            return Vec::new();
        }
        let mut unblocked = Vec::new();
        for dependent in self.entries[node].dependents.clone() {
            let entry = &mut self.entries[dependent];
            entry.open_needs = entry.open_needs.saturating_sub(1);
            if entry.open_needs == 0 && entry.slot == Slot::Blocked {
                self.mark_ready(dependent);
                unblocked.push(dependent);
            }
        }
        unblocked
    }

    /// A started node failed: every node downstream of it that has not finished is skipped.
    /// Returns the skipped nodes in the order they were reached.
    pub fn fail(&mut self, node: usize) -> Vec<usize> {
        if !self.finish(node, Slot::Failed) {
            return Vec::new();
        }
        let mut skipped = Vec::new();
        let mut stack = self.entries[node].dependents.clone();
        stack.reverse();
        while let Some(next) = stack.pop() {
            let entry = &mut self.entries[next];
            match entry.slot {
                Slot::Blocked | Slot::Ready => {
                    entry.slot = Slot::Skipped;
                    self.unmark_ready(next);
                    self.unfinished -= 1;
                    skipped.push(next);
                    stack.extend(self.entries[next].dependents.iter().rev());
                }
                // A node downstream of a failure cannot have started; terminal ones stay.
                Slot::Started | Slot::Completed | Slot::Failed | Slot::Skipped | Slot::Cancelled => {}
            }
        }
        skipped
    }

    /// A started node was cancelled.
    pub fn cancel_started(&mut self, node: usize) {
        self.finish(node, Slot::Cancelled);
    }

    /// Every node that has not started is cancelled; returns them. Started nodes are the
    /// caller's to stop and report through [`Scheduler::cancel_started`].
    pub fn cancel_unstarted(&mut self) -> Vec<usize> {
        let mut cancelled = Vec::new();
        for (node, entry) in self.entries.iter_mut().enumerate() {
            if matches!(entry.slot, Slot::Blocked | Slot::Ready) {
                entry.slot = Slot::Cancelled;
                self.unfinished -= 1;
                cancelled.push(node);
            }
        }
        self.ready.clear();
        self.ready_free.clear();
        cancelled
    }

    /// Adds a node that needs `needs` (existing indices); answers its index. It is ready at once
    /// if every need has completed.
    pub fn add_node(&mut self, needs: &[usize], takes_capacity: bool) -> usize {
        let node = self.entries.len();
        let open_needs =
            needs.iter().filter(|&&n| self.entries.get(n).is_some_and(|e| e.slot != Slot::Completed)).count();
        for &need in needs {
            if let Some(entry) = self.entries.get_mut(need) {
                entry.dependents.push(node);
            }
        }
        self.entries.push(Entry { slot: Slot::Blocked, open_needs, dependents: Vec::new(), takes_capacity });
        if open_needs == 0 {
            self.mark_ready(node);
        }
        self.unfinished += 1;
        node
    }

    /// Adds the edge `from → to`. `to` must not have started (the caller checks, see
    /// [`Scheduler::slot`]); if `from` has not completed, `to` waits for it.
    pub fn add_edge(&mut self, from: usize, to: usize) {
        let from_done = self.entries[from].slot == Slot::Completed;
        self.entries[from].dependents.push(to);
        if !from_done {
            let entry = &mut self.entries[to];
            entry.open_needs += 1;
            if entry.slot == Slot::Ready {
                entry.slot = Slot::Blocked;
                self.unmark_ready(to);
            }
        }
    }

    /// Runs the completed nodes `upstream` again before the started node `gate` (which needs
    /// them) is started again: `gate` goes back to waiting for them. Nodes that are blocked on an
    /// upstream node wait for its new run too. Returns false (and changes nothing) unless every
    /// upstream node has completed and `gate` has started.
    pub fn rerun_before(&mut self, upstream: &[usize], gate: usize) -> bool {
        let valid = self.entries.get(gate).is_some_and(|e| e.slot == Slot::Started)
            && upstream.iter().all(|&u| self.entries.get(u).is_some_and(|e| e.slot == Slot::Completed));
        if !valid {
            return false;
        }
        let gate_entry = &mut self.entries[gate];
        gate_entry.slot = Slot::Blocked;
        gate_entry.open_needs = upstream.len();
        if gate_entry.takes_capacity {
            self.busy -= 1;
        }
        for &u in upstream {
            self.mark_ready(u);
            self.unfinished += 1;
            for dependent in self.entries[u].dependents.clone() {
                if dependent != gate && self.entries[dependent].slot == Slot::Blocked {
                    self.entries[dependent].open_needs += 1;
                }
            }
        }
        true
    }

    /// Runs the finished node `from` and everything downstream of it again (a repair): they go
    /// back to blocked, or ready when their needs have completed; nothing else changes. Returns
    /// the reset nodes in index order, or `None` (and changes nothing) unless `from` has
    /// finished, every node it needs has completed, and nothing downstream of it has started.
    pub fn reset_from(&mut self, from: usize) -> Option<Vec<usize>> {
        if !self.entries.get(from)?.slot.is_terminal() {
            return None;
        }
        let needs_complete = self
            .entries
            .iter()
            .filter(|entry| entry.dependents.contains(&from))
            .all(|entry| entry.slot == Slot::Completed);
        let reached = self.downstream(from);
        let nodes: Vec<usize> = (0..self.entries.len()).filter(|&n| reached[n]).collect();
        if !needs_complete || nodes.iter().any(|&n| self.entries[n].slot == Slot::Started) {
            return None;
        }
        for &node in &nodes {
            if self.entries[node].slot.is_terminal() {
                self.unfinished += 1;
            }
            self.unmark_ready(node);
            self.entries[node].slot = Slot::Blocked;
            self.entries[node].open_needs = 0;
        }
        // Count the open needs of the reset nodes anew: every need that has not completed now.
        let mut open = vec![0usize; self.entries.len()];
        for entry in self.entries.iter().filter(|entry| entry.slot != Slot::Completed) {
            for &dependent in entry.dependents.iter().filter(|&&d| reached[d]) {
                open[dependent] += 1;
            }
        }
        for &node in &nodes {
            self.entries[node].open_needs = open[node];
            if open[node] == 0 {
                self.mark_ready(node);
            }
        }
        Some(nodes)
    }

    /// Whether the edge `from → to` may be added while the run goes on.
    pub fn check_edge(&self, from: usize, to: usize) -> Result<(), EdgeRefusal> {
        if from >= self.entries.len() || to >= self.entries.len() {
            return Err(EdgeRefusal::UnknownNode);
        }
        if from == to {
            return Err(EdgeRefusal::SelfEdge);
        }
        if !matches!(self.entries[to].slot, Slot::Blocked | Slot::Ready) {
            return Err(EdgeRefusal::TargetStarted);
        }
        if self.entries[from].dependents.contains(&to) {
            return Err(EdgeRefusal::Duplicate);
        }
        if self.reaches(to, from) {
            return Err(EdgeRefusal::Cycle);
        }
        Ok(())
    }

    /// True if `to` can be reached from `from` along edges (used to refuse edges that would
    /// close a cycle).
    pub fn reaches(&self, from: usize, to: usize) -> bool {
        self.walk(from, Some(to))[to]
    }

    /// Which nodes can be reached from `from` along edges (`from` itself included): what waits
    /// for it, directly or not.
    pub fn downstream(&self, from: usize) -> Vec<bool> {
        self.walk(from, None)
    }

    /// The nodes reached from `from`, stopping early once `stop` is.
    fn walk(&self, from: usize, stop: Option<usize>) -> Vec<bool> {
        let mut seen = vec![false; self.entries.len()];
        let mut stack = vec![from];
        while let Some(node) = stack.pop() {
            if std::mem::replace(&mut seen[node], true) {
                continue;
            }
            if Some(node) == stop {
                break;
            }
            stack.extend(self.entries[node].dependents.iter().copied());
        }
        seen
    }

    /// Number of nodes, including added ones.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Puts a run back where its log left it (after a restart). `settled[i]` is the slot node `i`
    /// had reached (terminal, or `Started` for a gate that waits); `None` for nodes that had not
    /// started or were running: those are ready again once their needs are complete.
    pub fn restore(&mut self, settled: &[Option<Slot>]) {
        self.ready.clear();
        self.ready_free.clear();
        self.busy = 0;
        self.unfinished = self.entries.len();
        for entry in &mut self.entries {
            entry.slot = Slot::Blocked;
            entry.open_needs = 0;
        }
        for node in 0..self.entries.len() {
            for dependent in self.entries[node].dependents.clone() {
                self.entries[dependent].open_needs += 1;
            }
        }
        for (node, slot) in settled.iter().enumerate().take(self.entries.len()) {
            let Some(slot) = *slot else { continue };
            self.entries[node].slot = slot;
            if slot.is_terminal() {
                self.unfinished -= 1;
            }
            if slot == Slot::Started && self.entries[node].takes_capacity {
                self.busy += 1;
            }
            if slot == Slot::Completed {
                for dependent in self.entries[node].dependents.clone() {
                    self.entries[dependent].open_needs -= 1;
                }
            }
        }
        for node in 0..self.entries.len() {
            let entry = &self.entries[node];
            if entry.slot == Slot::Blocked && entry.open_needs == 0 {
                self.mark_ready(node);
            }
        }
    }

    /// Started nodes, in index order.
    pub fn started(&self) -> Vec<usize> {
        self.entries.iter().enumerate().filter(|(_, e)| e.slot == Slot::Started).map(|(i, _)| i).collect()
    }

    /// True when every node is in a terminal slot.
    pub fn is_finished(&self) -> bool {
        self.unfinished == 0
    }

    /// True if some node failed (a rejected gate counts as failed).
    pub fn any_failed(&self) -> bool {
        self.entries.iter().any(|e| e.slot == Slot::Failed)
    }

    /// Moves a started node to a terminal slot; false (and no change) if it was not started.
    fn finish(&mut self, node: usize, to: Slot) -> bool {
        let Some(entry) = self.entries.get_mut(node) else {
            return false;
        };
        if entry.slot != Slot::Started {
            return false;
        }
        entry.slot = to;
        if entry.takes_capacity {
            self.busy -= 1;
        }
        self.unfinished -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a scheduler from `(needs, takes_capacity)` per node.
    fn scheduler(nodes: &[(&[usize], bool)], max_parallel: usize) -> Scheduler {
        let needs: Vec<Vec<usize>> = nodes.iter().map(|(n, _)| n.to_vec()).collect();
        let capacity: Vec<bool> = nodes.iter().map(|(_, c)| *c).collect();
        Scheduler::new(&needs, &capacity, max_parallel)
    }

    #[test]
    fn ready_sets_follow_dependencies_and_the_parallelism_limit() {
        // Table: graph, max_parallel, then a script of (completed node, expected startable).
        type Step = (Option<usize>, &'static [usize]);
        type Case = (&'static str, Vec<(&'static [usize], bool)>, usize, Vec<Step>);
        let cases: Vec<Case> = vec![
            (
                "chain runs one at a time",
                vec![(&[], true), (&[0], true), (&[1], true)],
                4,
                vec![(None, &[0]), (Some(0), &[1]), (Some(1), &[2])],
            ),
            (
                "wide layer is capped by max_parallel",
                vec![(&[], true), (&[], true), (&[], true), (&[], true)],
                2,
                vec![(None, &[0, 1]), (Some(1), &[2]), (Some(0), &[3])],
            ),
            (
                "fan-in waits for every need",
                vec![(&[], true), (&[], true), (&[0, 1], true)],
                4,
                vec![(None, &[0, 1]), (Some(0), &[]), (Some(1), &[2])],
            ),
            (
                "gates take no capacity",
                vec![(&[], true), (&[], false), (&[], true)],
                1,
                vec![(None, &[0, 1]), (Some(0), &[2])],
            ),
        ];
        for (name, nodes, max_parallel, steps) in cases {
            let mut s = scheduler(&nodes, max_parallel);
            for (completed, expected) in steps {
                if let Some(node) = completed {
                    s.complete(node);
                }
                assert_eq!(s.take_startable(), expected, "{name}: after {completed:?}");
            }
        }
    }

    #[test]
    fn failure_skips_everything_downstream_and_nothing_else() {
        // 0 → 1 → 3, 0 → 2, 4 independent, 5 needs 3 and 4
        let mut s =
            scheduler(&[(&[], true), (&[0], true), (&[0], true), (&[1], true), (&[], true), (&[3, 4], true)], 8);
        assert_eq!(s.take_startable(), [0, 4]);
        assert_eq!(s.complete(0), [1, 2]);
        assert_eq!(s.take_startable(), [1, 2]);
        assert_eq!(s.fail(1), [3, 5]);
        assert_eq!(s.slot(3), Some(Slot::Skipped));
        assert_eq!(s.slot(5), Some(Slot::Skipped));
        assert_eq!(s.slot(2), Some(Slot::Started), "independent branch goes on");
        s.complete(2);
        s.complete(4);
        assert!(s.is_finished());
        assert!(s.any_failed());
    }

    #[test]
    fn cancel_stops_unstarted_and_started_nodes() {
        let mut s = scheduler(&[(&[], true), (&[], true), (&[0], true)], 1);
        assert_eq!(s.take_startable(), [0]);
        assert_eq!(s.cancel_unstarted(), [1, 2]);
        assert!(!s.is_finished());
        assert_eq!(s.started(), [0]);
        s.cancel_started(0);
        assert!(s.is_finished());
        assert!(s.take_startable().is_empty());
    }

    #[test]
    fn nodes_and_edges_added_at_run_time_are_scheduled() {
        // 0 → 1; add 2 after 0 (completed) and 3 after 1 (not yet), then edge 2 → 3.
        let mut s = scheduler(&[(&[], true), (&[0], true)], 4);
        assert_eq!(s.take_startable(), [0]);
        s.complete(0);
        assert_eq!(s.take_startable(), [1]);
        let two = s.add_node(&[0], true);
        let three = s.add_node(&[1], true);
        assert_eq!(s.slot(two), Some(Slot::Ready), "its need already completed");
        assert_eq!(s.slot(three), Some(Slot::Blocked));
        s.add_edge(two, three);
        assert!(s.reaches(0, three));
        assert!(!s.reaches(three, 0));
        assert_eq!(s.take_startable(), [two]);
        s.complete(1);
        assert!(s.take_startable().is_empty(), "3 still waits for 2");
        s.complete(two);
        assert_eq!(s.take_startable(), [three]);
        s.complete(three);
        assert!(s.is_finished());
    }

    #[test]
    fn restore_puts_a_run_back_where_its_log_left_it() {
        // 0 → 1 → 3, 0 → gate 2 → 4; 0 completed, 1 was running, gate 2 waits.
        let mut s = scheduler(&[(&[], true), (&[0], true), (&[0], false), (&[1], true), (&[2], true)], 2);
        s.restore(&[Some(Slot::Completed), None, Some(Slot::Started), None, None]);
        assert_eq!(s.take_startable(), [1], "the interrupted node runs again");
        assert_eq!(s.slot(2), Some(Slot::Started), "the gate still waits");
        assert_eq!(s.slot(3), Some(Slot::Blocked));
        s.complete(1);
        assert_eq!(s.take_startable(), [3]);
        s.complete(3);
        s.complete(2);
        assert_eq!(s.take_startable(), [4]);
        s.complete(4);
        assert!(s.is_finished());
    }

    /// Each repair on one graph: 0 → 1 → 2 → 3, 0 → 4; node 1 failed (so 2 and 3 were skipped)
    /// and 4 completed, or everything completed, or 1 runs.
    #[test]
    fn reset_from_runs_a_node_and_its_downstream_again() {
        let graph: &[(&[usize], bool)] = &[(&[], true), (&[0], true), (&[1], true), (&[2], true), (&[0], true)];
        let failed_at_1 = || {
            let mut s = scheduler(graph, 4);
            assert_eq!(s.take_startable(), [0]);
            s.complete(0);
            assert_eq!(s.take_startable(), [1, 4]);
            s.complete(4);
            assert_eq!(s.fail(1), [2, 3]);
            assert!(s.is_finished());
            s
        };
        let all_done = || {
            let mut s = scheduler(graph, 4);
            for node in [0, 1, 4, 2, 3] {
                s.take_startable();
                s.complete(node);
            }
            assert!(s.is_finished());
            s
        };
        // (case, scheduler, reset from, what is reset, what may start then)
        type Case = (&'static str, Scheduler, usize, Option<Vec<usize>>, Vec<usize>);
        let running_1 = {
            let mut s = scheduler(graph, 4);
            s.take_startable();
            s.complete(0);
            s.take_startable();
            s
        };
        let cases: Vec<Case> = vec![
            ("retry the failed node", failed_at_1(), 1, Some(vec![1, 2, 3]), vec![1]),
            ("a skipped node's need failed", failed_at_1(), 2, None, vec![]),
            ("re-run a completed node of an ended run", all_done(), 1, Some(vec![1, 2, 3]), vec![1]),
            ("re-run the last node only", all_done(), 3, Some(vec![3]), vec![3]),
            ("re-run from the root", all_done(), 0, Some(vec![0, 1, 2, 3, 4]), vec![0]),
            ("a running node is not reset", running_1, 1, None, vec![]),
        ];
        for (case, mut s, from, expected, startable) in cases {
            let before = s.clone().take_startable();
            let reset = s.reset_from(from);
            assert_eq!(reset, expected, "{case}");
            if reset.is_some() {
                assert!(!s.is_finished(), "{case}: the run has work again");
                assert_eq!(s.take_startable(), startable, "{case}");
            } else {
                assert_eq!(s.take_startable(), before, "{case}: nothing changed");
            }
        }
        // A retried run goes on to the end: 1, then 2, then 3.
        let mut s = failed_at_1();
        s.reset_from(1);
        assert_eq!(s.take_startable(), [1]);
        assert_eq!(s.complete(1), [2]);
        assert_eq!(s.take_startable(), [2]);
        s.complete(2);
        assert_eq!(s.take_startable(), [3]);
        s.complete(3);
        assert!(s.is_finished() && !s.any_failed(), "the run completes");
    }

    #[test]
    fn run_time_edges_are_checked() {
        // 0 → 1 → 2, 3 alone; 0 started.
        let mut s = scheduler(&[(&[], true), (&[0], true), (&[1], true), (&[], true)], 1);
        assert_eq!(s.take_startable(), [0]);
        let cases = [
            ((3, 2), Ok(())),
            ((1, 3), Ok(())),
            ((2, 2), Err(EdgeRefusal::SelfEdge)),
            ((3, 0), Err(EdgeRefusal::TargetStarted)),
            ((0, 1), Err(EdgeRefusal::Duplicate)),
            ((2, 1), Err(EdgeRefusal::Cycle)),
            ((9, 1), Err(EdgeRefusal::UnknownNode)),
        ];
        for ((from, to), expected) in cases {
            assert_eq!(s.check_edge(from, to), expected, "{from} → {to}");
        }
    }

    #[test]
    fn an_edge_from_an_unfinished_node_blocks_a_ready_one() {
        let mut s = scheduler(&[(&[], true), (&[], true)], 1);
        assert_eq!(s.take_startable(), [0]);
        s.add_edge(0, 1);
        assert_eq!(s.slot(1), Some(Slot::Blocked));
        s.complete(0);
        assert_eq!(s.take_startable(), [1]);
    }

    #[test]
    fn rerun_sends_work_back_before_the_gate() {
        // 0 → gate(1, no capacity); 0 → 2; 3 → 2 (so 2 is blocked on 3 when 0 re-runs).
        let mut s = scheduler(&[(&[], true), (&[0], false), (&[0, 3], true), (&[], true)], 1);
        assert_eq!(s.take_startable(), [0]);
        s.complete(0);
        assert_eq!(s.take_startable(), [1, 3], "gate takes no capacity");
        assert!(!s.rerun_before(&[3], 1), "3 has not completed");
        assert!(s.rerun_before(&[0], 1));
        assert_eq!(s.slot(1), Some(Slot::Blocked));
        assert!(s.take_startable().is_empty(), "0 waits for the capacity 3 holds");
        s.complete(3);
        assert_eq!(s.take_startable(), [0]);
        assert_eq!(s.slot(2), Some(Slot::Blocked), "2 waits for 0's new run");
        s.complete(0);
        assert_eq!(s.take_startable(), [1, 2], "the gate waits again, 2 runs");
    }

    #[test]
    fn reports_about_nodes_that_are_not_running_change_nothing() {
        let mut s = scheduler(&[(&[], true), (&[0], true)], 1);
        assert!(s.complete(1).is_empty(), "blocked node cannot complete");
        assert!(s.fail(0).is_empty(), "ready but unstarted node cannot fail");
        assert_eq!(s.take_startable(), [0]);
        s.complete(0);
        assert!(s.complete(0).is_empty(), "completing twice is a no-op");
        assert_eq!(s.take_startable(), [1]);
    }
}
