//! The example DAG specs bundled with dagstream (`examples/*.toml`), by name. The names are on
//! both targets (the dashboard offers them); the spec texts only on the server, which parses and
//! runs them, so they do not weigh on the wasm.

/// Names of the bundled examples, in the order the dashboard offers them.
pub const NAMES: &[&str] = &["demo", "agent-pipeline", "ci-pipeline", "planner"];

/// Name and TOML text of every bundled example, in the order of [`NAMES`].
#[cfg(feature = "ssr")]
pub const EXAMPLES: &[(&str, &str)] = &[
    ("demo", include_str!("../examples/demo.toml")),
    ("agent-pipeline", include_str!("../examples/agent-pipeline.toml")),
    ("ci-pipeline", include_str!("../examples/ci-pipeline.toml")),
    ("planner", include_str!("../examples/planner.toml")),
];

/// Names of the bundled examples.
pub fn names() -> impl Iterator<Item = &'static str> {
    NAMES.iter().copied()
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    #[test]
    fn names_and_texts_list_the_same_examples() {
        let texts: Vec<&str> = super::EXAMPLES.iter().map(|(name, _)| *name).collect();
        assert_eq!(texts, super::NAMES);
    }
}
