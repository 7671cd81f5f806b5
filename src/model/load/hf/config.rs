//! Reads a Hugging Face `config.json` into a [`ModelConfig`]. Supported
//! `model_type`s: `gpt2`, `llama`, `mistral`, `qwen2`, `gpt_neox`. Both the
//! transformers 4 keys (`rope_theta`, `rope_scaling`, `rotary_pct`) and the
//! transformers 5 `rope_parameters` object are understood.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::{Activation, Llama3RopeScaling, ModelConfig, NormKind, PositionKind};

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
    match model_type {
        "gpt2" => gpt2(json),
        "llama" | "mistral" | "qwen2" => llama_family(json, model_type),
        "gpt_neox" => gpt_neox(json),
        other => Err(Error::UnknownArchitecture(other.to_string())),
    }
}

fn int(json: &Value, key: &str) -> Result<i64> {
    json.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::Config(format!("config.json: missing integer `{key}`")))
}

fn int_or(json: &Value, key: &str, default: i64) -> i64 {
    json.get(key).and_then(Value::as_i64).unwrap_or(default)
}

fn float_or(json: &Value, key: &str, default: f64) -> f64 {
    json.get(key).and_then(Value::as_f64).unwrap_or(default)
}

fn bool_or(json: &Value, key: &str, default: bool) -> bool {
    json.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn layers(json: &Value, key: &str) -> Result<usize> {
    usize::try_from(int(json, key)?).map_err(|_| Error::Config(format!("`{key}` is negative")))
}

/// `eos_token_id` may be a number or a list of numbers.
fn eos_ids(json: &Value) -> Vec<i64> {
    match json.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

/// The rope section: transformers 5 nests it in `rope_parameters`.
fn rope_section(json: &Value) -> &Value {
    json.get("rope_parameters")
        .filter(|v| v.is_object())
        .or_else(|| json.get("rope_scaling").filter(|v| v.is_object()))
        .unwrap_or(json)
}

fn rope_theta(json: &Value, default: f64) -> f64 {
    let section = rope_section(json);
    section
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| json.get("rope_theta").and_then(Value::as_f64))
        .unwrap_or(default)
}

fn llama3_scaling(json: &Value) -> Result<Option<Llama3RopeScaling>> {
    let section = rope_section(json);
    let kind = section
        .get("rope_type")
        .or_else(|| section.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => Ok(Some(Llama3RopeScaling {
            factor: float_or(section, "factor", 8.0),
            low_freq_factor: float_or(section, "low_freq_factor", 1.0),
            high_freq_factor: float_or(section, "high_freq_factor", 4.0),
            original_max_position_embeddings: float_or(
                section,
                "original_max_position_embeddings",
                8192.0,
            ),
        })),
        other => Err(Error::Config(format!("unsupported rope_type `{other}`"))),
    }
}

fn gpt2(json: &Value) -> Result<ModelConfig> {
    let d_model = int(json, "n_embd")?;
    let n_heads = int(json, "n_head")?;
    let activation = match json.get("activation_function").and_then(Value::as_str) {
        None | Some("gelu_new") | Some("gelu_pytorch_tanh") => Activation::GeluTanh,
        Some("gelu") => Activation::Gelu,
        Some(other) => {
            return Err(Error::Config(format!(
                "unsupported GPT-2 activation `{other}`"
            )))
        }
    };
    Ok(ModelConfig {
        architecture: "gpt2".into(),
        vocab_size: int(json, "vocab_size")?,
        d_model,
        n_layers: layers(json, "n_layer")?,
        n_heads,
        n_kv_heads: n_heads,
        d_head: d_model / n_heads.max(1),
        d_mlp: json
            .get("n_inner")
            .and_then(Value::as_i64)
            .unwrap_or(4 * d_model),
        norm: NormKind::LayerNorm,
        norm_eps: float_or(json, "layer_norm_epsilon", 1e-5),
        activation,
        gated_mlp: false,
        positions: PositionKind::Learned,
        parallel_residual: false,
        qkv_bias: true,
        attn_out_bias: true,
        mlp_bias: true,
        tied_embeddings: bool_or(json, "tie_word_embeddings", true),
        max_context: int(json, "n_positions")?,
        bos_token_id: json.get("bos_token_id").and_then(Value::as_i64),
        eos_token_ids: eos_ids(json),
    })
}

fn llama_family(json: &Value, model_type: &str) -> Result<ModelConfig> {
    let d_model = int(json, "hidden_size")?;
    let n_heads = int(json, "num_attention_heads")?;
    let d_head = json
        .get("head_dim")
        .and_then(Value::as_i64)
        .unwrap_or(d_model / n_heads.max(1));
    match json.get("hidden_act").and_then(Value::as_str) {
        None | Some("silu") => {}
        Some(other) => return Err(Error::Config(format!("unsupported activation `{other}`"))),
    }
    let qkv_bias = model_type == "qwen2" || bool_or(json, "attention_bias", false);
    Ok(ModelConfig {
        architecture: model_type.into(),
        vocab_size: int(json, "vocab_size")?,
        d_model,
        n_layers: layers(json, "num_hidden_layers")?,
        n_heads,
        n_kv_heads: int_or(json, "num_key_value_heads", n_heads),
        d_head,
        d_mlp: int(json, "intermediate_size")?,
        norm: NormKind::RmsNorm,
        norm_eps: float_or(json, "rms_norm_eps", 1e-6),
        activation: Activation::Silu,
        gated_mlp: true,
        positions: PositionKind::Rotary {
            base: rope_theta(json, 10_000.0),
            rotary_dim: d_head,
            llama3_scaling: llama3_scaling(json)?,
        },
        parallel_residual: false,
        qkv_bias,
        attn_out_bias: model_type == "llama" && bool_or(json, "attention_bias", false),
        mlp_bias: bool_or(json, "mlp_bias", false),
        tied_embeddings: bool_or(json, "tie_word_embeddings", false),
        max_context: int_or(json, "max_position_embeddings", 4096),
        bos_token_id: json.get("bos_token_id").and_then(Value::as_i64),
        eos_token_ids: eos_ids(json),
    })
}

fn gpt_neox(json: &Value) -> Result<ModelConfig> {
    let d_model = int(json, "hidden_size")?;
    let n_heads = int(json, "num_attention_heads")?;
    let d_head = d_model / n_heads.max(1);
    let section = rope_section(json);
    let rotary_fraction = section
        .get("partial_rotary_factor")
        .and_then(Value::as_f64)
        .or_else(|| json.get("partial_rotary_factor").and_then(Value::as_f64))
        .or_else(|| json.get("rotary_pct").and_then(Value::as_f64))
        .unwrap_or(1.0);
    let base = section
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| json.get("rotary_emb_base").and_then(Value::as_f64))
        .unwrap_or(10_000.0);
    let activation = match json.get("hidden_act").and_then(Value::as_str) {
        None | Some("gelu") => Activation::Gelu,
        Some("gelu_new") | Some("gelu_fast") | Some("gelu_pytorch_tanh") => Activation::GeluTanh,
        Some(other) => return Err(Error::Config(format!("unsupported activation `{other}`"))),
    };
    let bias = bool_or(json, "attention_bias", true);
    Ok(ModelConfig {
        architecture: "gpt_neox".into(),
        vocab_size: int(json, "vocab_size")?,
        d_model,
        n_layers: layers(json, "num_hidden_layers")?,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: int(json, "intermediate_size")?,
        norm: NormKind::LayerNorm,
        norm_eps: float_or(json, "layer_norm_eps", 1e-5),
        activation,
        gated_mlp: false,
        positions: PositionKind::Rotary {
            base,
            rotary_dim: (d_head as f64 * rotary_fraction) as i64,
            llama3_scaling: None,
        },
        parallel_residual: bool_or(json, "use_parallel_residual", true),
        qkv_bias: bias,
        attn_out_bias: bias,
        mlp_bias: true,
        tied_embeddings: bool_or(json, "tie_word_embeddings", false),
        max_context: int_or(json, "max_position_embeddings", 2048),
        bos_token_id: json.get("bos_token_id").and_then(Value::as_i64),
        eos_token_ids: eos_ids(json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_model_type_is_named() {
        let err = parse_hf_config(&json!({"model_type": "mamba"})).unwrap_err();
        assert!(
            matches!(err, Error::UnknownArchitecture(ref a) if a == "mamba"),
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
