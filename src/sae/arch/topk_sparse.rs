//! The fast TopK training step: forward and backward written by hand so that
//! everything after the dense encoder matmul touches only the k active latents
//! of each token (and the AuxK latents), never a `[batch, d_sae]` gradient.
//!
//! With `L = ‖x̂ − x‖²/V + α·s·‖ê − r‖²/V` (V the batch's total variance,
//! `x̂ = Σⱼ aⱼ·W_dec[iⱼ] + b_dec`, `ê` the dead latents' reconstruction,
//! `r = x − x̂` held constant):
//! - `∂L/∂x̂ = 2(x̂ − x)/V`, `∂L/∂ê = 2α·s(ê − r)/V`;
//! - `∂L/∂W_dec[i] = Σ aⱼ·∂L/∂x̂` over the rows where latent i is active
//!   (libtorch's embedding-bag weight gradient: a scatter of k rows per token);
//! - `∂L/∂aⱼ = ∂L/∂x̂ · W_dec[iⱼ]` (embedding-bag per-sample-weight gradient),
//!   zero where the ReLU clipped;
//! - `∂L/∂W_enc[i] = Σ ∂L/∂aⱼ · (x − b_dec)` (the same scatter, with the input
//!   as the "gradient"), `∂L/∂b_enc[i] = Σ ∂L/∂aⱼ`, and `b_dec` also gets
//!   `−(∂L/∂b_enc)·W_enc` through the encoder input.
//!
//! libtorch offers no custom autograd function from Rust, so these are called
//! directly; `tests` checks them against the dense autograd path.

use tch::{Kind, Tensor};

use super::auxk::select_dead;
use crate::error::Result;
use crate::sae::architecture::{
    encoder_input, pre_activations, step_variance, StepContext, StepOutput,
};
use crate::sae::config::SaeConfig;
use crate::sae::weights::SaeWeights;

/// Embedding-bag sum mode.
const MODE_SUM: i64 = 0;
/// No padding index.
const NO_PADDING: i64 = -1;

/// Fixed-size bags of `k` latents for each of `rows` tokens.
struct Bags {
    /// `[rows * k]` latent indices.
    indices: Tensor,
    /// `[rows]` start of each bag.
    offsets: Tensor,
    /// `[rows * k]` the bag of each index.
    offset2bag: Tensor,
    /// `[rows]` all `k`.
    bag_size: Tensor,
    /// Unused in sum mode; required by the op's signature.
    max_indices: Tensor,
}

impl Bags {
    fn new(indices: &Tensor) -> Result<Self> {
        let (rows, k) = (indices.size()[0], indices.size()[1]);
        let opts = (Kind::Int64, indices.device());
        Ok(Bags {
            indices: indices.f_reshape([-1])?.f_contiguous()?,
            offsets: Tensor::f_arange_start_step(0, rows * k, k, opts)?,
            offset2bag: Tensor::f_arange(rows, opts)?.f_repeat_interleave_self_int(k, 0, None)?,
            bag_size: Tensor::f_full([rows], k, opts)?,
            max_indices: Tensor::f_zeros([rows], opts)?,
        })
    }

    /// `[rows, d]` = Σⱼ weights[row, j] · table[indices[row, j]].
    fn gather_sum(&self, table: &Tensor, weights: &Tensor) -> Result<Tensor> {
        let (out, _, _, _) = Tensor::f_embedding_bag(
            table,
            &self.indices,
            &self.offsets,
            false,
            MODE_SUM,
            false,
            Some(weights.f_reshape([-1])?),
            false,
        )?;
        Ok(out)
    }

    /// `[n_rows, d]` gradient of [`Bags::gather_sum`] with respect to `table`
    /// for an upstream gradient `grad` `[rows, d]`.
    fn table_grad(&self, grad: &Tensor, weights: &Tensor, n_rows: i64) -> Result<Tensor> {
        Ok(Tensor::f_internal_embedding_bag_dense_backward(
            &grad.f_contiguous()?,
            &self.indices,
            &self.offset2bag,
            &self.bag_size,
            &self.max_indices,
            n_rows,
            false,
            MODE_SUM,
            Some(weights.f_reshape([-1])?.f_contiguous()?),
            NO_PADDING,
        )?)
    }

    /// `[rows, k]` gradient of [`Bags::gather_sum`] with respect to the weights.
    fn weight_grad(&self, grad: &Tensor, table: &Tensor) -> Result<Tensor> {
        let flat = Tensor::f_internal_embedding_bag_per_sample_weights_backward(
            &grad.f_contiguous()?,
            table,
            &self.indices,
            &self.offsets,
            &self.offset2bag,
            MODE_SUM,
            NO_PADDING,
        )?;
        Ok(flat.f_reshape([self.bag_size.size()[0], -1])?)
    }
}

/// One group of active latents (the TopK ones, or the AuxK ones) and the
/// gradient reaching its activations.
struct Active {
    bags: Bags,
    /// `[rows, k]` post-ReLU activations.
    acts: Tensor,
    /// `[rows, k]` ∂L/∂pre-activation (zero where the ReLU clipped).
    grad_pre: Tensor,
}

/// `[rows, k]` f32 pre-activations `x_in · W_enc[i] + b_enc[i]` of the
/// latents `indices` `[rows, k]` only.
fn exact_pre_activations(w: &SaeWeights, x_in: &Tensor, indices: &Tensor) -> Result<Tensor> {
    let dots = Bags::new(indices)?.weight_grad(x_in, &w.w_enc)?;
    let bias = w.b_enc.f_index_select(0, &indices.f_reshape([-1])?)?;
    Ok(dots.f_add(&bias.f_view_as(&dots)?)?)
}

/// A TopK training step on the sparse path (see the module doc).
pub fn sparse_topk_step(
    w: &mut SaeWeights,
    cfg: &SaeConfig,
    x: &Tensor,
    ctx: &StepContext,
) -> Result<StepOutput> {
    tch::no_grad(|| step(w, cfg, x, ctx))
}

fn step(w: &SaeWeights, cfg: &SaeConfig, x: &Tensor, ctx: &StepContext) -> Result<StepOutput> {
    let k = ctx.k.map_or_else(|| cfg.require_k(), Ok)?;
    let rows = x.size()[0];
    let d_sae = w.d_sae();
    let x_in = encoder_input(w, cfg, x)?;
    // `pre` `[batch, d_sae]` only chooses latents; the chosen values are f32.
    let (pre, values, indices) = if ctx.compute_kind == Kind::Float {
        let pre = pre_activations(&x_in, &w.w_enc, &w.b_enc, Kind::Float)?;
        let (values, indices) = pre.f_topk(k as i64, -1, true, false)?;
        (pre, values, indices)
    } else {
        // Low-precision scores pick the latents (a near-tie may go either
        // way); their pre-activations are then recomputed exactly in f32.
        let pre = x_in
            .f_to_kind(ctx.compute_kind)?
            .f_matmul(&w.w_enc.f_to_kind(ctx.compute_kind)?.f_tr()?)?
            .f_add(&w.b_enc.f_to_kind(ctx.compute_kind)?)?;
        let (_, indices) = pre.f_topk(k as i64, -1, true, false)?;
        let values = exact_pre_activations(w, &x_in, &indices)?;
        (pre, values, indices)
    };
    let acts = values.f_relu()?;
    let bags = Bags::new(&indices)?;
    let recon = bags.gather_sum(&w.w_dec, &acts)?.f_add(&w.b_dec)?;

    let tv = step_variance(x, ctx)?;
    let tv_value = tv.f_double_value(&[])?;
    let diff = recon.f_sub(x)?;
    let sq_err = diff.f_square()?.f_sum(Kind::Float)?.f_double_value(&[])?;
    let fvu = sq_err / tv_value;
    // ∂L/∂x̂
    let grad_recon = diff.f_mul_scalar(2.0 / tv_value)?;

    let mut groups = vec![Active {
        grad_pre: bags
            .weight_grad(&grad_recon, &w.w_dec)?
            .f_mul(&values.f_gt(0.0)?)?,
        bags,
        acts,
    }];
    let mut grad_w_dec = groups[0]
        .bags
        .table_grad(&grad_recon, &groups[0].acts, d_sae)?;
    let mut aux_loss = 0.0;
    if let Some(dead) = &ctx.dead_mask {
        if let Some(mut sel) = select_dead(&pre, dead, w.d_in())? {
            if ctx.compute_kind != Kind::Float {
                sel.values = exact_pre_activations(w, &x_in, &sel.indices)?;
            }
            let aux_bags = Bags::new(&sel.indices)?;
            let aux_acts = sel.values.f_relu()?;
            let e_hat = aux_bags.gather_sum(&w.w_dec, &aux_acts)?;
            // ê − r = ê + (x̂ − x)
            let aux_diff = e_hat.f_add(&diff)?;
            let aux_sq = aux_diff
                .f_square()?
                .f_sum(Kind::Float)?
                .f_double_value(&[])?;
            aux_loss = ctx.auxk_alpha * sel.scale * aux_sq / tv_value;
            let grad_e_hat = aux_diff.f_mul_scalar(2.0 * ctx.auxk_alpha * sel.scale / tv_value)?;
            grad_w_dec =
                grad_w_dec.f_add(&aux_bags.table_grad(&grad_e_hat, &aux_acts, d_sae)?)?;
            groups.push(Active {
                grad_pre: aux_bags
                    .weight_grad(&grad_e_hat, &w.w_dec)?
                    .f_mul(&sel.values.f_gt(0.0)?)?,
                bags: aux_bags,
                acts: aux_acts,
            });
        }
    }

    let mut grad_w_enc = groups[0]
        .bags
        .table_grad(&x_in, &groups[0].grad_pre, d_sae)?;
    let mut grad_b_enc = Tensor::f_zeros([d_sae], (Kind::Float, x.device()))?;
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            let _ = grad_w_enc.f_add_(&g.bags.table_grad(&x_in, &g.grad_pre, d_sae)?)?;
        }
        grad_b_enc = grad_b_enc.f_index_add(0, &g.bags.indices, &g.grad_pre.f_reshape([-1])?)?;
    }
    let mut grad_b_dec = grad_recon.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?;
    if cfg.apply_b_dec_to_input {
        grad_b_dec = grad_b_dec.f_sub(
            &grad_b_enc
                .f_unsqueeze(0)?
                .f_mm(&w.w_enc)?
                .f_squeeze_dim(0)?,
        )?;
    }

    let active = groups[0].acts.f_gt(0.0)?;
    let l0 = active.f_sum(Kind::Float)?.f_double_value(&[])? / rows as f64;
    let fire_counts = Tensor::f_zeros([d_sae], (Kind::Float, x.device()))?.f_index_add(
        0,
        &groups[0].bags.indices,
        &active.f_reshape([-1])?.f_to_kind(Kind::Float)?,
    )?;
    // The order of `SaeWeights::trainable()`; TopK has no other tensors.
    let grads = vec![grad_w_enc, grad_b_enc, grad_w_dec, grad_b_dec];
    Ok(StepOutput {
        loss: fvu + aux_loss,
        mse: sq_err / x.numel() as f64,
        fvu,
        l0,
        sparsity_loss: 0.0,
        aux_loss,
        fire_counts,
        grads,
    })
}
