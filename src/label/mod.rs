//! Feature labels: mutual-information explanations over a fixed vocabulary
//! (Wu et al. 2025), the frequency-biased baselines beside them (logit lens,
//! top-activating tokens), corpus statistics from one streaming pass, and the
//! feature dictionary export (JSONL + static HTML browser).

pub mod browser;
pub mod build;
pub mod checkpoint;
pub mod dictionary;
pub mod diversity;
pub mod llm;
pub mod logit_lens;
pub mod mi;
pub mod stats;
pub mod vocabulary;

pub use build::{
    build_dictionary, ActivationInput, BuiltDictionary, LabelConfig, LabelInputs, LabelProgress,
};
pub use checkpoint::CheckpointConfig;
pub use dictionary::{save_dictionary, Dictionary, DictionaryMeta, FeatureEntry};
pub use mi::{Directions, MiConfig};
pub use stats::StatsConfig;
pub use vocabulary::{Vocabulary, VocabularyConfig};
