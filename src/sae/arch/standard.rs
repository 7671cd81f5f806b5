//! The standard ReLU SAE trained with Anthropic's April 2024 recipe
//! ("Circuits Updates — April 2024: training SAEs"): `f = ReLU(W_enc·x + b_enc)`
//! with no decoder-bias subtraction, loss `‖x̂ − x‖² + λ·Σᵢ fᵢ·‖W_dec[i]‖`, and
//! free (not unit-norm) decoder rows, since the penalty already weighs each
//! latent by its decoder norm.

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::sae::architecture::{encoder_pre, penalised_mse, Architecture, Losses, StepContext};
use crate::sae::config::SaeConfig;
use crate::sae::weights::SaeWeights;

pub struct Standard;

/// `[d_sae]` L2 norm of each decoder row.
pub fn decoder_norms(w: &SaeWeights) -> Result<Tensor> {
    Ok(w.w_dec
        .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), false)?)
}

/// `λ · mean over rows of Σᵢ fᵢ·‖W_dec[i]‖` for non-negative `f` `[batch, d_sae]`.
pub fn weighted_l1(acts: &Tensor, w: &SaeWeights, coefficient: f64) -> Result<Tensor> {
    Ok(acts
        .f_mul(&decoder_norms(w)?)?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
        .f_mean(Kind::Float)?
        .f_mul_scalar(coefficient)?)
}

impl Architecture for Standard {
    fn name(&self) -> &'static str {
        "standard"
    }

    fn unit_norm_decoder(&self) -> bool {
        false
    }

    fn default_apply_b_dec_to_input(&self) -> bool {
        false
    }

    fn default_sparsity_coefficient(&self) -> f64 {
        5.0
    }

    fn encode(&self, w: &SaeWeights, cfg: &SaeConfig, x: &Tensor) -> Result<Tensor> {
        Ok(encoder_pre(w, cfg, x, Kind::Float)?.f_relu()?)
    }

    fn loss(
        &self,
        w: &SaeWeights,
        cfg: &SaeConfig,
        x: &Tensor,
        ctx: &StepContext,
    ) -> Result<Losses> {
        let acts = encoder_pre(w, cfg, x, ctx.compute_kind)?.f_relu()?;
        let penalty = weighted_l1(&acts, w, ctx.sparsity_coefficient)?;
        penalised_mse(w, x, acts, penalty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::architecture::testutil::{assert_close, cfg, t, tiny};
    use crate::sae::architecture::{decode, StepContext};

    #[test]
    fn encodes_decodes_and_weighs_the_penalty_by_decoder_norms() {
        // No b_dec subtraction: pre = (1.5, −1, 1.5).
        let w = tiny([0.0, -2.0, -1.0], [0.5, 0.0]);
        let c = cfg("standard", None, false);
        let x = t(&[1.5, 1.0], &[1, 2]);
        let acts = Standard.encode(&w, &c, &x).unwrap();
        assert_close(&acts, &[1.5, 0.0, 1.5]);
        assert_close(&decode(&w, &acts).unwrap(), &[3.5, 1.5]);
        // Penalty 0.1 · (1.5·1 + 1.5·√2); error (3.5−1.5)² + (1.5−1)² = 4.25.
        let losses = Standard
            .loss(&w, &c, &x, &StepContext::new(None, 0.1))
            .unwrap();
        let penalty = 0.1 * (1.5 + 1.5 * 2f64.sqrt());
        assert!((losses.sparsity.unwrap().double_value(&[]) - penalty).abs() < 1e-5);
        assert!((losses.total.double_value(&[]) - 4.25 - penalty).abs() < 1e-5);
    }
}
