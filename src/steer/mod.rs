//! Interventions that steer a model, the objective that learns them, and
//! their evaluation: activation scaling and DynScalar (Stoehr et al. 2024),
//! steering vectors, SAE-feature edits; tasks of prompt/target/foil.
//!
//! - `steer.rs`: the [`Steer`] trait every kind implements;
//! - `spec.rs`: the on-disk types; `file.rs`: loading and saving them;
//! - `kinds/`: one file per kind; `learn/`: tasks, objective and the optimiser;
//! - `evaluate.rs`: effectiveness, faithfulness and minimality.
//!
//! May import `io`, `model`, `hooks`, `sae`, `train::adam`.

pub mod build;
pub mod evaluate;
pub mod file;
pub mod kinds;
pub mod learn;
pub mod spec;
#[allow(clippy::module_inception)]
pub mod steer;

pub use evaluate::{evaluate_steers, SteerReport};
pub use file::{load_steer_files, load_steers, save_steers};
pub use learn::task::Task;
pub use learn::{learn, LearnConfig};
pub use spec::{SteerFile, SteerSpec};
pub use steer::{steer_hooks, Steer};
