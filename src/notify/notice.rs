//! Which notifications a committed event raises: pure, with the little a run must remember
//! between events (its spend against its budget).

use serde_json::{Value, json};

use super::Topic;
use crate::protocol::{GatePresentation, RunPhase, Seq, ServerEvent, ServerEventBody, TIMEOUT_DECIDER};

/// What the notifier remembers of one run between its events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunMemory {
    /// The last spend and budget seen (`cost_update`); `None` before the first.
    pub cost: Option<(f64, f64)>,
    /// The cards of the gates that wait, by node id: what reminders show.
    pub waiting: std::collections::HashMap<String, GatePresentation>,
}

/// One notification to send, before it is addressed to its targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub topic: Topic,
    /// The event that raised it.
    pub seq: Seq,
    /// What makes this notice different from every other one of the run: the same notice
    /// always has the same key, so it is stored (and sent) once whoever raises it again.
    pub key: String,
    /// What the notice is about, as the payload carries it (`gate`, `decision`, `spend`, ...).
    pub detail: Value,
    /// The gate whose wait it announces (`gate_waiting`): its messages carry approval links.
    pub gate: Option<GateNotice>,
}

/// Who a waiting gate's approval links are for.
#[derive(Clone, Debug, PartialEq)]
pub struct GateNotice {
    pub node_id: String,
    /// Who may decide it; `None`: everyone whose role decides gates.
    pub approvers: Option<Vec<String>>,
    /// Who may not approve it (the run's starter, with self-approval off): no link for them.
    pub may_not_approve: Vec<String>,
}

/// The notices `event` raises, given what came before; updates `memory`.
pub fn notices(memory: &mut RunMemory, event: &ServerEvent) -> Vec<Notice> {
    let seq = event.seq;
    match &event.body {
        ServerEventBody::HumanGateWaiting { node_id, presentation } => {
            memory.waiting.insert(node_id.clone(), presentation.clone());
            vec![Notice {
                topic: Topic::GateWaiting,
                seq,
                key: format!("{seq}"),
                detail: json!({ "gate": { "node_id": node_id, "presentation": presentation } }),
                gate: Some(GateNotice {
                    node_id: node_id.clone(),
                    approvers: presentation.approvers.clone(),
                    may_not_approve: presentation.may_not_approve.clone(),
                }),
            }]
        }
        ServerEventBody::GateReminder { node_id, escalated_to } => {
            // Escalated: they may decide too, as the gate's card now says.
            if let Some(approvers) = memory.waiting.get_mut(node_id).and_then(|card| card.approvers.as_mut()) {
                approvers.extend(escalated_to.iter().filter(|p| !approvers.contains(p)).cloned().collect::<Vec<_>>());
            }
            let presentation = memory.waiting.get(node_id).cloned();
            let (topic, people) = if escalated_to.is_empty() {
                (Topic::GateReminder, presentation.as_ref().and_then(|p| p.approvers.clone()))
            } else {
                // Only the people it escalates to are new to it: they get the links.
                (Topic::GateEscalated, Some(escalated_to.clone()))
            };
            let may_not_approve = presentation.as_ref().map(|p| p.may_not_approve.clone()).unwrap_or_default();
            vec![Notice {
                topic,
                seq,
                key: format!("{seq}"),
                detail: json!({
                    "gate": { "node_id": node_id, "presentation": presentation },
                    "escalated_to": escalated_to,
                }),
                gate: Some(GateNotice { node_id: node_id.clone(), approvers: people, may_not_approve }),
            }]
        }
        ServerEventBody::GateResolved { node_id, decision, feedback, decided_by, decided_at, inputs } => {
            memory.waiting.remove(node_id);
            let topic = if decided_by == TIMEOUT_DECIDER { Topic::GateTimedOut } else { Topic::GateDecided };
            vec![Notice {
                topic,
                seq,
                key: format!("{seq}"),
                detail: json!({ "decision": {
                    "node_id": node_id, "decision": decision, "feedback": feedback,
                    "decided_by": decided_by, "decided_at": decided_at, "inputs": inputs,
                } }),
                gate: None,
            }]
        }
        ServerEventBody::CostUpdate { spent, budget, .. } => {
            let before = memory.cost.replace((*spent, *budget));
            if *budget <= 0.0 {
                return Vec::new();
            }
            [(0.8, Topic::Budget80), (1.0, Topic::Budget100)]
                .into_iter()
                .filter(|(share, _)| {
                    let line = share * budget;
                    // Unknown before (a restart): the key below keeps a crossing from being
                    // stored twice.
                    *spent >= line
                        && before.is_none_or(|(was, was_budget)| was < share * was_budget || was_budget != *budget)
                })
                .map(|(share, topic)| Notice {
                    topic,
                    seq,
                    // Once per budget: an approved budget gate raises the budget, and its 80 %
                    // is news again.
                    key: format!("{}-{budget}", topic.as_str()),
                    detail: json!({ "spend": { "spent": spent, "budget": budget, "share": share } }),
                    gate: None,
                })
                .collect()
        }
        ServerEventBody::RunStateChanged { state } => {
            let topic = match state {
                RunPhase::Completed => Topic::RunCompleted,
                RunPhase::Failed => Topic::RunFailed,
                RunPhase::Cancelled => Topic::RunCancelled,
                RunPhase::Running | RunPhase::Paused | RunPhase::Cancelling => return Vec::new(),
            };
            vec![Notice { topic, seq, key: topic.as_str().to_owned(), detail: json!({ "state": state }), gate: None }]
        }
        ServerEventBody::NodeState { .. }
        | ServerEventBody::EdgeActive { .. }
        | ServerEventBody::DagMutated { .. }
        | ServerEventBody::ExecutionComplete { .. }
        | ServerEventBody::Error { .. }
        | ServerEventBody::Snapshot { .. }
        | ServerEventBody::GateProgress { .. }
        | ServerEventBody::RunRepaired { .. }
        | ServerEventBody::NodeLog { .. } => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Decision, GatePresentation, NodeStatus};

    fn event(seq: Seq, body: ServerEventBody) -> ServerEvent {
        ServerEvent { seq, body }
    }

    fn cost(spent: f64, budget: f64) -> ServerEventBody {
        ServerEventBody::CostUpdate { spent, budget, remaining: budget - spent }
    }

    fn resolved(by: &str) -> ServerEventBody {
        ServerEventBody::GateResolved {
            node_id: "review".into(),
            decision: Decision::Approve,
            feedback: None,
            decided_by: by.into(),
            decided_at: "2026-12-07T10:00:00Z".into(),
            inputs: None,
        }
    }

    #[test]
    fn a_reminder_goes_to_the_approvers_and_an_escalation_to_whom_it_escalates() {
        let mut memory = RunMemory::default();
        let waiting = ServerEventBody::HumanGateWaiting {
            node_id: "review".into(),
            presentation: GatePresentation {
                title: "Ship?".into(),
                prompt: String::new(),
                options: vec![Decision::Approve],
                context: None,
                cost_so_far: None,
                timeout_at: None,
                approvers: Some(vec!["ana".into()]),
                approvals: None,
                may_not_approve: vec!["cy".into()],
                inputs: Vec::new(),
                forecast: None,
            },
        };
        notices(&mut memory, &event(2, waiting));
        let reminder = notices(
            &mut memory,
            &event(3, ServerEventBody::GateReminder { node_id: "review".into(), escalated_to: vec![] }),
        );
        assert_eq!(reminder.len(), 1);
        assert_eq!(reminder[0].topic, Topic::GateReminder);
        let gate = reminder[0].gate.as_ref().expect("links");
        assert_eq!(
            (gate.approvers.as_deref(), gate.may_not_approve.as_slice()),
            (Some(&["ana".to_owned()][..]), &["cy".to_owned()][..])
        );
        assert_eq!(reminder[0].detail["gate"]["presentation"]["title"], "Ship?", "the card again");

        let escalation = notices(
            &mut memory,
            &event(4, ServerEventBody::GateReminder { node_id: "review".into(), escalated_to: vec!["dan".into()] }),
        );
        assert_eq!(escalation[0].topic, Topic::GateEscalated);
        assert_eq!(escalation[0].gate.as_ref().and_then(|g| g.approvers.clone()), Some(vec!["dan".to_owned()]));
        // After it, reminders go to both.
        let later = notices(
            &mut memory,
            &event(5, ServerEventBody::GateReminder { node_id: "review".into(), escalated_to: vec![] }),
        );
        assert_eq!(
            later[0].gate.as_ref().and_then(|g| g.approvers.clone()),
            Some(vec!["ana".to_owned(), "dan".to_owned()])
        );
        assert_ne!(reminder[0].key, later[0].key, "each reminder is news");
    }

    #[test]
    fn each_event_raises_the_topics_it_should() {
        let waiting = ServerEventBody::HumanGateWaiting {
            node_id: "review".into(),
            presentation: GatePresentation {
                title: "Ship?".into(),
                prompt: "Check it".into(),
                options: vec![Decision::Approve, Decision::Reject],
                context: None,
                cost_so_far: Some(1.0),
                timeout_at: None,
                approvers: None,
                approvals: None,
                may_not_approve: Vec::new(),
                inputs: Vec::new(),
                forecast: None,
            },
        };
        let table: Vec<(ServerEventBody, &[Topic])> = vec![
            (waiting, &[Topic::GateWaiting]),
            (resolved("ana"), &[Topic::GateDecided]),
            (resolved(TIMEOUT_DECIDER), &[Topic::GateTimedOut]),
            (ServerEventBody::RunStateChanged { state: RunPhase::Completed }, &[Topic::RunCompleted]),
            (ServerEventBody::RunStateChanged { state: RunPhase::Failed }, &[Topic::RunFailed]),
            (ServerEventBody::RunStateChanged { state: RunPhase::Cancelled }, &[Topic::RunCancelled]),
            (ServerEventBody::RunStateChanged { state: RunPhase::Paused }, &[]),
            (ServerEventBody::RunStateChanged { state: RunPhase::Running }, &[]),
            (
                ServerEventBody::NodeState {
                    node_id: "a".into(),
                    status: NodeStatus::Completed,
                    output: None,
                    metrics: None,
                },
                &[],
            ),
        ];
        for (body, expected) in table {
            let topics: Vec<Topic> =
                notices(&mut RunMemory::default(), &event(7, body.clone())).into_iter().map(|n| n.topic).collect();
            assert_eq!(topics, expected, "{body:?}");
        }
    }

    #[test]
    fn spend_notifies_once_at_80_and_once_at_100_percent_of_each_budget() {
        let mut memory = RunMemory::default();
        // (spent, budget) in order, and the topics each raises.
        let table: &[((f64, f64), &[Topic])] = &[
            ((0.0, 10.0), &[]),
            ((5.0, 10.0), &[]),
            ((8.0, 10.0), &[Topic::Budget80]),
            ((9.0, 10.0), &[]),
            ((10.0, 10.0), &[Topic::Budget100]),
            ((10.5, 10.0), &[]),
            // A budget gate approved: the budget grows, and its lines are news again.
            ((10.5, 20.0), &[]),
            ((16.0, 20.0), &[Topic::Budget80]),
            ((25.0, 20.0), &[Topic::Budget100]),
        ];
        for (i, ((spent, budget), expected)) in table.iter().enumerate() {
            let topics: Vec<Topic> = notices(&mut memory, &event(i as Seq + 1, cost(*spent, *budget)))
                .into_iter()
                .map(|n| n.topic)
                .collect();
            assert_eq!(&topics, expected, "spent {spent} of {budget}");
        }
    }

    #[test]
    fn no_budget_no_spend_notices_and_a_jump_raises_both() {
        assert!(notices(&mut RunMemory::default(), &event(1, cost(5.0, 0.0))).is_empty());
        let mut memory = RunMemory { cost: Some((1.0, 10.0)), ..RunMemory::default() };
        let topics: Vec<Topic> =
            notices(&mut memory, &event(2, cost(12.0, 10.0))).into_iter().map(|n| n.topic).collect();
        assert_eq!(topics, [Topic::Budget80, Topic::Budget100]);
    }

    #[test]
    fn the_same_notice_has_the_same_key_after_a_restart() {
        let mut first = RunMemory { cost: Some((7.0, 10.0)), ..RunMemory::default() };
        let mut after_restart = RunMemory::default();
        let a = notices(&mut first, &event(5, cost(8.5, 10.0)));
        let b = notices(&mut after_restart, &event(9, cost(9.0, 10.0)));
        assert_eq!(a.iter().map(|n| &n.key).collect::<Vec<_>>(), b.iter().map(|n| &n.key).collect::<Vec<_>>());
    }
}
