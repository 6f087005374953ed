//! The example DAGs bundled with the server, startable by name (`POST /api/dags?example=NAME`).

use std::time::Duration;

use super::spec::{DagSpec, NodeSpec, NodeWork};
use crate::protocol::Decision;

/// Names of the bundled examples, in the order the dashboard offers them.
pub const NAMES: &[&str] = &["demo"];

/// The bundled example called `name`.
pub fn by_name(name: &str) -> Option<DagSpec> {
    match name {
        "demo" => Some(demo()),
        _ => None,
    }
}

/// A research-and-publish pipeline: two parallel research steps fan in to an outline, a human
/// reviews it, two drafts run in parallel and fan in to the final assembly.
pub fn demo() -> DagSpec {
    let sim = |id: &str, label: &str, needs: &[&str], millis: u64, cost: f64| NodeSpec {
        id: id.into(),
        label: Some(label.into()),
        needs: needs.iter().map(|n| n.to_string()).collect(),
        work: NodeWork::Simulate { duration: Duration::from_millis(millis), cost },
    };
    DagSpec {
        name: "demo".into(),
        budget: 2.0,
        max_parallel: 2,
        nodes: vec![
            sim("research_web", "Research the web", &[], 1200, 0.08),
            sim("research_papers", "Research papers", &[], 1600, 0.12),
            sim("outline", "Outline", &["research_web", "research_papers"], 1000, 0.05),
            NodeSpec {
                id: "review".into(),
                label: Some("Review outline".into()),
                needs: vec!["outline".into()],
                work: NodeWork::Gate {
                    title: "Approve the outline?".into(),
                    prompt: "The outline is ready. Approve to start drafting; reject to stop the run.".into(),
                    options: vec![Decision::Approve, Decision::Reject],
                },
            },
            sim("draft_intro", "Draft introduction", &["review"], 1500, 0.21),
            sim("draft_body", "Draft body", &["review"], 2000, 0.34),
            sim("assemble", "Assemble article", &["draft_intro", "draft_body"], 800, 0.04),
            sim("publish", "Publish", &["assemble"], 500, 0.01),
        ],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_bundled_example_is_valid() {
        for name in super::NAMES {
            let spec = super::by_name(name).expect("listed examples exist");
            assert_eq!(spec.validate(), Ok(()), "{name}");
        }
    }
}
