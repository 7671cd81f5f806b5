//! Evaluating SAEs: reconstruction and sparsity over activation rows, and
//! the model's loss with the SAE spliced in.

pub mod reconstruction;
pub mod sae_eval;

pub use reconstruction::{evaluate_rows, ReconstructionMetrics, ReconstructionStats};
pub use sae_eval::{evaluate_sae, EvalObserver, SaeEvalConfig, SaeEvalReport};
