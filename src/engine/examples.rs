//! Parsing of the bundled examples ([`crate::examples`]), startable by name from the dashboard or
//! with `POST /api/dags?example=NAME`.

use super::spec::{DagSpec, SpecError, SpecFormat};
pub use crate::examples::{EXAMPLES, names};

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
