//! The example DAGs bundled with the server (`examples/*.toml`), startable by name from the
//! dashboard or with `POST /api/dags?example=NAME`.

use super::spec::{DagSpec, SpecError, SpecFormat};

/// Name and TOML text of every bundled example, in the order the dashboard offers them.
pub const EXAMPLES: &[(&str, &str)] = &[("demo", include_str!("../../examples/demo.toml"))];

/// Names of the bundled examples.
pub fn names() -> impl Iterator<Item = &'static str> {
    EXAMPLES.iter().map(|(name, _)| *name)
}

/// The bundled example called `name`: `None` if there is none, else its parsed spec.
pub fn by_name(name: &str) -> Option<Result<DagSpec, SpecError>> {
    EXAMPLES.iter().find(|(n, _)| *n == name).map(|(_, text)| DagSpec::parse(text, SpecFormat::Toml))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_bundled_example_is_valid() {
        for name in super::names() {
            let parsed = super::by_name(name).expect("listed examples exist");
            assert!(parsed.is_ok(), "{name}: {parsed:?}");
        }
    }
}
