//! JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving
//! Reconstruction Fidelity with JumpReLU Sparse Autoencoders"; Gemma Scope):
//! `f = z·H(z − θ)` with a learned per-latent threshold θ, trained on
//! `‖x̂ − x‖² + λ·‖f‖₀`.
//!
//! The step function has no gradient, so θ gets the paper's straight-through
//! pseudo-derivatives with a rectangle kernel `K(u) = 1[|u| < ½]` of bandwidth ε:
//! - `∂JumpReLU/∂θ = −(θ/ε)·K((z − θ)/ε)`, `∂JumpReLU/∂z = H(z − θ)`;
//! - `∂H(z − θ)/∂θ = −(1/ε)·K((z − θ)/ε)`, `∂H/∂z = 0`.
//!
//! They are built from detached factors, `y = v.detach() + θ·c.detach() −
//! (θ·c).detach()`, whose value is `v` and whose θ-gradient is `c`. θ is
//! parameterised as `exp(log_threshold)` and kept in f32.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::sae::architecture::required;
use crate::sae::architecture::{encoder_pre, penalised_mse, Architecture, Losses, StepContext};
use crate::sae::config::SaeConfig;
use crate::sae::weights::SaeWeights;

pub struct JumpRelu;

/// The initial threshold, as in SAELens and the paper's code.
pub const INITIAL_THRESHOLD: f64 = 0.001;

/// `[d_sae]` θ.
pub fn threshold(w: &SaeWeights) -> Result<Tensor> {
    let log = w
        .log_threshold
        .as_ref()
        .ok_or_else(|| Error::MissingTensor {
            name: "threshold".into(),
            source_desc: "a JumpReLU SAE".into(),
        })?;
    Ok(log.f_exp()?)
}

/// Rectangle kernel `K((z − θ)/ε)` as f32.
fn kernel(pre: &Tensor, theta: &Tensor, bandwidth: f64) -> Result<Tensor> {
    Ok(pre
        .f_sub(theta)?
        .f_div_scalar(bandwidth)?
        .f_abs()?
        .f_lt(0.5)?
        .f_to_kind(Kind::Float)?)
}

/// `value` with θ-gradient `theta_grad` (both `[batch, d_sae]`).
fn with_theta_gradient(value: &Tensor, theta: &Tensor, theta_grad: &Tensor) -> Result<Tensor> {
    let surrogate = theta.f_mul(&theta_grad.f_detach()?)?;
    Ok(value.f_add(&surrogate)?.f_sub(&surrogate.f_detach()?)?)
}

/// JumpReLU with the straight-through θ-gradient: `z·H(z − θ)`.
pub fn jumprelu_ste(pre: &Tensor, theta: &Tensor, bandwidth: f64) -> Result<Tensor> {
    let gate = pre.f_gt_tensor(theta)?.f_to_kind(Kind::Float)?.f_detach()?;
    let value = pre.f_mul(&gate)?; // ∂/∂z = H
    let theta_grad = theta.f_detach()?.f_div_scalar(-bandwidth)?.f_mul(&kernel(
        &pre.f_detach()?,
        &theta.f_detach()?,
        bandwidth,
    )?)?;
    with_theta_gradient(&value, theta, &theta_grad)
}

/// Heaviside `H(z − θ)` with the straight-through θ-gradient (for the L0 penalty).
pub fn step_ste(pre: &Tensor, theta: &Tensor, bandwidth: f64) -> Result<Tensor> {
    let value = pre.f_gt_tensor(theta)?.f_to_kind(Kind::Float)?.f_detach()?;
    let theta_grad =
        kernel(&pre.f_detach()?, &theta.f_detach()?, bandwidth)?.f_div_scalar(-bandwidth)?;
    with_theta_gradient(&value, theta, &theta_grad)
}

impl Architecture for JumpRelu {
    fn name(&self) -> &'static str {
        "jumprelu"
    }

    fn init_extra(&self, w: &mut SaeWeights) -> Result<()> {
        w.log_threshold = Some(Tensor::f_full(
            [w.d_sae()],
            INITIAL_THRESHOLD.ln(),
            (Kind::Float, w.device()),
        )?);
        Ok(())
    }

    fn default_sparsity_coefficient(&self) -> f64 {
        0.01
    }

    /// The threshold itself is saved (θ, not the log θ that trains).
    fn saved_tensors(
        &self,
        w: &SaeWeights,
        _cfg: &mut SaeConfig,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        Ok(vec![
            ("b_enc", w.b_enc.shallow_clone()),
            (
                "threshold",
                required(&w.log_threshold, "threshold")?.f_exp()?,
            ),
        ])
    }

    fn load_tensors(
        &self,
        w: &mut SaeWeights,
        take: &mut dyn FnMut(&str) -> Result<Tensor>,
    ) -> Result<()> {
        w.b_enc = take("b_enc")?;
        // θ = 0 means "plain ReLU"; its log is clamped, not −∞.
        w.log_threshold = Some(take("threshold")?.f_clamp_min(1e-30)?.f_log()?);
        Ok(())
    }

    fn encode(&self, w: &SaeWeights, cfg: &SaeConfig, x: &Tensor) -> Result<Tensor> {
        let pre = encoder_pre(w, cfg, x, Kind::Float)?;
        let theta = threshold(w)?;
        Ok(pre
            .f_relu()?
            .f_mul(&pre.f_gt_tensor(&theta)?.f_to_kind(Kind::Float)?)?)
    }

    fn loss(
        &self,
        w: &SaeWeights,
        cfg: &SaeConfig,
        x: &Tensor,
        ctx: &StepContext,
    ) -> Result<Losses> {
        let pre = encoder_pre(w, cfg, x, ctx.compute_kind)?;
        let theta = threshold(w)?;
        let acts = jumprelu_ste(&pre, &theta, ctx.bandwidth)?;
        let l0 = step_ste(&pre, &theta, ctx.bandwidth)?
            .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
            .f_mean(Kind::Float)?;
        penalised_mse(w, x, acts, l0.f_mul_scalar(ctx.sparsity_coefficient)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::architecture::testutil::{assert_close, cfg, t, tiny, values};

    #[test]
    fn keeps_only_pre_activations_above_their_threshold() {
        // pre = (1, 1.5, 1) against θ = (1.2, 0.1, 2).
        let mut w = tiny([0.0, 0.5, -1.0], [0.5, 0.0]);
        w.log_threshold = Some(t(&[1.2, 0.1, 2.0], &[3]).log());
        let acts = JumpRelu
            .encode(&w, &cfg("jumprelu", None, true), &t(&[1.5, 1.0], &[1, 2]))
            .unwrap();
        assert_close(&acts, &[0.0, 1.5, 0.0]);
    }

    #[test]
    fn straight_through_gradients_follow_the_paper() {
        let eps = 0.1;
        // Distances z − θ: 0.02 (inside the kernel), −0.04 (inside), 0.3 (outside).
        let pre = t(&[1.02, 0.46, 1.3], &[1, 3]).set_requires_grad(true);
        let theta = t(&[1.0, 0.5, 1.0], &[3]).set_requires_grad(true);
        let y = jumprelu_ste(&pre, &theta, eps).unwrap();
        assert_close(&y.detach(), &[1.02, 0.0, 1.3]);
        y.sum(Kind::Float).backward();
        // ∂/∂z = H(z − θ); ∂/∂θ = −(θ/ε)·K.
        assert_close(&pre.grad(), &[1.0, 0.0, 1.0]);
        assert_close(&theta.grad(), &[-10.0, -5.0, 0.0]);

        let theta2 = t(&[1.0, 0.5, 1.0], &[3]).set_requires_grad(true);
        let pre2 = pre.detach().set_requires_grad(true);
        let h = step_ste(&pre2, &theta2, eps).unwrap();
        assert_eq!(values(&h.detach()), vec![1.0, 0.0, 1.0]);
        h.sum(Kind::Float).backward();
        // ∂H/∂θ = −(1/ε)·K; no gradient to z.
        assert_close(&theta2.grad(), &[-10.0, -10.0, 0.0]);
        let g = pre2.grad();
        assert!(!g.defined() || values(&g).iter().all(|v| *v == 0.0));
    }
}
