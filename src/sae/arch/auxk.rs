//! AuxK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): the
//! `k_aux` most active *dead* latents are asked to reconstruct the residual the
//! live ones left, which gives dead latents a gradient. `k_aux = d_in / 2`, and
//! the loss is scaled down while fewer latents than that are dead, as sparsify does.

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::sae::architecture::scatter_dense;
use crate::sae::architecture::{decode, encoder_pre, step_variance, Losses, StepContext};
use crate::sae::config::SaeConfig;
use crate::sae::weights::SaeWeights;

/// The latents AuxK uses for one batch.
pub struct AuxkSelection {
    /// `[batch, k_aux]` pre-activations of the chosen dead latents.
    pub values: Tensor,
    /// `[batch, k_aux]` their indices.
    pub indices: Tensor,
    /// `min(dead / (d_in / 2), 1)`.
    pub scale: f64,
}

/// Picks the top dead latents of `pre` `[batch, d_sae]`; `None` when no latent is dead.
pub fn select_dead(pre: &Tensor, dead_mask: &Tensor, d_in: i64) -> Result<Option<AuxkSelection>> {
    let dead = dead_mask.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    if dead == 0 {
        return Ok(None);
    }
    let k_aux_base = (d_in / 2).max(1);
    let k_aux = k_aux_base.min(dead);
    let live = dead_mask.f_logical_not()?;
    let masked = pre.f_masked_fill(&live, f64::NEG_INFINITY)?;
    let (values, indices) = masked.f_topk(k_aux, -1, true, false)?;
    Ok(Some(AuxkSelection {
        values,
        indices,
        scale: (dead as f64 / k_aux_base as f64).min(1.0),
    }))
}

/// `scale · ‖ê − r‖² / total_variance`, where `ê` is the dead latents'
/// reconstruction (no decoder bias) and `r` the (detached) residual.
pub fn auxk_loss(
    e_hat: &Tensor,
    residual: &Tensor,
    scale: f64,
    total_variance: &Tensor,
) -> Result<Tensor> {
    Ok(e_hat
        .f_sub(&residual.f_detach()?)?
        .f_square()?
        .f_sum(Kind::Float)?
        .f_div(total_variance)?
        .f_mul_scalar(scale)?)
}

/// The TopK-family loss of raw inputs `x`: pre-activations in the step's
/// compute kind, the latents `select(pre, k)` keeps, then [`fvu_auxk_loss`].
pub fn topk_family_loss(
    w: &SaeWeights,
    cfg: &SaeConfig,
    x: &Tensor,
    ctx: &StepContext,
    select: fn(&Tensor, usize) -> Result<Tensor>,
) -> Result<Losses> {
    let k = ctx.k.map_or_else(|| cfg.require_k(), Ok)?;
    let pre = encoder_pre(w, cfg, x, ctx.compute_kind)?;
    let acts = select(&pre, k)?;
    fvu_auxk_loss(w, x, &pre, acts, ctx)
}

/// The TopK-family training loss with autograd: `FVU + α·AuxK` for the
/// dense activations `acts` `[batch, d_sae]` chosen from `pre`.
pub fn fvu_auxk_loss(
    w: &SaeWeights,
    x: &Tensor,
    pre: &Tensor,
    acts: Tensor,
    ctx: &StepContext,
) -> Result<Losses> {
    let recon = decode(w, &acts)?;
    let tv = step_variance(x, ctx)?;
    let residual = x.f_sub(&recon)?;
    let fvu = residual.f_square()?.f_sum(Kind::Float)?.f_div(&tv)?;
    let mut aux = None;
    if let Some(dead) = &ctx.dead_mask {
        if let Some(sel) = select_dead(pre, dead, w.d_in())? {
            let aux_acts = scatter_dense(&sel.values.f_relu()?, &sel.indices, w.d_sae())?;
            let e_hat = aux_acts.f_matmul(&w.w_dec)?;
            aux = Some(auxk_loss(&e_hat, &residual, sel.scale, &tv)?.f_mul_scalar(ctx.auxk_alpha)?);
        }
    }
    let total = match &aux {
        Some(a) => fvu.f_add(a)?,
        None => fvu,
    };
    Ok(Losses {
        total,
        recon,
        acts,
        sparsity: None,
        aux,
    })
}
