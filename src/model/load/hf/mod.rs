//! Hugging Face checkpoints: `config.json` mapped to a [`ModelConfig`] and
//! safetensors weights renamed into the canonical [`ModelWeights`]. One
//! module per family holds both of its mappings; [`FAMILIES`] is the one
//! list of them, so a new family is its own file and one line here.

mod family;
pub mod gpt2;
pub mod gpt_neox;
mod json;
pub mod llama;
mod tensors;

use std::path::Path;

use serde_json::Value;

pub use family::Family;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::weights::{ModelWeights, TensorBag};

/// Every supported family.
pub const FAMILIES: [&Family; 3] = [&gpt2::FAMILY, &llama::FAMILY, &gpt_neox::FAMILY];

/// Every `model_type` some family reads, comma-separated.
pub fn supported_model_types() -> String {
    FAMILIES
        .iter()
        .flat_map(|f| f.model_types.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The family that reads `model_type`.
pub fn family(model_type: &str) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_types.contains(&model_type))
        .ok_or_else(|| Error::UnknownArchitecture {
            name: model_type.to_string(),
            supported: supported_model_types(),
        })
}

/// Parses `config.json` at `path`.
pub fn read_hf_config(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::malformed(path, format!("not valid JSON: {e}")))?;
    let config = parse_hf_config(&json)?;
    config.validate()?;
    Ok(config)
}

/// Parses an already-decoded `config.json`.
pub fn parse_hf_config(json: &Value) -> Result<ModelConfig> {
    let model_type = json
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Config("config.json has no `model_type`".into()))?;
    (family(model_type)?.config)(json, model_type)
}

/// Builds the canonical weights from a bag of HF-named tensors.
pub fn convert_hf(cfg: &ModelConfig, bag: &mut TensorBag) -> Result<ModelWeights> {
    let weights = (family(&cfg.architecture)?.convert)(cfg, bag)?;
    weights.validate(cfg)?;
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::PositionKind;
    use serde_json::json;

    #[test]
    fn unknown_model_type_is_named() {
        let err = parse_hf_config(&json!({"model_type": "mamba"})).unwrap_err();
        assert!(
            matches!(err, Error::UnknownArchitecture { ref name, .. } if name == "mamba"),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse_hf_config(&json!({"model_type": "llama", "hidden_size": 64})).unwrap_err();
        assert!(err.to_string().contains("num_attention_heads"), "{err}");
    }

    #[test]
    fn transformers5_rope_parameters_and_partial_rotary() {
        let cfg = parse_hf_config(&json!({
            "model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 256, "vocab_size": 512,
            "rope_parameters": {"rope_theta": 500.0, "partial_rotary_factor": 0.25, "rope_type": "default"}
        }))
        .unwrap();
        assert_eq!(
            cfg.positions,
            PositionKind::Rotary {
                base: 500.0,
                rotary_dim: 4,
                llama3_scaling: None
            }
        );
        assert!(cfg.parallel_residual);
    }

    #[test]
    fn qwen2_has_qkv_bias_and_gqa() {
        let cfg = parse_hf_config(&json!({
            "model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 128,
            "vocab_size": 512, "tie_word_embeddings": true
        }))
        .unwrap();
        assert!(cfg.qkv_bias && !cfg.attn_out_bias && cfg.tied_embeddings);
        assert_eq!((cfg.n_heads, cfg.n_kv_heads, cfg.d_head), (4, 2, 16));
    }
}
