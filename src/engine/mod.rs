//! Runs DAGs: specs and their validation, the pure scheduler, the per-run coordinator task, and
//! the bundled example DAGs.
//!
//! Events leave the engine only through a run's [`Room`](crate::hub::Room); client commands
//! arrive through a [`RunHandle`].

pub mod examples;
pub mod run;
pub mod schedule;
pub mod spec;

pub use run::{Rejected, RunHandle};
pub use spec::{DagSpec, NodeSpec, NodeWork, SpecError};

/// The current time as RFC 3339 with milliseconds, as every timestamp on the wire.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
