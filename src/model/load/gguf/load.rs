//! Builds a model from a GGUF file of the `llama` architecture (llama.cpp's
//! name for Llama 2/3, SmolLM and Mistral): configuration from the metadata,
//! dequantised weights in the canonical layout, tokenizer from the vocabulary.

use std::collections::HashMap;

use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::config::{Activation, ModelConfig, NormKind, PositionKind};
use crate::model::load::gguf::file::GgufFile;
use crate::model::load::gguf::tokenizer::{special_token_ids, tokenizer_from_gguf};
use crate::model::tokenizer::ModelTokenizer;
use crate::model::weights::{BlockWeights, ModelWeights, NormWeights, TensorBag};

/// The configuration a GGUF file describes.
pub fn gguf_config(gguf: &GgufFile) -> Result<ModelConfig> {
    let arch = gguf.meta_str("general.architecture")?;
    if arch != "llama" {
        return Err(Error::UnknownArchitecture {
            name: arch.to_string(),
            supported: "llama (in GGUF files)".into(),
        });
    }
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<i64> {
        let v = gguf.meta_u64(&key(k))?;
        i64::try_from(v)
            .map_err(|_| Error::malformed(gguf.path(), format!("{} is too large", key(k))))
    };
    let d_model = int("embedding_length")?;
    let n_heads = int("attention.head_count")?;
    let n_kv_heads = gguf
        .meta_opt_u64(&key("attention.head_count_kv"))?
        .map_or(n_heads, |v| v as i64);
    let d_head = d_model / n_heads.max(1);
    let vocab_size = match gguf.meta_opt_u64(&key("vocab_size"))? {
        Some(v) => v as i64,
        None => gguf.meta_array("tokenizer.ggml.tokens")?.len() as i64,
    };
    let (bos, eos) = special_token_ids(gguf);
    let config = ModelConfig {
        architecture: "llama".into(),
        vocab_size,
        d_model,
        n_layers: int("block_count")? as usize,
        n_heads,
        n_kv_heads,
        d_head,
        d_mlp: int("feed_forward_length")?,
        norm: NormKind::RmsNorm,
        norm_eps: gguf
            .meta_opt_f64(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5),
        activation: Activation::Silu,
        gated_mlp: true,
        positions: PositionKind::Rotary {
            base: gguf
                .meta_opt_f64(&key("rope.freq_base"))?
                .unwrap_or(10_000.0),
            rotary_dim: gguf
                .meta_opt_u64(&key("rope.dimension_count"))?
                .map_or(d_head, |v| v as i64),
            llama3_scaling: None,
        },
        parallel_residual: false,
        qkv_bias: false,
        attn_out_bias: false,
        mlp_bias: false,
        tied_embeddings: gguf.tensor_info("output.weight").is_none(),
        max_context: int("context_length").unwrap_or(2048),
        bos_token_id: bos.map(i64::from),
        eos_token_ids: eos.map(i64::from).into_iter().collect(),
    };
    config.validate()?;
    Ok(config)
}

/// The tokenizer stored in the GGUF metadata.
pub fn gguf_tokenizer(gguf: &GgufFile) -> Result<ModelTokenizer> {
    let (bos, eos) = special_token_ids(gguf);
    Ok(ModelTokenizer::new(
        tokenizer_from_gguf(gguf)?,
        bos.map(i64::from),
        eos.map(i64::from).into_iter().collect(),
    ))
}

/// llama.cpp's converter permutes query and key rows so that rotary pairs are
/// adjacent (interleaved RoPE); undo that to get Hugging Face's half-split
/// layout, `[heads, d_head/2, 2, in] → [heads, 2, d_head/2, in]`. `w` is
/// `[heads·d_head, in]`, checked by the caller.
fn unpermute_rotary_rows(w: &Tensor, heads: i64, d_head: i64) -> Result<Tensor> {
    let cols = w.size().get(1).copied().unwrap_or(0);
    Ok(w.f_reshape([heads, d_head / 2, 2, cols])?
        .f_transpose(1, 2)?
        .f_contiguous()?
        .f_reshape([heads * d_head, cols])?)
}

/// Dequantises every tensor of the file to f32 on the CPU.
fn read_all(gguf: &GgufFile) -> Result<TensorBag> {
    let mut tensors = HashMap::new();
    for info in gguf.tensors() {
        let (values, shape) = gguf.dequantize_info(info)?;
        tensors.insert(
            info.name.clone(),
            Tensor::from_slice(&values).f_reshape(shape.as_slice())?,
        );
    }
    Ok(TensorBag::new(tensors, gguf.path().display().to_string()))
}

/// Canonical weights from a `llama` GGUF. Every tensor is taken at the shape
/// the header's config implies before any arithmetic on it.
pub fn gguf_weights(gguf: &GgufFile, cfg: &ModelConfig) -> Result<ModelWeights> {
    let mut bag = read_all(gguf)?;
    let d = cfg.d_model;
    let (q_rows, kv_rows) = (cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head);
    if cfg.d_head % 2 != 0 {
        return Err(Error::Config(format!(
            "head width {} is odd; rotary needs pairs",
            cfg.d_head
        )));
    }
    let norm = |bag: &mut TensorBag, name: &str| -> Result<NormWeights> {
        Ok(NormWeights {
            weight: bag.take_shaped(name, &[d])?,
            bias: None,
        })
    };
    let embed = bag.take_shaped("token_embd.weight", &[cfg.vocab_size, d])?;
    // Not sized by `n_layers`: a crafted header could ask for any number;
    // the blocks' tensors, which the file must hold, bound it instead.
    let mut blocks = Vec::new();
    for i in 0..cfg.n_layers {
        let t = |bag: &mut TensorBag, n: &str, shape: [i64; 2]| {
            bag.take_shaped(&format!("blk.{i}.{n}.weight"), &shape)
        };
        let q = unpermute_rotary_rows(
            &t(&mut bag, "attn_q", [q_rows, d])?,
            cfg.n_heads,
            cfg.d_head,
        )?;
        let k = unpermute_rotary_rows(
            &t(&mut bag, "attn_k", [kv_rows, d])?,
            cfg.n_kv_heads,
            cfg.d_head,
        )?;
        let v = t(&mut bag, "attn_v", [kv_rows, d])?;
        let (gate, up) = (
            t(&mut bag, "ffn_gate", [cfg.d_mlp, d])?,
            t(&mut bag, "ffn_up", [cfg.d_mlp, d])?,
        );
        blocks.push(BlockWeights {
            ln1: norm(&mut bag, &format!("blk.{i}.attn_norm.weight"))?,
            qkv_w: Tensor::f_cat(&[q, k, v], 0)?,
            qkv_b: None,
            out_w: t(&mut bag, "attn_output", [d, q_rows])?,
            out_b: None,
            ln2: norm(&mut bag, &format!("blk.{i}.ffn_norm.weight"))?,
            mlp_in_w: Tensor::f_cat(&[gate, up], 0)?,
            mlp_in_b: None,
            mlp_out_w: t(&mut bag, "ffn_down", [d, cfg.d_mlp])?,
            mlp_out_b: None,
        });
    }
    let unembed = if cfg.tied_embeddings {
        embed.shallow_clone()
    } else {
        bag.take_shaped("output.weight", &[cfg.vocab_size, d])?
    };
    let weights = ModelWeights {
        pos_embed: None,
        blocks,
        ln_final: norm(&mut bag, "output_norm.weight")?,
        unembed,
        embed,
    };
    weights.validate(cfg)?;
    Ok(weights)
}
