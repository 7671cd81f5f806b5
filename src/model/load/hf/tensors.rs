//! Weight-conversion pieces every family uses: norms, the (possibly tied)
//! unembedding, and concatenated biases.

use tch::Tensor;

use crate::error::Result;
use crate::model::config::{ModelConfig, NormKind};
use crate::model::weights::{NormWeights, TensorBag};

pub(super) fn norm(cfg: &ModelConfig, bag: &mut TensorBag, prefix: &str) -> Result<NormWeights> {
    let d = [cfg.d_model];
    Ok(NormWeights {
        weight: bag.take_shaped(&format!("{prefix}.weight"), &d)?,
        bias: bag.take_shaped_if(
            cfg.norm == NormKind::LayerNorm,
            &format!("{prefix}.bias"),
            &d,
        )?,
    })
}

/// The `[vocab, d_model]` token embedding.
pub(super) fn embedding(cfg: &ModelConfig, bag: &mut TensorBag, name: &str) -> Result<Tensor> {
    bag.take_shaped(name, &[cfg.vocab_size, cfg.d_model])
}

/// The unembedding: its own tensor, or the embedding when tied (or absent).
pub(super) fn unembed(
    cfg: &ModelConfig,
    bag: &mut TensorBag,
    name: &str,
    embed: &Tensor,
) -> Result<Tensor> {
    if cfg.tied_embeddings {
        Ok(embed.shallow_clone())
    } else {
        embedding(cfg, bag, name)
    }
}

/// Concatenates optional biases (already shape-checked); all present or all absent.
pub(super) fn cat_bias(parts: Vec<Option<Tensor>>) -> Result<Option<Tensor>> {
    let present: Option<Vec<Tensor>> = parts.into_iter().collect();
    Ok(present.map(|p| Tensor::f_cat(&p, 0)).transpose()?)
}
