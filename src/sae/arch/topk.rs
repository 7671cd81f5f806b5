//! TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders";
//! the recipe of EleutherAI's sparsify): keep the k largest pre-activations of
//! each token, ReLU them, decode with unit-norm decoder rows. The loss is the
//! fraction of variance unexplained plus AuxK on dead latents.
//!
//! Training takes the sparse path of [`super::topk_sparse`] by default; the
//! dense autograd path here is the reference it is tested against.

use tch::{Kind, Tensor};

use super::auxk::topk_family_loss;
use super::topk_sparse::sparse_topk_step;
use crate::error::Result;
use crate::sae::architecture::{
    encoder_pre, scatter_dense, Architecture, Losses, StepContext, StepOutput,
};
use crate::sae::config::SaeConfig;
use crate::sae::weights::SaeWeights;

pub struct TopK;

/// `[batch, d_sae]` dense TopK activations of pre-activations `pre`.
pub fn topk_activations(pre: &Tensor, k: usize) -> Result<Tensor> {
    let (values, indices) = pre.f_topk(k as i64, -1, true, false)?;
    scatter_dense(&values.f_relu()?, &indices, pre.size()[1])
}

impl Architecture for TopK {
    fn name(&self) -> &'static str {
        "topk"
    }

    fn needs_k(&self) -> bool {
        true
    }

    fn encode(&self, w: &SaeWeights, cfg: &SaeConfig, x: &Tensor) -> Result<Tensor> {
        let pre = encoder_pre(w, cfg, x, Kind::Float)?;
        topk_activations(&pre, cfg.require_k()?)
    }

    fn loss(
        &self,
        w: &SaeWeights,
        cfg: &SaeConfig,
        x: &Tensor,
        ctx: &StepContext,
    ) -> Result<Losses> {
        topk_family_loss(w, cfg, x, ctx, topk_activations)
    }

    fn train_step(
        &self,
        w: &mut SaeWeights,
        cfg: &SaeConfig,
        x: &Tensor,
        ctx: &StepContext,
    ) -> Result<StepOutput> {
        if ctx.sparse {
            sparse_topk_step(w, cfg, x, ctx)
        } else {
            crate::sae::architecture::autograd_step(self, w, cfg, x, ctx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::architecture::decode;
    use crate::sae::architecture::testutil::{assert_close, cfg, t, tiny};

    #[test]
    fn encodes_and_decodes_a_hand_computed_case() {
        // x − b_dec = (1, 1); pre = (1, 1.5, 1); the top 1 is latent 1.
        let w = tiny([0.0, 0.5, -1.0], [0.5, 0.0]);
        let acts = TopK
            .encode(&w, &cfg("topk", Some(1), true), &t(&[1.5, 1.0], &[1, 2]))
            .unwrap();
        assert_close(&acts, &[0.0, 1.5, 0.0]);
        assert_close(&decode(&w, &acts).unwrap(), &[0.5, 3.0]);
    }

    #[test]
    fn negative_top_values_are_clipped_by_the_relu() {
        let w = tiny([-5.0, -5.0, -5.0], [0.0, 0.0]);
        let acts = TopK
            .encode(&w, &cfg("topk", Some(2), true), &t(&[1.0, 1.0], &[1, 2]))
            .unwrap();
        assert_close(&acts, &[0.0, 0.0, 0.0]);
    }
}
