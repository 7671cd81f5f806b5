//! Feature labels: mutual-information explanations over a fixed vocabulary
//! (Wu et al. 2025), the frequency-biased baselines beside them (logit lens,
//! top-activating tokens), corpus statistics from one streaming pass, and the
//! feature dictionary export (JSONL + static HTML browser).
//!
//! - `stats/`: corpus statistics, MI explanations, diversity, logit lens;
//! - `export/`: the JSONL dictionary and the browser;
//! - `build.rs` runs the pass; `checkpoint.rs` makes it resumable.
//!
//! May import `io`, `model`, `hooks`, `data`, `sae`, `plots`.

pub mod build;
pub mod checkpoint;
pub mod export;
pub mod llm;
pub mod stats;
pub mod vocabulary;

pub use build::{
    build_dictionary, ActivationInput, BuiltDictionary, LabelConfig, LabelInputs, LabelProgress,
};
pub use checkpoint::CheckpointConfig;
pub use export::dictionary::{Dictionary, DictionaryMeta, FeatureEntry};
pub use export::save_dictionary;
pub use stats::mi::{Directions, MiConfig};
pub use stats::StatsConfig;
pub use vocabulary::{Vocabulary, VocabularyConfig};
