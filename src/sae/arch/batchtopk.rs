//! BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"): in
//! training, the `k·batch` largest ReLU'd pre-activations of the whole batch
//! are kept, so k is an average per token; at inference a single threshold θ
//! (a running average of the smallest kept activation) replaces the batch,
//! which makes it a JumpReLU SAE with a constant threshold. That is how it is
//! saved, as SAELens does. Loss as TopK: FVU plus AuxK.

use tch::{Kind, Tensor};

use super::auxk::topk_family_loss;
use super::jumprelu::JumpRelu;
use crate::error::{Error, Result};
use crate::sae::architecture::required;
use crate::sae::architecture::scatter_dense;
use crate::sae::architecture::{
    autograd_step_with_acts, encoder_pre, Architecture, Losses, StepContext, StepOutput,
};
use crate::sae::config::SaeConfig;
use crate::sae::weights::SaeWeights;

pub struct BatchTopK;

/// The threshold before the first batch has set it.
const UNSET: f64 = -1.0;

fn batch_threshold(w: &SaeWeights) -> Result<&Tensor> {
    w.batch_threshold
        .as_ref()
        .ok_or_else(|| Error::MissingTensor {
            name: "batch_threshold".into(),
            source_desc: "a BatchTopK SAE".into(),
        })
}

/// `[batch, d_sae]` the `k·batch` largest entries of `relu(pre)`, zero elsewhere.
fn batch_topk(pre: &Tensor, k: usize) -> Result<Tensor> {
    let (rows, d_sae) = (pre.size()[0], pre.size()[1]);
    let flat = pre.f_relu()?.f_reshape([1, -1])?;
    let keep = (k as i64 * rows).min(rows * d_sae);
    let (values, indices) = flat.f_topk(keep, -1, true, false)?;
    scatter_dense(&values, &indices, rows * d_sae)?
        .f_reshape([rows, d_sae])
        .map_err(Into::into)
}

impl Architecture for BatchTopK {
    fn name(&self) -> &'static str {
        "batchtopk"
    }

    fn needs_k(&self) -> bool {
        true
    }

    fn init_extra(&self, w: &mut SaeWeights) -> Result<()> {
        w.batch_threshold = Some(Tensor::f_full([], UNSET, (Kind::Float, w.device()))?);
        Ok(())
    }

    /// Saved as SAELens does: a JumpReLU SAE whose threshold is the learned
    /// batch threshold for every latent; `k` moves to the metadata.
    fn saved_tensors(
        &self,
        w: &SaeWeights,
        cfg: &mut SaeConfig,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let theta = required(&w.batch_threshold, "batch_threshold")?.f_clamp_min(0.0)?;
        cfg.architecture = JumpRelu.name().into();
        if let Some(k) = cfg.k.take() {
            cfg.metadata
                .extra
                .insert("batchtopk_k".into(), serde_json::Value::from(k));
        }
        Ok(vec![
            ("b_enc", w.b_enc.shallow_clone()),
            (
                "threshold",
                theta.f_expand([cfg.d_sae as i64], true)?.f_contiguous()?,
            ),
        ])
    }

    /// Inference: JumpReLU with the learned threshold.
    fn encode(&self, w: &SaeWeights, cfg: &SaeConfig, x: &Tensor) -> Result<Tensor> {
        let pre = encoder_pre(w, cfg, x, Kind::Float)?.f_relu()?;
        let theta = batch_threshold(w)?.f_clamp_min(0.0)?;
        Ok(pre.f_mul(&pre.f_gt_tensor(&theta)?.f_to_kind(Kind::Float)?)?)
    }

    fn loss(
        &self,
        w: &SaeWeights,
        cfg: &SaeConfig,
        x: &Tensor,
        ctx: &StepContext,
    ) -> Result<Losses> {
        topk_family_loss(w, cfg, x, ctx, batch_topk)
    }

    fn train_step(
        &self,
        w: &mut SaeWeights,
        cfg: &SaeConfig,
        x: &Tensor,
        ctx: &StepContext,
    ) -> Result<StepOutput> {
        let (out, acts) = autograd_step_with_acts(self, w, cfg, x, ctx)?;
        // The smallest activation the batch kept, folded into the running threshold.
        tch::no_grad(|| -> Result<()> {
            let positive = acts.f_masked_select(&acts.f_gt(0.0)?)?;
            if positive.numel() == 0 {
                return Ok(());
            }
            let smallest = positive.f_min()?;
            let momentum = ctx.threshold_momentum;
            if let Some(theta) = w.batch_threshold.as_mut() {
                let next = if theta.f_double_value(&[])? == UNSET {
                    smallest
                } else {
                    theta
                        .f_mul_scalar(1.0 - momentum)?
                        .f_add(&smallest.f_mul_scalar(momentum)?)?
                };
                theta.f_copy_(&next)?;
            }
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::architecture::testutil::{assert_close, cfg, t, tiny};

    #[test]
    fn keeps_k_per_row_on_average_across_the_batch() {
        // Two rows, k = 1: the two largest of the whole batch, both in row 0.
        let pre = t(&[3.0, 2.0, 0.5, 1.0, -1.0, 0.1], &[2, 3]);
        assert_close(
            &batch_topk(&pre, 1).unwrap(),
            &[3.0, 2.0, 0.0, 0.0, 0.0, 0.0],
        );
    }

    #[test]
    fn inference_uses_the_learned_threshold() {
        let mut w = tiny([0.0, 0.5, -1.0], [0.5, 0.0]);
        w.batch_threshold = Some(Tensor::from(1.2f32));
        let acts = BatchTopK
            .encode(
                &w,
                &cfg("batchtopk", Some(1), true),
                &t(&[1.5, 1.0], &[1, 2]),
            )
            .unwrap();
        assert_close(&acts, &[0.0, 1.5, 0.0]);
    }
}
