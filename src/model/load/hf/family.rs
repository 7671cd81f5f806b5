//! What a model family provides to the registry in `hf/mod.rs`: the HF
//! `model_type`s it covers, its `config.json` mapping, and its weight
//! mapping into the canonical layout.

use serde_json::Value;

use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::model::weights::{ModelWeights, TensorBag};

pub struct Family {
    /// The `model_type`s of `config.json` this family reads.
    pub model_types: &'static [&'static str],
    /// `config.json` (already parsed) and its `model_type` to a config.
    pub config: fn(&Value, &str) -> Result<ModelConfig>,
    /// HF-named tensors to the canonical weights (validated by the caller).
    pub convert: fn(&ModelConfig, &mut TensorBag) -> Result<ModelWeights>,
}
