//! Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with
//! Gated Sparse Autoencoders"): a gate decides which latents are active and a
//! magnitude path, sharing the gate's encoder rows rescaled by `exp(r_mag)`,
//! decides how much:
//! `f = H(π_gate)·ReLU(π_mag)`, `π_gate = W_enc·x̃ + b_gate`,
//! `π_mag = exp(r_mag)⊙(W_enc·x̃) + b_mag`, `x̃ = x − b_dec`.
//! Loss: `‖x̂ − x‖² + λ·Σᵢ ReLU(π_gate)ᵢ·‖W_dec[i]‖ + ‖x − x̂_aux‖²`, where
//! `x̂_aux` decodes `ReLU(π_gate)` through a frozen copy of the decoder, which
//! is what trains the gate. SAELens names the gate bias `b_gate`; saescope
//! keeps it in `b_enc`.

use tch::{Kind, Tensor};

use super::standard::weighted_l1;
use crate::error::{Error, Result};
use crate::sae::architecture::required;
use crate::sae::architecture::{
    decode, encoder_input, pre_activations, summed_squared_error, Architecture, Losses, StepContext,
};
use crate::sae::config::SaeConfig;
use crate::sae::weights::SaeWeights;

pub struct Gated;

struct Paths {
    /// `[batch, d_sae]` π_gate.
    gate: Tensor,
    /// `[batch, d_sae]` π_mag.
    mag: Tensor,
}

fn paths(w: &SaeWeights, cfg: &SaeConfig, x: &Tensor, kind: Kind) -> Result<Paths> {
    let missing = |name: &str| Error::MissingTensor {
        name: name.into(),
        source_desc: "a gated SAE".into(),
    };
    let r_mag = w.r_mag.as_ref().ok_or_else(|| missing("r_mag"))?;
    let b_mag = w.b_mag.as_ref().ok_or_else(|| missing("b_mag"))?;
    let zero_bias = Tensor::f_zeros([w.d_sae()], (Kind::Float, w.device()))?;
    let shared = pre_activations(&encoder_input(w, cfg, x)?, &w.w_enc, &zero_bias, kind)?;
    Ok(Paths {
        gate: shared.f_add(&w.b_enc)?,
        mag: shared.f_mul(&r_mag.f_exp()?)?.f_add(b_mag)?,
    })
}

fn activations(p: &Paths) -> Result<Tensor> {
    Ok(p.gate
        .f_gt(0.0)?
        .f_to_kind(Kind::Float)?
        .f_mul(&p.mag.f_relu()?)?)
}

impl Architecture for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn init_extra(&self, w: &mut SaeWeights) -> Result<()> {
        let opts = (Kind::Float, w.device());
        w.r_mag = Some(Tensor::f_zeros([w.d_sae()], opts)?);
        w.b_mag = Some(Tensor::f_zeros([w.d_sae()], opts)?);
        Ok(())
    }

    fn default_sparsity_coefficient(&self) -> f64 {
        1.0
    }

    /// SAELens names the gate's bias `b_gate` (there is no `b_enc`).
    fn saved_tensors(
        &self,
        w: &SaeWeights,
        _cfg: &mut SaeConfig,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        Ok(vec![
            ("b_gate", w.b_enc.shallow_clone()),
            ("r_mag", required(&w.r_mag, "r_mag")?.shallow_clone()),
            ("b_mag", required(&w.b_mag, "b_mag")?.shallow_clone()),
        ])
    }

    fn load_tensors(
        &self,
        w: &mut SaeWeights,
        take: &mut dyn FnMut(&str) -> Result<Tensor>,
    ) -> Result<()> {
        w.b_enc = take("b_gate")?;
        w.r_mag = Some(take("r_mag")?);
        w.b_mag = Some(take("b_mag")?);
        Ok(())
    }

    fn encode(&self, w: &SaeWeights, cfg: &SaeConfig, x: &Tensor) -> Result<Tensor> {
        activations(&paths(w, cfg, x, Kind::Float)?)
    }

    fn loss(
        &self,
        w: &SaeWeights,
        cfg: &SaeConfig,
        x: &Tensor,
        ctx: &StepContext,
    ) -> Result<Losses> {
        let p = paths(w, cfg, x, ctx.compute_kind)?;
        let acts = activations(&p)?;
        let recon = decode(w, &acts)?;
        let gate_acts = p.gate.f_relu()?;
        let sparsity = weighted_l1(&gate_acts, w, ctx.sparsity_coefficient)?;
        let frozen_recon = w
            .b_dec
            .f_detach()?
            .f_addmm(&gate_acts, &w.w_dec.f_detach()?)?;
        let aux = summed_squared_error(&frozen_recon, x)?;
        let total = summed_squared_error(&recon, x)?
            .f_add(&sparsity)?
            .f_add(&aux)?;
        Ok(Losses {
            total,
            recon,
            acts,
            sparsity: Some(sparsity),
            aux: Some(aux),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::architecture::decode;
    use crate::sae::architecture::testutil::{assert_close, cfg, t, tiny};

    #[test]
    fn gate_picks_latents_and_magnitude_path_sizes_them() {
        // x − b_dec = (1, 1); shared W_enc·x̃ = (1, 1, 2).
        // gate = (1, −1, 2.5) → open, closed, open;
        // mag = (1·1 + 1, 1·2 + 0, 2·3 − 5) = (2, 2, 1).
        let mut w = tiny([0.0, -2.0, 0.5], [0.5, 0.0]);
        w.r_mag = Some(t(&[0.0, 2f32.ln(), 3f32.ln()], &[3]));
        w.b_mag = Some(t(&[1.0, 0.0, -5.0], &[3]));
        let acts = Gated
            .encode(&w, &cfg("gated", None, true), &t(&[1.5, 1.0], &[1, 2]))
            .unwrap();
        assert_close(&acts, &[2.0, 0.0, 1.0]);
        assert_close(&decode(&w, &acts).unwrap(), &[3.5, 1.0]);
    }
}
