//! The example DAG specs bundled with dagstream (`examples/*.toml`), by name: startable from the
//! dashboard or with `POST /api/dags?example=NAME`. The names are on both targets (the
//! dashboard offers them); the spec texts only on the server, which parses and runs them, so
//! they do not weigh on the wasm.

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

/// The bundled example called `name`: `None` if there is none, else its parsed spec.
#[cfg(feature = "ssr")]
pub fn by_name(name: &str) -> Option<Result<crate::engine::DagSpec, crate::engine::SpecError>> {
    use crate::engine::{DagSpec, SpecFormat};
    EXAMPLES.iter().find(|(n, _)| *n == name).map(|(_, text)| DagSpec::parse(text, SpecFormat::Toml))
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    #[test]
    fn names_and_texts_list_the_same_examples() {
        let texts: Vec<&str> = super::EXAMPLES.iter().map(|(name, _)| *name).collect();
        assert_eq!(texts, super::NAMES);
    }

    #[test]
    fn every_bundled_example_is_valid() {
        for name in super::names() {
            let parsed = super::by_name(name).expect("listed examples exist");
            assert!(parsed.is_ok(), "{name}: {parsed:?}");
        }
    }
}
