//! Runs DAGs: specs and their validation, the pure scheduler and run rules (`schedule`,
//! `policy`), the per-run coordinator task, node tasks (simulated work and shell commands), and
//! the bundled example DAGs.
//!
//! Events leave the engine only through a run's [`Room`](crate::hub::Room); client commands
//! arrive through a [`RunHandle`].

pub mod forecast;
pub mod node;
pub mod policy;
pub mod process;
pub mod remote;
pub mod run;
pub mod schedule;
pub mod spec;

pub use policy::Rejected;
pub use run::{EngineConfig, RunHandle};
pub use spec::{DagSpec, NodeSpec, NodeWork, SpecError, SpecFormat};
