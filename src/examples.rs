//! The example DAG specs bundled with dagstream (`examples/*.toml`), by name. Both targets: the
//! dashboard offers them by name, the engine parses and runs them.

/// Name and TOML text of every bundled example, in the order the dashboard offers them.
pub const EXAMPLES: &[(&str, &str)] = &[
    ("demo", include_str!("../examples/demo.toml")),
    ("agent-pipeline", include_str!("../examples/agent-pipeline.toml")),
    ("ci-pipeline", include_str!("../examples/ci-pipeline.toml")),
    ("planner", include_str!("../examples/planner.toml")),
];

/// Names of the bundled examples.
pub fn names() -> impl Iterator<Item = &'static str> {
    EXAMPLES.iter().map(|(name, _)| *name)
}
