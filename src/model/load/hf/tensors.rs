//! Weight-conversion pieces every family uses: norms, the (possibly tied)
//! unembedding, and concatenated biases.

use tch::Tensor;

use crate::error::Result;
use crate::model::config::{ModelConfig, NormKind};
use crate::model::weights::{NormWeights, TensorBag};

pub(super) fn norm(cfg: &ModelConfig, bag: &mut TensorBag, prefix: &str) -> Result<NormWeights> {
    Ok(NormWeights {
        weight: bag.take(&format!("{prefix}.weight"))?,
        bias: bag.take_if(cfg.norm == NormKind::LayerNorm, &format!("{prefix}.bias"))?,
    })
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
        bag.take(name)
    }
}

/// Concatenates optional biases; all present or all absent.
pub(super) fn cat_bias(parts: Vec<Option<Tensor>>) -> Option<Tensor> {
    let present: Option<Vec<Tensor>> = parts.into_iter().collect();
    present.map(|p| Tensor::cat(&p, 0))
}
