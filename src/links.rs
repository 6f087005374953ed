//! Approval links: each notification of a waiting gate carries one link per person who may
//! decide it, `/gates/{token}`, so they can decide from where the message reached them, without
//! signing in first.
//!
//! - **The token is the credential.** 32 random bytes; only its SHA-256 is kept (`gate_links`
//!   in the store), bound to one gate wait (the `seq` of its `human_gate_waiting`) and one person,
//!   whose name signs the decision.
//! - **Opening decides nothing.** Mail scanners and chat previews open links: the page only shows
//!   the gate card; the person presses Approve, Reject or sends feedback.
//! - **Usable once, and only while the gate waits.** The store marks a link used with one
//!   conditional update, so of two presses one wins; a decision the run refuses gives the link
//!   back. A link expires when its wait ends (a decision by anyone, the timeout, the run's end),
//!   which [`standing`] reads from the run's state: the rule is pure, with table tests below.

use crate::protocol::{Decision, NodeStatus, RunState};
use crate::server::auth::{hash_secret, new_secret};
use crate::store::GateLinkRow;

/// Who the users are, as gates need to know: who may decide, and who is in which group.
pub trait Directory: Send + Sync {
    /// Names of everyone whose role may decide a gate.
    fn who_may_decide(&self) -> Vec<String>;
    /// The members of a group of the users file; `None` for a group nobody is in.
    fn members(&self, group: &str) -> Option<Vec<String>>;
}

/// A link just made: the person, and the token only their message carries.
#[derive(Clone, Debug, PartialEq)]
pub struct NewLink {
    pub person: String,
    pub token: String,
}

/// One new link per person for the wait of gate `node_id` that event `waiting_seq` opened: what
/// the messages carry, and what the store keeps.
pub fn make(
    dag_id: &str,
    node_id: &str,
    waiting_seq: i64,
    people: &[String],
    now_ms: i64,
) -> (Vec<NewLink>, Vec<GateLinkRow>) {
    people
        .iter()
        .map(|person| {
            let token = new_secret();
            let row = GateLinkRow {
                token_sha256: hash_secret(&token),
                dag_id: dag_id.to_owned(),
                node_id: node_id.to_owned(),
                waiting_seq,
                person: person.clone(),
                created_at: now_ms,
                used_at: None,
            };
            (NewLink { person: person.clone(), token }, row)
        })
        .unzip()
}

/// The address of a link's page.
pub fn url(public_url: &str, token: &str) -> String {
    format!("{}/gates/{token}", public_url.trim_end_matches('/'))
}

/// Where a link stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Standing {
    /// Its gate waits, in the wait the link was made for, and the link was not used.
    Open,
    /// It was used already (by its person: a link is one person's).
    Used,
    /// Its wait ended with a decision: by whom (`timeout` when the gate timed out), what.
    Decided { by: String, decision: Decision },
    /// Its gate no longer waits and was not decided: the run was cancelled or ended.
    Closed,
}

/// Where `link` stands in the run whose state is `state` (folded up to now).
pub fn standing(link: &GateLinkRow, state: &RunState) -> Standing {
    if link.used_at.is_some() {
        return Standing::Used;
    }
    let waiting_seq = u64::try_from(link.waiting_seq).unwrap_or(0);
    let decided = state.decisions.iter().find(|d| d.node_id == link.node_id && d.seq > waiting_seq);
    if let Some(decision) = decided {
        return Standing::Decided { by: decision.decided_by.clone(), decision: decision.decision };
    }
    match state.nodes.get(&link.node_id) {
        Some(node) if node.status == NodeStatus::Waiting && node.gate.is_some() => Standing::Open,
        Some(_) | None => Standing::Closed,
    }
}

impl Standing {
    /// Why a link that is not open cannot decide, for the person who holds it.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Standing::Open => None,
            Standing::Used => Some("This link was already used: each approval link decides once.".into()),
            Standing::Decided { by, decision } if by == crate::protocol::TIMEOUT_DECIDER => {
                Some(format!("This gate timed out ({}): the link has expired.", decision.as_str()))
            }
            Standing::Decided { by, decision } => {
                Some(format!("This gate was already decided by {by} ({}): the link has expired.", decision.as_str()))
            }
            Standing::Closed => {
                Some("This gate no longer waits (the run was cancelled or ended): the link has expired.".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{GatePresentation, GraphNode, NodeKind, ServerEvent, ServerEventBody};

    fn link(used: bool) -> GateLinkRow {
        GateLinkRow {
            token_sha256: "x".into(),
            dag_id: "r".into(),
            node_id: "review".into(),
            waiting_seq: 2,
            person: "ana".into(),
            created_at: 0,
            used_at: used.then_some(5),
        }
    }

    /// A run whose gate `review` started waiting at seq 2, then had `later` events.
    fn run(later: &[ServerEventBody]) -> RunState {
        let node = GraphNode { id: "review".into(), label: "Review".into(), kind: NodeKind::Gate };
        let mut state = RunState::new("r", "n", "2026-12-07T00:00:00Z", 0.0, [(node, Vec::new())]);
        for (seq, body) in waiting_events().into_iter().chain(later.iter().cloned()).enumerate() {
            state.apply(&ServerEvent { seq: seq as u64 + 1, body });
        }
        state
    }

    /// The gate starts waiting, then shows its card.
    fn waiting_events() -> [ServerEventBody; 2] {
        let card = ServerEventBody::HumanGateWaiting {
            node_id: "review".into(),
            presentation: GatePresentation {
                title: "Ship?".into(),
                prompt: "p".into(),
                options: vec![Decision::Approve, Decision::Reject],
                context: None,
                cost_so_far: None,
                timeout_at: None,
                approvers: None,
                approvals: None,
                may_not_approve: Vec::new(),
                inputs: Vec::new(),
                forecast: None,
            },
        };
        let waiting = ServerEventBody::NodeState {
            node_id: "review".into(),
            status: NodeStatus::Waiting,
            output: None,
            metrics: None,
        };
        [waiting, card]
    }

    fn resolved(by: &str) -> ServerEventBody {
        ServerEventBody::GateResolved {
            node_id: "review".into(),
            decision: Decision::Approve,
            feedback: None,
            decided_by: by.into(),
            decided_at: "t".into(),
            inputs: None,
        }
    }

    fn cancelled() -> ServerEventBody {
        ServerEventBody::NodeState {
            node_id: "review".into(),
            status: NodeStatus::Cancelled,
            output: None,
            metrics: None,
        }
    }

    #[test]
    fn a_link_is_open_only_while_its_wait_lasts_and_it_is_unused() {
        let table: [(&str, bool, Vec<ServerEventBody>, Standing); 5] = [
            ("waiting, unused", false, vec![], Standing::Open),
            ("waiting, used", true, vec![], Standing::Used),
            (
                "decided by bo",
                false,
                vec![resolved("bo")],
                Standing::Decided { by: "bo".into(), decision: Decision::Approve },
            ),
            (
                "timed out",
                false,
                vec![resolved("timeout")],
                Standing::Decided { by: "timeout".into(), decision: Decision::Approve },
            ),
            ("cancelled", false, vec![cancelled()], Standing::Closed),
        ];
        for (case, used, later, expected) in table {
            assert_eq!(standing(&link(used), &run(&later)), expected, "{case}");
        }
    }

    #[test]
    fn a_link_of_an_earlier_wait_has_expired_when_the_gate_waits_again() {
        // Sent back with modify at seq 3; the gate waits again from seq 6.
        let pending = ServerEventBody::NodeState {
            node_id: "review".into(),
            status: NodeStatus::Pending,
            output: None,
            metrics: None,
        };
        let [waiting, card] = waiting_events();
        let state = run(&[resolved("bo"), pending, waiting, card]);
        assert!(matches!(standing(&link(false), &state), Standing::Decided { .. }), "the first wait's link");
        let mut again = link(false);
        again.waiting_seq = 6;
        assert_eq!(standing(&again, &state), Standing::Open, "the new wait's link");
        // A link of a gate this run does not have.
        let mut other = link(false);
        other.node_id = "deploy".into();
        assert_eq!(standing(&other, &run(&[])), Standing::Closed);
    }

    #[test]
    fn every_refusal_says_why() {
        assert_eq!(Standing::Open.refusal(), None);
        let timed_out = Standing::Decided { by: "timeout".into(), decision: Decision::Reject }.refusal();
        assert!(timed_out.is_some_and(|t| t.contains("timed out (reject)")));
        let decided = Standing::Decided { by: "bo".into(), decision: Decision::Approve }.refusal();
        assert!(decided.is_some_and(|t| t.contains("decided by bo (approve)")));
        assert!(Standing::Used.refusal().is_some_and(|t| t.contains("already used")));
    }
}
