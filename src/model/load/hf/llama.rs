//! The Llama family (`llama`, `mistral`, `qwen2`): RMSNorm, SwiGLU, rotary
//! positions (with Llama 3 scaling), grouped-query attention; Qwen2 adds
//! query/key/value biases.

use serde_json::Value;
use tch::Tensor;

use super::family::Family;
use super::json::*;
use super::tensors::*;
use crate::error::{Error, Result};
use crate::model::config::{Activation, ModelConfig, NormKind, PositionKind};
use crate::model::weights::{BlockWeights, ModelWeights, TensorBag};

pub const FAMILY: Family = Family {
    model_types: &["llama", "mistral", "qwen2"],
    config,
    convert,
};

fn config(json: &Value, model_type: &str) -> Result<ModelConfig> {
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

fn convert(cfg: &ModelConfig, bag: &mut TensorBag) -> Result<ModelWeights> {
    let embed = embedding(cfg, bag, "model.embed_tokens.weight")?;
    let d = cfg.d_model;
    let (q_rows, kv_rows) = (cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head);
    // Not sized by `n_layers`: a crafted header could ask for any number;
    // the blocks' tensors, which the file must hold, bound it instead.
    let mut blocks = Vec::new();
    for i in 0..cfg.n_layers {
        let l = format!("model.layers.{i}");
        // Every projection `[out, in]` and its bias `[out]`, checked before `cat`.
        let proj = |bag: &mut TensorBag, n: &str, shape: [i64; 2]| {
            bag.take_shaped(&format!("{l}.{n}.weight"), &shape)
        };
        let proj_bias = |bag: &mut TensorBag, n: &str, on: bool, rows: i64| {
            bag.take_shaped_if(on, &format!("{l}.{n}.bias"), &[rows])
        };
        let (q, k, v) = (
            proj(bag, "self_attn.q_proj", [q_rows, d])?,
            proj(bag, "self_attn.k_proj", [kv_rows, d])?,
            proj(bag, "self_attn.v_proj", [kv_rows, d])?,
        );
        let qkv_b = cat_bias(vec![
            proj_bias(bag, "self_attn.q_proj", cfg.qkv_bias, q_rows)?,
            proj_bias(bag, "self_attn.k_proj", cfg.qkv_bias, kv_rows)?,
            proj_bias(bag, "self_attn.v_proj", cfg.qkv_bias, kv_rows)?,
        ])?;
        let (gate, up) = (
            proj(bag, "mlp.gate_proj", [cfg.d_mlp, d])?,
            proj(bag, "mlp.up_proj", [cfg.d_mlp, d])?,
        );
        let mlp_in_b = cat_bias(vec![
            proj_bias(bag, "mlp.gate_proj", cfg.mlp_bias, cfg.d_mlp)?,
            proj_bias(bag, "mlp.up_proj", cfg.mlp_bias, cfg.d_mlp)?,
        ])?;
        blocks.push(BlockWeights {
            ln1: norm(cfg, bag, &format!("{l}.input_layernorm"))?,
            qkv_w: Tensor::f_cat(&[q, k, v], 0)?,
            qkv_b,
            out_w: proj(bag, "self_attn.o_proj", [d, q_rows])?,
            out_b: proj_bias(bag, "self_attn.o_proj", cfg.attn_out_bias, d)?,
            ln2: norm(cfg, bag, &format!("{l}.post_attention_layernorm"))?,
            mlp_in_w: Tensor::f_cat(&[gate, up], 0)?,
            mlp_in_b,
            mlp_out_w: proj(bag, "mlp.down_proj", [d, cfg.d_mlp])?,
            mlp_out_b: proj_bias(bag, "mlp.down_proj", cfg.mlp_bias, d)?,
        });
    }
    let unembed = unembed(cfg, bag, "lm_head.weight", &embed)?;
    Ok(ModelWeights {
        pos_embed: None,
        blocks,
        ln_final: norm(cfg, bag, "model.norm")?,
        unembed,
        embed,
    })
}
