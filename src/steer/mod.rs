//! Interventions that steer a model, the objective that learns them, and
//! their evaluation: activation scaling and DynScalar (Stoehr et al. 2024),
//! steering vectors, SAE-feature edits; tasks of prompt/target/foil.

pub mod dyn_scalar;
pub mod evaluate;
pub mod learn;
pub mod objective;
pub mod sae_features;
pub mod sae_runtime;
pub mod sae_select;
pub mod scaling;
pub mod spec;
#[allow(clippy::module_inception)]
pub mod steer;
pub mod task;
pub mod vector;

pub use evaluate::{evaluate_steers, SteerReport};
pub use learn::{learn, LearnConfig};
pub use spec::{load_steer_files, load_steers, save_steers, SteerFile, SteerSpec};
pub use steer::{steer_hooks, Steer};
pub use task::Task;
