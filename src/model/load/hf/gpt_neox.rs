//! GPT-NeoX (`gpt_neox`, the Pythia models): parallel residual, partial
//! rotary embeddings, QKV fused per head.

use serde_json::Value;
use tch::Tensor;

use super::family::Family;
use super::json::*;
use super::tensors::*;
use crate::error::{Error, Result};
use crate::model::config::{Activation, ModelConfig, NormKind, PositionKind};
use crate::model::weights::{BlockWeights, ModelWeights, TensorBag};

pub const FAMILY: Family = Family {
    model_types: &["gpt_neox"],
    config: |json, _| config(json),
    convert,
};

fn config(json: &Value) -> Result<ModelConfig> {
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

/// GPT-NeoX fuses QKV per head (`[head, {q,k,v}, d_head]` rows); regroup them
/// into all queries, then all keys, then all values. `t` is shape-checked.
fn neox_regroup_qkv(t: &Tensor, cfg: &ModelConfig) -> Result<Tensor> {
    let mut shape = vec![cfg.n_heads, 3, cfg.d_head];
    let trailing = &t.size()[1..];
    shape.extend_from_slice(trailing);
    let mut out_shape = vec![3 * cfg.n_heads * cfg.d_head];
    out_shape.extend_from_slice(trailing);
    Ok(t.f_reshape(shape.as_slice())?
        .f_transpose(0, 1)?
        .f_contiguous()?
        .f_reshape(out_shape.as_slice())?)
}

fn convert(cfg: &ModelConfig, bag: &mut TensorBag) -> Result<ModelWeights> {
    debug_assert!(matches!(cfg.positions, PositionKind::Rotary { .. }));
    let embed = embedding(cfg, bag, "gpt_neox.embed_in.weight")?;
    let (d, attn, mlp) = (cfg.d_model, cfg.n_heads * cfg.d_head, cfg.d_mlp);
    let qkv_rows = 3 * attn;
    // Not sized by `n_layers`: a crafted header could ask for any number;
    // the blocks' tensors, which the file must hold, bound it instead.
    let mut blocks = Vec::new();
    for i in 0..cfg.n_layers {
        let l = format!("gpt_neox.layers.{i}");
        let qkv_w = bag.take_shaped(
            &format!("{l}.attention.query_key_value.weight"),
            &[qkv_rows, d],
        )?;
        let qkv_b = bag.take_shaped_if(
            cfg.qkv_bias,
            &format!("{l}.attention.query_key_value.bias"),
            &[qkv_rows],
        )?;
        blocks.push(BlockWeights {
            ln1: norm(cfg, bag, &format!("{l}.input_layernorm"))?,
            qkv_w: neox_regroup_qkv(&qkv_w, cfg)?,
            qkv_b: qkv_b.map(|b| neox_regroup_qkv(&b, cfg)).transpose()?,
            out_w: bag.take_shaped(&format!("{l}.attention.dense.weight"), &[d, attn])?,
            out_b: bag.take_shaped_if(
                cfg.attn_out_bias,
                &format!("{l}.attention.dense.bias"),
                &[d],
            )?,
            ln2: norm(cfg, bag, &format!("{l}.post_attention_layernorm"))?,
            mlp_in_w: bag.take_shaped(&format!("{l}.mlp.dense_h_to_4h.weight"), &[mlp, d])?,
            mlp_in_b: Some(bag.take_shaped(&format!("{l}.mlp.dense_h_to_4h.bias"), &[mlp])?),
            mlp_out_w: bag.take_shaped(&format!("{l}.mlp.dense_4h_to_h.weight"), &[d, mlp])?,
            mlp_out_b: Some(bag.take_shaped(&format!("{l}.mlp.dense_4h_to_h.bias"), &[d])?),
        });
    }
    let unembed = unembed(cfg, bag, "embed_out.weight", &embed)?;
    Ok(ModelWeights {
        pos_embed: None,
        blocks,
        ln_final: norm(cfg, bag, "gpt_neox.final_layer_norm")?,
        unembed,
        embed,
    })
}
