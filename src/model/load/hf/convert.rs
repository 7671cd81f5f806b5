//! Converts Hugging Face checkpoints of each supported architecture into the
//! canonical [`ModelWeights`] layout. This file is the only place where the
//! architectures' weight names and layouts differ.

use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, NormKind, PositionKind};
use crate::model::weights::{BlockWeights, ModelWeights, NormWeights, TensorBag};

/// Builds the canonical weights from a bag of HF-named tensors.
pub fn convert_hf(cfg: &ModelConfig, bag: &mut TensorBag) -> Result<ModelWeights> {
    let weights = match cfg.architecture.as_str() {
        "gpt2" => gpt2(cfg, bag)?,
        "llama" | "mistral" | "qwen2" => llama(cfg, bag)?,
        "gpt_neox" => neox(cfg, bag)?,
        other => return Err(Error::UnknownArchitecture(other.to_string())),
    };
    weights.validate(cfg)?;
    Ok(weights)
}

fn norm(cfg: &ModelConfig, bag: &mut TensorBag, prefix: &str) -> Result<NormWeights> {
    Ok(NormWeights {
        weight: bag.take(&format!("{prefix}.weight"))?,
        bias: bag.take_if(cfg.norm == NormKind::LayerNorm, &format!("{prefix}.bias"))?,
    })
}

/// The unembedding: its own tensor, or the embedding when tied (or absent).
fn unembed(cfg: &ModelConfig, bag: &mut TensorBag, name: &str, embed: &Tensor) -> Result<Tensor> {
    if cfg.tied_embeddings {
        Ok(embed.shallow_clone())
    } else {
        bag.take(name)
    }
}

fn gpt2(cfg: &ModelConfig, bag: &mut TensorBag) -> Result<ModelWeights> {
    // `GPT2LMHeadModel` checkpoints prefix the body with `transformer.`; the
    // original OpenAI conversion does not.
    let p = if bag.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    // GPT-2 stores projections as Conv1D `[in, out]`: transpose to `[out, in]`.
    let conv = |bag: &mut TensorBag, name: String| -> Result<Tensor> { Ok(bag.take(&name)?.tr()) };
    let embed = bag.take(&format!("{p}wte.weight"))?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let h = format!("{p}h.{i}");
        blocks.push(BlockWeights {
            ln1: norm(cfg, bag, &format!("{h}.ln_1"))?,
            qkv_w: conv(bag, format!("{h}.attn.c_attn.weight"))?,
            qkv_b: Some(bag.take(&format!("{h}.attn.c_attn.bias"))?),
            out_w: conv(bag, format!("{h}.attn.c_proj.weight"))?,
            out_b: Some(bag.take(&format!("{h}.attn.c_proj.bias"))?),
            ln2: norm(cfg, bag, &format!("{h}.ln_2"))?,
            mlp_in_w: conv(bag, format!("{h}.mlp.c_fc.weight"))?,
            mlp_in_b: Some(bag.take(&format!("{h}.mlp.c_fc.bias"))?),
            mlp_out_w: conv(bag, format!("{h}.mlp.c_proj.weight"))?,
            mlp_out_b: Some(bag.take(&format!("{h}.mlp.c_proj.bias"))?),
        });
    }
    let unembed = unembed(cfg, bag, "lm_head.weight", &embed)?;
    Ok(ModelWeights {
        pos_embed: Some(bag.take(&format!("{p}wpe.weight"))?),
        blocks,
        ln_final: norm(cfg, bag, &format!("{p}ln_f"))?,
        unembed,
        embed,
    })
}

/// Concatenates optional biases; all present or all absent.
fn cat_bias(parts: Vec<Option<Tensor>>) -> Option<Tensor> {
    let present: Option<Vec<Tensor>> = parts.into_iter().collect();
    present.map(|p| Tensor::cat(&p, 0))
}

fn llama(cfg: &ModelConfig, bag: &mut TensorBag) -> Result<ModelWeights> {
    let embed = bag.take("model.embed_tokens.weight")?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let l = format!("model.layers.{i}");
        let proj = |bag: &mut TensorBag, n: &str| bag.take(&format!("{l}.{n}.weight"));
        let proj_bias =
            |bag: &mut TensorBag, n: &str, on: bool| bag.take_if(on, &format!("{l}.{n}.bias"));
        let (q, k, v) = (
            proj(bag, "self_attn.q_proj")?,
            proj(bag, "self_attn.k_proj")?,
            proj(bag, "self_attn.v_proj")?,
        );
        let qkv_b = cat_bias(vec![
            proj_bias(bag, "self_attn.q_proj", cfg.qkv_bias)?,
            proj_bias(bag, "self_attn.k_proj", cfg.qkv_bias)?,
            proj_bias(bag, "self_attn.v_proj", cfg.qkv_bias)?,
        ]);
        let (gate, up) = (proj(bag, "mlp.gate_proj")?, proj(bag, "mlp.up_proj")?);
        let mlp_in_b = cat_bias(vec![
            proj_bias(bag, "mlp.gate_proj", cfg.mlp_bias)?,
            proj_bias(bag, "mlp.up_proj", cfg.mlp_bias)?,
        ]);
        blocks.push(BlockWeights {
            ln1: norm(cfg, bag, &format!("{l}.input_layernorm"))?,
            qkv_w: Tensor::cat(&[q, k, v], 0),
            qkv_b,
            out_w: proj(bag, "self_attn.o_proj")?,
            out_b: proj_bias(bag, "self_attn.o_proj", cfg.attn_out_bias)?,
            ln2: norm(cfg, bag, &format!("{l}.post_attention_layernorm"))?,
            mlp_in_w: Tensor::cat(&[gate, up], 0),
            mlp_in_b,
            mlp_out_w: proj(bag, "mlp.down_proj")?,
            mlp_out_b: proj_bias(bag, "mlp.down_proj", cfg.mlp_bias)?,
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

/// GPT-NeoX fuses QKV per head (`[head, {q,k,v}, d_head]` rows); regroup them
/// into all queries, then all keys, then all values.
fn neox_regroup_qkv(t: &Tensor, cfg: &ModelConfig) -> Tensor {
    let mut shape = vec![cfg.n_heads, 3, cfg.d_head];
    let trailing = &t.size()[1..];
    shape.extend_from_slice(trailing);
    let mut out_shape = vec![3 * cfg.n_heads * cfg.d_head];
    out_shape.extend_from_slice(trailing);
    t.reshape(shape.as_slice())
        .transpose(0, 1)
        .contiguous()
        .reshape(out_shape.as_slice())
}

fn neox(cfg: &ModelConfig, bag: &mut TensorBag) -> Result<ModelWeights> {
    debug_assert!(matches!(cfg.positions, PositionKind::Rotary { .. }));
    let embed = bag.take("gpt_neox.embed_in.weight")?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let l = format!("gpt_neox.layers.{i}");
        let qkv_w = bag.take(&format!("{l}.attention.query_key_value.weight"))?;
        let qkv_b = bag.take_if(cfg.qkv_bias, &format!("{l}.attention.query_key_value.bias"))?;
        blocks.push(BlockWeights {
            ln1: norm(cfg, bag, &format!("{l}.input_layernorm"))?,
            qkv_w: neox_regroup_qkv(&qkv_w, cfg),
            qkv_b: qkv_b.map(|b| neox_regroup_qkv(&b, cfg)),
            out_w: bag.take(&format!("{l}.attention.dense.weight"))?,
            out_b: bag.take_if(cfg.attn_out_bias, &format!("{l}.attention.dense.bias"))?,
            ln2: norm(cfg, bag, &format!("{l}.post_attention_layernorm"))?,
            mlp_in_w: bag.take(&format!("{l}.mlp.dense_h_to_4h.weight"))?,
            mlp_in_b: Some(bag.take(&format!("{l}.mlp.dense_h_to_4h.bias"))?),
            mlp_out_w: bag.take(&format!("{l}.mlp.dense_4h_to_h.weight"))?,
            mlp_out_b: Some(bag.take(&format!("{l}.mlp.dense_4h_to_h.bias"))?),
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
