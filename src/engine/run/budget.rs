//! Spend: adding it up and, when it reaches the budget, holding the rest behind a budget gate
//! (when, and what it says, is [`crate::engine::policy::budget_verdict`]'s to decide).

use super::Coordinator;
use crate::engine::policy::{self, BudgetVerdict, Spend};
use crate::engine::schedule::Slot;
use crate::engine::spec::{GateRules, NodeSpec, NodeWork};
use crate::protocol::Decision;

impl Coordinator {
    pub(super) fn spend(&mut self, amount: f64) {
        if amount == 0.0 {
            return;
        }
        self.spent += amount;
        self.publish_cost();
        self.check_budget();
    }

    /// When spend has reached the budget: a budget gate that every unstarted node waits for.
    pub(super) fn check_budget(&mut self) {
        let unstarted: Vec<usize> = (0..self.scheduler.len())
            .filter(|&n| matches!(self.scheduler.slot(n), Some(Slot::Blocked | Slot::Ready)))
            .collect();
        let spend = Spend {
            spent: self.spent,
            budget: self.budget,
            step: self.budget_step,
            gate_open: self.open_budget_gate.is_some(),
            phase: self.phase,
            unstarted: unstarted.len(),
        };
        let prompt = match policy::budget_verdict(&spend) {
            BudgetVerdict::Continue => return,
            BudgetVerdict::OpenGate { prompt } => prompt,
        };
        let mut number = 1;
        while self.index.contains_key(&format!("budget_{number}")) {
            number += 1;
        }
        let gate = NodeSpec {
            id: format!("budget_{number}"),
            label: Some("Budget reached".into()),
            needs: Vec::new(),
            timeout: None,
            retries: 0,
            work: NodeWork::Gate {
                title: "Budget reached: continue?".into(),
                prompt,
                options: vec![Decision::Approve, Decision::Reject],
                on_timeout: None,
                // Anyone who may decide gates: spend is everyone's business, the starter's too.
                rules: GateRules::default(),
                inputs: Vec::new(),
            },
        };
        let gate = self.insert_node(gate, &[], true);
        self.open_budget_gate = Some(gate);
        for node in unstarted {
            self.link(gate, node);
        }
        self.start_ready_nodes();
    }
}
