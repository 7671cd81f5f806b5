//! GPT-2 (`model_type: gpt2`): learned positions, LayerNorm, GELU, Conv1D
//! projections stored `[in, out]`.

use serde_json::Value;
use tch::Tensor;

use super::family::Family;
use super::json::*;
use super::tensors::*;
use crate::error::{Error, Result};
use crate::model::config::{Activation, ModelConfig, NormKind, PositionKind};
use crate::model::weights::{BlockWeights, ModelWeights, TensorBag};

pub const FAMILY: Family = Family {
    model_types: &["gpt2"],
    config: |json, _| config(json),
    convert,
};

fn config(json: &Value) -> Result<ModelConfig> {
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

fn convert(cfg: &ModelConfig, bag: &mut TensorBag) -> Result<ModelWeights> {
    // `GPT2LMHeadModel` checkpoints prefix the body with `transformer.`; the
    // original OpenAI conversion does not.
    let p = if bag.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    // GPT-2 stores projections as Conv1D `[in, out]`: checked as stored, then
    // transposed to `[out, in]`.
    let conv = |bag: &mut TensorBag, name: String, stored: [i64; 2]| -> Result<Tensor> {
        Ok(bag.take_shaped(&name, &stored)?.f_tr()?)
    };
    let bias =
        |bag: &mut TensorBag, name: String, rows: i64| bag.take_shaped(&name, &[rows]).map(Some);
    let embed = embedding(cfg, bag, &format!("{p}wte.weight"))?;
    let (d, attn, mlp) = (cfg.d_model, cfg.n_heads * cfg.d_head, cfg.d_mlp);
    // Not sized by `n_layers`: a crafted header could ask for any number;
    // the blocks' tensors, which the file must hold, bound it instead.
    let mut blocks = Vec::new();
    for i in 0..cfg.n_layers {
        let h = format!("{p}h.{i}");
        blocks.push(BlockWeights {
            ln1: norm(cfg, bag, &format!("{h}.ln_1"))?,
            qkv_w: conv(bag, format!("{h}.attn.c_attn.weight"), [d, cfg.qkv_rows()])?,
            qkv_b: bias(bag, format!("{h}.attn.c_attn.bias"), cfg.qkv_rows())?,
            out_w: conv(bag, format!("{h}.attn.c_proj.weight"), [attn, d])?,
            out_b: bias(bag, format!("{h}.attn.c_proj.bias"), d)?,
            ln2: norm(cfg, bag, &format!("{h}.ln_2"))?,
            mlp_in_w: conv(bag, format!("{h}.mlp.c_fc.weight"), [d, mlp])?,
            mlp_in_b: bias(bag, format!("{h}.mlp.c_fc.bias"), mlp)?,
            mlp_out_w: conv(bag, format!("{h}.mlp.c_proj.weight"), [mlp, d])?,
            mlp_out_b: bias(bag, format!("{h}.mlp.c_proj.bias"), d)?,
        });
    }
    let unembed = unembed(cfg, bag, "lm_head.weight", &embed)?;
    Ok(ModelWeights {
        pos_embed: Some(bag.take_shaped(&format!("{p}wpe.weight"), &[cfg.max_context, d])?),
        blocks,
        ln_final: norm(cfg, bag, &format!("{p}ln_f"))?,
        unembed,
        embed,
    })
}
