//! The rules of a run, as pure functions of the facts they are given: which command a run takes
//! in which phase, what a decision does to a gate, when spend opens a budget gate. They answer
//! what to do; the coordinator (`run`) does it, and the external-run link applies the same rules
//! to the state an outside engine reported. Table tests below.

use serde_json::{Map, Value};

use crate::protocol::{ClientEvent, Decision, RepairAction, RunPhase};

/// Why a client command was refused. The message is sent to that client as an `error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    #[error("the run is {}: it takes no more commands", .0.as_str())]
    Finished(RunPhase),
    #[error("the run is already paused")]
    AlreadyPaused,
    #[error("the run is not paused, so it cannot be resumed")]
    NotPaused,
    #[error("the run is being cancelled")]
    Cancelling,
    #[error("no node {0:?} in this run")]
    UnknownNode(String),
    #[error("gate {0:?} is not waiting for a decision")]
    GateNotWaiting(String),
    #[error("gate {node:?} was already decided by {by} ({}) at {at}", .decision.as_str())]
    AlreadyDecided { node: String, by: String, decision: Decision, at: String },
    #[error("gate {node:?} does not offer {}", .decision.as_str())]
    NotOffered { node: String, decision: Decision },
    #[error("modify needs feedback: say what should change")]
    ModifyWithoutFeedback,
    #[error("gate {0:?} has no upstream node to send work back to")]
    NothingToRedo(String),
    #[error("{person} may not decide gate {node:?}: it is for {approvers}")]
    NotAnApprover { node: String, person: String, approvers: String },
    #[error("{person} started this run and may not approve gate {node:?} (allow_self_approval = false)")]
    SelfApproval { node: String, person: String },
    #[error("{person} already approved gate {node:?}; it needs {remaining} more approval(s) from others")]
    AlreadyApproved { node: String, person: String, remaining: u32 },
    #[error("gate {node:?}: {problem}")]
    BadInput { node: String, problem: String },
    #[error("the run's engine has stopped")]
    EngineStopped,
    /// A retry or re-run the run does not take now ([`crate::protocol::RunState::repair_plan`]
    /// says why).
    #[error("{0}")]
    Repair(String),
}

/// What a client command does to a run that takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandEffect<'a> {
    /// A gate decision: judged further by [`decide`] (and its form's values by
    /// [`crate::protocol::check_values`]).
    Decide {
        node_id: &'a str,
        decision: Decision,
        feedback: Option<&'a str>,
        inputs: Option<&'a Map<String, Value>>,
    },
    Pause,
    Resume,
    Cancel,
    /// A retry or re-run from `node_id`: judged further by
    /// [`crate::protocol::RunState::repair_plan`].
    Repair {
        action: RepairAction,
        node_id: &'a str,
    },
}

/// Whether a run in `phase` takes `event`, and what it does. A repair is the one command an
/// ended run takes (unless it was cancelled): it reopens the run.
pub fn command_effect(event: &ClientEvent, phase: RunPhase) -> Result<CommandEffect<'_>, Rejected> {
    match (event, phase) {
        (ClientEvent::RetryNode { .. } | ClientEvent::RerunNode { .. }, RunPhase::Cancelling | RunPhase::Cancelled) => {
            Err(Rejected::Repair("the run was cancelled: run it again instead".into()))
        }
        (ClientEvent::RetryNode { node_id }, _) => Ok(CommandEffect::Repair { action: RepairAction::Retry, node_id }),
        (ClientEvent::RerunNode { node_id }, _) => Ok(CommandEffect::Repair { action: RepairAction::Rerun, node_id }),
        (_, RunPhase::Cancelled | RunPhase::Completed | RunPhase::Failed) => Err(Rejected::Finished(phase)),
        (_, RunPhase::Cancelling) => Err(Rejected::Cancelling),
        (ClientEvent::HumanDecision { node_id, decision, feedback, inputs }, RunPhase::Running | RunPhase::Paused) => {
            Ok(CommandEffect::Decide {
                node_id,
                decision: *decision,
                feedback: feedback.as_deref(),
                inputs: inputs.as_ref(),
            })
        }
        (ClientEvent::PauseExecution, RunPhase::Running) => Ok(CommandEffect::Pause),
        (ClientEvent::PauseExecution, RunPhase::Paused) => Err(Rejected::AlreadyPaused),
        (ClientEvent::ResumeExecution, RunPhase::Paused) => Ok(CommandEffect::Resume),
        (ClientEvent::ResumeExecution, RunPhase::Running) => Err(Rejected::NotPaused),
        (ClientEvent::CancelExecution, RunPhase::Running | RunPhase::Paused) => Ok(CommandEffect::Cancel),
    }
}

/// Where a gate stands when a decision arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateStanding<'a> {
    /// It waits for a decision now.
    Waiting,
    /// It was decided (and does not wait again): by whom, what, when.
    Decided { by: &'a str, decision: Decision, at: &'a str },
    /// It has not started waiting (or is not a gate at all).
    NotWaiting,
}

/// What the decision rule needs to know about one gate.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    pub node_id: &'a str,
    pub standing: GateStanding<'a>,
    /// The decisions its card offers.
    pub options: &'a [Decision],
    /// True for the gate the engine adds when spend reaches the budget.
    pub budget_gate: bool,
    /// Whether it has upstream nodes that `modify` can send the work back to.
    pub has_upstream: bool,
    /// Who may decide it (names); `None`: anyone whose role decides gates.
    pub approvers: Option<&'a [String]>,
    /// Distinct approvals it needs (1 for most gates).
    pub approvals: u32,
    /// Who approved in this wait so far.
    pub approved_by: &'a [String],
    /// Who may not approve it: the run's starter, when self-approval is not allowed.
    pub may_not_approve: Option<&'a str>,
}

/// Who decides: a person (by name) picks from the card's options, within the gate's approvers
/// and quorum; a timeout applies the gate's `on_timeout`, offered or not; a decision the store
/// recorded already (judged when it was made) is taken as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider<'a> {
    Person(&'a str),
    Timeout,
    Recorded,
}

/// What a decision does to the gate and the run.
#[derive(Debug, Clone, PartialEq)]
pub enum GateOutcome {
    /// The gate completes; what waits for it may start.
    Complete,
    /// A budget gate approved: the budget grows by the step, then the gate completes.
    RaiseBudget,
    /// The gate fails; what follows it is skipped.
    Fail,
    /// A budget gate rejected: the run is cancelled (not a failure of the work).
    CancelRun,
    /// The gate's upstream nodes run again with this feedback; then it waits again.
    SendBack { feedback: String },
    /// An approval that counts towards the gate's quorum and is not yet the decision: everyone
    /// who approved so far (this person last), and how many more are needed.
    Counted { approved_by: Vec<String>, remaining: u32 },
}

/// Judges a decision on a gate: what it does, or why it is refused (changing nothing).
pub fn decide(
    gate: &Gate<'_>,
    decision: Decision,
    feedback: Option<&str>,
    decider: Decider,
) -> Result<GateOutcome, Rejected> {
    let node = || gate.node_id.to_owned();
    match gate.standing {
        GateStanding::Waiting => {}
        GateStanding::Decided { by, decision, at } => {
            return Err(Rejected::AlreadyDecided { node: node(), by: by.to_owned(), decision, at: at.to_owned() });
        }
        GateStanding::NotWaiting => return Err(Rejected::GateNotWaiting(node())),
    }
    if decider != Decider::Timeout && !gate.options.contains(&decision) {
        return Err(Rejected::NotOffered { node: node(), decision });
    }
    if let Decider::Person(person) = decider {
        if let Some(approvers) = gate.approvers
            && !approvers.iter().any(|a| a == person)
        {
            return Err(Rejected::NotAnApprover {
                node: node(),
                person: person.to_owned(),
                approvers: approvers.join(", "),
            });
        }
        if decision == Decision::Approve {
            if gate.may_not_approve == Some(person) {
                return Err(Rejected::SelfApproval { node: node(), person: person.to_owned() });
            }
            let needed = gate.approvals.max(1) as usize;
            if gate.approved_by.iter().any(|a| a == person) {
                let remaining = needed.saturating_sub(gate.approved_by.len()) as u32;
                return Err(Rejected::AlreadyApproved { node: node(), person: person.to_owned(), remaining });
            }
            if gate.approved_by.len() + 1 < needed {
                let mut approved_by = gate.approved_by.to_vec();
                approved_by.push(person.to_owned());
                let remaining = (needed - approved_by.len()) as u32;
                return Ok(GateOutcome::Counted { approved_by, remaining });
            }
        }
    }
    let feedback = feedback_text(feedback);
    match (decision, gate.budget_gate) {
        (Decision::Approve, true) => Ok(GateOutcome::RaiseBudget),
        (Decision::Approve, false) => Ok(GateOutcome::Complete),
        (Decision::Reject, true) => Ok(GateOutcome::CancelRun),
        (Decision::Reject, false) => Ok(GateOutcome::Fail),
        (Decision::Modify, _) => {
            let feedback = feedback.ok_or(Rejected::ModifyWithoutFeedback)?;
            if !gate.has_upstream {
                return Err(Rejected::NothingToRedo(node()));
            }
            Ok(GateOutcome::SendBack { feedback: feedback.to_owned() })
        }
    }
}

/// The feedback of a decision as it is kept: trimmed, and none when only blanks were sent.
pub fn feedback_text(feedback: Option<&str>) -> Option<&str> {
    feedback.map(str::trim).filter(|f| !f.is_empty())
}

/// Whether a gate's timeout, armed for its wait number `timer_round`, still decides: only while
/// the gate waits in that same round (a decision, or a send-back that made it wait again, came
/// first otherwise).
pub fn timeout_applies(standing: GateStanding<'_>, timer_round: u32, current_round: u32) -> bool {
    matches!(standing, GateStanding::Waiting) && timer_round == current_round
}

/// The spend of a run, as the budget rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct Spend {
    pub spent: f64,
    /// `None`: no budget.
    pub budget: Option<f64>,
    /// What approving a budget gate adds.
    pub step: f64,
    /// A budget gate waits already (or is about to).
    pub gate_open: bool,
    pub phase: RunPhase,
    /// Nodes that have not started (and would wait for a budget gate).
    pub unstarted: usize,
}

/// What the budget rule asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum BudgetVerdict {
    /// Nothing: under budget, no budget, a gate already open, nothing left to hold, or ending.
    Continue,
    /// Spend reached the budget: open a budget gate in front of every unstarted node, with this
    /// prompt.
    OpenGate { prompt: String },
}

/// When spend has reached the budget, a budget gate holds everything not yet started.
pub fn budget_verdict(spend: &Spend) -> BudgetVerdict {
    let Some(budget) = spend.budget else { return BudgetVerdict::Continue };
    let ending = spend.phase.is_terminal() || spend.phase == RunPhase::Cancelling;
    if spend.spent < budget || spend.gate_open || ending || spend.unstarted == 0 {
        return BudgetVerdict::Continue;
    }
    let prompt = format!(
        "Spent ${:.2} of the ${budget:.2} budget. Approving adds ${:.2} (new budget ${:.2}); rejecting cancels \
         the run.",
        spend.spent,
        spend.step,
        raised_budget(budget, spend.step)
    );
    BudgetVerdict::OpenGate { prompt }
}

/// The budget after a budget gate is approved.
pub fn raised_budget(budget: f64, step: f64) -> f64 {
    budget + step
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Role;

    const ALL_OPTIONS: &[Decision] = &[Decision::Approve, Decision::Reject, Decision::Modify];

    fn gate(standing: GateStanding<'static>) -> Gate<'static> {
        Gate {
            node_id: "review",
            standing,
            options: ALL_OPTIONS,
            budget_gate: false,
            has_upstream: true,
            approvers: None,
            approvals: 1,
            approved_by: &[],
            may_not_approve: None,
        }
    }

    #[test]
    fn which_command_a_run_takes_in_which_phase() {
        use CommandEffect::*;
        let decision = ClientEvent::HumanDecision {
            node_id: "g".into(),
            decision: Decision::Approve,
            feedback: None,
            inputs: None,
        };
        let decide = Decide { node_id: "g", decision: Decision::Approve, feedback: None, inputs: None };
        let retry = ClientEvent::RetryNode { node_id: "g".into() };
        let rerun = ClientEvent::RerunNode { node_id: "g".into() };
        let cancelled = "the run was cancelled: run it again instead";
        let table: &[(ClientEvent, RunPhase, Result<CommandEffect<'_>, Rejected>)] = &[
            (decision.clone(), RunPhase::Running, Ok(decide)),
            (decision.clone(), RunPhase::Paused, Ok(decide)),
            (decision.clone(), RunPhase::Cancelling, Err(Rejected::Cancelling)),
            (decision, RunPhase::Completed, Err(Rejected::Finished(RunPhase::Completed))),
            (ClientEvent::PauseExecution, RunPhase::Running, Ok(Pause)),
            (ClientEvent::PauseExecution, RunPhase::Paused, Err(Rejected::AlreadyPaused)),
            (ClientEvent::PauseExecution, RunPhase::Failed, Err(Rejected::Finished(RunPhase::Failed))),
            (ClientEvent::ResumeExecution, RunPhase::Paused, Ok(Resume)),
            (ClientEvent::ResumeExecution, RunPhase::Running, Err(Rejected::NotPaused)),
            (ClientEvent::ResumeExecution, RunPhase::Cancelling, Err(Rejected::Cancelling)),
            (ClientEvent::CancelExecution, RunPhase::Running, Ok(Cancel)),
            (ClientEvent::CancelExecution, RunPhase::Paused, Ok(Cancel)),
            (ClientEvent::CancelExecution, RunPhase::Cancelling, Err(Rejected::Cancelling)),
            (ClientEvent::CancelExecution, RunPhase::Cancelled, Err(Rejected::Finished(RunPhase::Cancelled))),
            // A repair is the one command an ended run takes, unless it was cancelled.
            (retry.clone(), RunPhase::Running, Ok(Repair { action: RepairAction::Retry, node_id: "g" })),
            (retry.clone(), RunPhase::Paused, Ok(Repair { action: RepairAction::Retry, node_id: "g" })),
            (retry.clone(), RunPhase::Failed, Ok(Repair { action: RepairAction::Retry, node_id: "g" })),
            (rerun.clone(), RunPhase::Completed, Ok(Repair { action: RepairAction::Rerun, node_id: "g" })),
            (rerun.clone(), RunPhase::Failed, Ok(Repair { action: RepairAction::Rerun, node_id: "g" })),
            (retry, RunPhase::Cancelling, Err(Rejected::Repair(cancelled.into()))),
            (rerun, RunPhase::Cancelled, Err(Rejected::Repair(cancelled.into()))),
        ];
        for (event, phase, expected) in table {
            assert_eq!(&command_effect(event, *phase), expected, "{event:?} while {phase:?}");
        }
    }

    /// Each gate standing × decision × who decides (a person of each role, or the timeout). A
    /// person's decision is first judged by their role, as the service does before it reaches
    /// the run.
    #[test]
    fn what_a_decision_does_to_a_gate() {
        use GateOutcome::*;
        let decided = GateStanding::Decided { by: "ana", decision: Decision::Approve, at: "t" };
        let already = Err(Rejected::AlreadyDecided {
            node: "review".into(),
            by: "ana".into(),
            decision: Decision::Approve,
            at: "t".into(),
        });
        let not_waiting = Err(Rejected::GateNotWaiting("review".into()));
        let feedback = Some("shorter");
        // (where the gate stands, the decision, its feedback, what the rule says)
        type Row = (GateStanding<'static>, Decision, Option<&'static str>, Result<GateOutcome, Rejected>);
        let table: &[Row] = &[
            (GateStanding::Waiting, Decision::Approve, None, Ok(Complete)),
            (GateStanding::Waiting, Decision::Reject, None, Ok(Fail)),
            (GateStanding::Waiting, Decision::Modify, feedback, Ok(SendBack { feedback: "shorter".into() })),
            (GateStanding::Waiting, Decision::Modify, None, Err(Rejected::ModifyWithoutFeedback)),
            (GateStanding::Waiting, Decision::Modify, Some("   "), Err(Rejected::ModifyWithoutFeedback)),
            (decided, Decision::Approve, None, already.clone()),
            (decided, Decision::Reject, None, already.clone()),
            (decided, Decision::Modify, feedback, already),
            (GateStanding::NotWaiting, Decision::Approve, None, not_waiting.clone()),
            (GateStanding::NotWaiting, Decision::Modify, feedback, not_waiting),
        ];
        for (standing, decision, feedback, expected) in table {
            for role in Role::ALL {
                let event = ClientEvent::HumanDecision {
                    node_id: "review".into(),
                    decision: *decision,
                    feedback: feedback.map(str::to_owned),
                    inputs: None,
                };
                let verdict = match role.allows(Role::needed_for(&event)) {
                    true => decide(&gate(*standing), *decision, *feedback, Decider::Person("ana")),
                    false => Err(Rejected::EngineStopped),
                };
                let expected = match role {
                    Role::Approver | Role::Admin => expected.clone(),
                    // Refused for their role before the gate is looked at (the sentinel here).
                    Role::Viewer | Role::Engine => Err(Rejected::EngineStopped),
                };
                assert_eq!(verdict, expected, "{role:?} decides {decision:?} on a {standing:?} gate");
            }
            // The timeout decides like a person, whatever the card offers.
            assert_eq!(&decide(&gate(*standing), *decision, *feedback, Decider::Timeout), expected);
        }
    }

    #[test]
    fn a_gate_offers_only_its_options_to_people_but_its_timeout_decides_anyway() {
        let approve_only = Gate { options: &[Decision::Approve], ..gate(GateStanding::Waiting) };
        assert_eq!(
            decide(&approve_only, Decision::Reject, None, Decider::Person("ana")),
            Err(Rejected::NotOffered { node: "review".into(), decision: Decision::Reject })
        );
        assert_eq!(decide(&approve_only, Decision::Reject, None, Decider::Timeout), Ok(GateOutcome::Fail));
        let no_upstream = Gate { has_upstream: false, ..gate(GateStanding::Waiting) };
        assert_eq!(
            decide(&no_upstream, Decision::Modify, Some("again"), Decider::Person("ana")),
            Err(Rejected::NothingToRedo("review".into()))
        );
    }

    /// A gate for two approvals from ana, bo and cy, in a run cy started with self-approval
    /// off: who decides × what × who approved already.
    #[test]
    fn a_quorum_counts_distinct_approvers_and_any_reject_rejects() {
        use GateOutcome::*;
        let people = ["ana".to_owned(), "bo".to_owned(), "cy".to_owned()];
        let counted = Ok(Counted { approved_by: vec!["ana".into()], remaining: 1 });
        let again = Err(Rejected::AlreadyApproved { node: "review".into(), person: "ana".into(), remaining: 1 });
        let own = Err(Rejected::SelfApproval { node: "review".into(), person: "cy".into() });
        let stranger = Err(Rejected::NotAnApprover {
            node: "review".into(),
            person: "dan".into(),
            approvers: "ana, bo, cy".into(),
        });
        // (person, decision, whether ana approved already, what the rule says)
        let table: Vec<(&str, Decision, bool, Result<GateOutcome, Rejected>)> = vec![
            ("ana", Decision::Approve, false, counted),
            ("ana", Decision::Approve, true, again),
            ("bo", Decision::Approve, true, Ok(Complete)),
            ("bo", Decision::Reject, true, Ok(Fail)),
            ("ana", Decision::Reject, true, Ok(Fail)),
            ("bo", Decision::Modify, true, Ok(SendBack { feedback: "shorter".into() })),
            ("cy", Decision::Approve, false, own.clone()),
            ("cy", Decision::Approve, true, own),
            ("cy", Decision::Reject, false, Ok(Fail)),
            ("dan", Decision::Approve, false, stranger.clone()),
            ("dan", Decision::Reject, true, stranger),
        ];
        for (person, decision, ana_approved, expected) in table {
            let approved_by = if ana_approved { &people[..1] } else { &[] };
            let quorum = Gate {
                approvers: Some(&people),
                approvals: 2,
                approved_by,
                may_not_approve: Some("cy"),
                ..gate(GateStanding::Waiting)
            };
            let feedback = (decision == Decision::Modify).then_some("shorter");
            assert_eq!(
                decide(&quorum, decision, feedback, Decider::Person(person)),
                expected,
                "{person} {decision:?} after {approved_by:?}"
            );
        }
        // The timeout, and a decision the store recorded already, are not people: the rules of
        // who and how many are behind them.
        let quorum = Gate { approvers: Some(&people), approvals: 3, ..gate(GateStanding::Waiting) };
        assert_eq!(decide(&quorum, Decision::Approve, None, Decider::Timeout), Ok(Complete));
        assert_eq!(decide(&quorum, Decision::Approve, None, Decider::Recorded), Ok(Complete));
    }

    #[test]
    fn a_budget_gate_raises_the_budget_or_cancels_the_run() {
        let budget_gate = Gate { budget_gate: true, ..gate(GateStanding::Waiting) };
        assert_eq!(decide(&budget_gate, Decision::Approve, None, Decider::Person("ana")), Ok(GateOutcome::RaiseBudget));
        assert_eq!(decide(&budget_gate, Decision::Reject, None, Decider::Person("ana")), Ok(GateOutcome::CancelRun));
    }

    /// A timeout and a decision race: whichever the coordinator takes first wins; the other
    /// changes nothing.
    #[test]
    fn a_timeout_racing_a_decision() {
        let decided = GateStanding::Decided { by: "timeout", decision: Decision::Reject, at: "t" };
        let table = [
            // (standing when the timer fires, timer's round, gate's round, the timeout decides)
            (GateStanding::Waiting, 1, 1, true),
            // A person decided first: the gate no longer waits.
            (GateStanding::Decided { by: "ana", decision: Decision::Approve, at: "t" }, 1, 1, false),
            // Sent back and waiting again: the first wait's timer is stale.
            (GateStanding::Waiting, 1, 2, false),
            (GateStanding::NotWaiting, 2, 2, false),
        ];
        for (standing, timer_round, round, applies) in table {
            assert_eq!(timeout_applies(standing, timer_round, round), applies, "{standing:?} {timer_round} {round}");
        }
        // The timeout came first: the person's late decision is told who decided.
        let late = decide(&gate(decided), Decision::Approve, None, Decider::Person("ana"));
        assert!(matches!(late, Err(Rejected::AlreadyDecided { ref by, .. }) if by == "timeout"), "{late:?}");
    }

    #[test]
    fn when_spend_opens_a_budget_gate() {
        let base = Spend {
            spent: 1.0,
            budget: Some(1.0),
            step: 1.0,
            gate_open: false,
            phase: RunPhase::Running,
            unstarted: 3,
        };
        let opens = |spend: Spend| matches!(budget_verdict(&spend), BudgetVerdict::OpenGate { .. });
        let table = [
            (base, true, "spend reached the budget"),
            (Spend { spent: 1.5, ..base }, true, "spend went past the budget"),
            (Spend { spent: 0.99, ..base }, false, "under budget"),
            (Spend { budget: None, ..base }, false, "no budget"),
            (Spend { gate_open: true, ..base }, false, "a budget gate waits already"),
            (Spend { unstarted: 0, ..base }, false, "nothing left to hold"),
            (Spend { phase: RunPhase::Paused, ..base }, true, "paused runs are held too"),
            (Spend { phase: RunPhase::Cancelling, ..base }, false, "the run is ending"),
            (Spend { phase: RunPhase::Completed, ..base }, false, "the run ended"),
        ];
        for (spend, expected, why) in table {
            assert_eq!(opens(spend), expected, "{why}");
        }
    }

    #[test]
    fn the_budget_gate_says_what_approving_adds_with_and_without_a_step_of_its_own() {
        // A spec without budget_step steps by the budget again (spec.rs); with one, by that.
        for (step, new_budget) in [(2.0, "$4.00"), (0.5, "$2.50")] {
            let spend =
                Spend { spent: 2.1, budget: Some(2.0), step, gate_open: false, phase: RunPhase::Running, unstarted: 1 };
            let BudgetVerdict::OpenGate { prompt } = budget_verdict(&spend) else { panic!("a gate opens") };
            assert!(prompt.contains("Spent $2.10 of the $2.00 budget"), "{prompt}");
            assert!(prompt.contains(&format!("Approving adds ${step:.2} (new budget {new_budget})")), "{prompt}");
            assert_eq!(raised_budget(2.0, step), 2.0 + step);
        }
    }
}
