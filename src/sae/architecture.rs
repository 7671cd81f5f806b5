//! What every SAE architecture provides, and the parts they share: the
//! encoder pre-activations, the decoder, and a training step that takes its
//! gradients from libtorch's autograd. An architecture with a faster
//! hand-written backward (TopK) overrides [`Architecture::train_step`].

use tch::{Kind, Tensor};

use super::config::SaeConfig;
use super::weights::SaeWeights;
use crate::error::Result;

/// Hyperparameters of a training step, after schedules are applied.
#[derive(Debug)]
pub struct StepContext {
    /// Active latents per token (TopK) or on average per token (BatchTopK).
    pub k: Option<usize>,
    /// Sparsity penalty weight at this step (L1 for standard and gated, L0 for
    /// JumpReLU), warm-up included.
    pub sparsity_coefficient: f64,
    /// JumpReLU straight-through bandwidth ε.
    pub bandwidth: f64,
    /// Weight of the AuxK loss on dead latents (TopK, BatchTopK).
    pub auxk_alpha: f64,
    /// `[d_sae]` bool: latents that have not fired for the dead-latent window.
    pub dead_mask: Option<Tensor>,
    /// Kind of the encoder matmul: f32, or bf16 with f32 master weights.
    pub compute_kind: Kind,
    /// Take the sparse TopK path where the architecture has one.
    pub sparse: bool,
    /// BatchTopK: how fast the inference threshold follows the batches.
    pub threshold_momentum: f64,
    /// The denominator of the fraction of variance unexplained when it is not
    /// this batch's own total variance: in a data-parallel step, the whole
    /// batch's, scaled by this rank's share of its rows.
    pub total_variance: Option<f64>,
}

impl StepContext {
    /// Defaults for tests and simple uses: f32, no dead latents, sparse on.
    pub fn new(k: Option<usize>, sparsity_coefficient: f64) -> Self {
        StepContext {
            k,
            sparsity_coefficient,
            bandwidth: 0.001,
            auxk_alpha: 1.0 / 32.0,
            dead_mask: None,
            compute_kind: Kind::Float,
            sparse: true,
            threshold_momentum: 0.01,
            total_variance: None,
        }
    }
}

/// A training loss built with autograd.
pub struct Losses {
    /// Scalar loss to minimise (graph attached).
    pub total: Tensor,
    /// `[batch, d_in]` reconstruction.
    pub recon: Tensor,
    /// `[batch, d_sae]` feature activations (for L0 and firing counts).
    pub acts: Tensor,
    /// Scalar sparsity penalty (already weighted), if any.
    pub sparsity: Option<Tensor>,
    /// Scalar auxiliary loss (already weighted), if any.
    pub aux: Option<Tensor>,
}

/// What one training step measured, and its gradients.
pub struct StepOutput {
    pub loss: f64,
    /// Mean squared error per element.
    pub mse: f64,
    /// Fraction of variance unexplained in this batch.
    pub fvu: f64,
    /// Mean number of active latents per row.
    pub l0: f64,
    pub sparsity_loss: f64,
    pub aux_loss: f64,
    /// `[d_sae]` f32: rows on which each latent fired.
    pub fire_counts: Tensor,
    /// Gradients, in the order of [`SaeWeights::trainable`].
    pub grads: Vec<Tensor>,
}

/// One SAE architecture.
pub trait Architecture: Send + Sync {
    /// The `architecture` string of the registry and of a training config.
    fn name(&self) -> &'static str;

    /// Whether the config must give `k`.
    fn needs_k(&self) -> bool {
        false
    }

    /// Whether decoder rows are kept at unit norm during training.
    fn unit_norm_decoder(&self) -> bool {
        true
    }

    /// Whether `b_dec` is subtracted from inputs by default.
    fn default_apply_b_dec_to_input(&self) -> bool {
        true
    }

    /// Adds the architecture's own parameters to freshly initialised weights.
    fn init_extra(&self, _weights: &mut SaeWeights) -> Result<()> {
        Ok(())
    }

    /// The sparsity coefficient a training run starts from (inputs
    /// normalised to mean norm √d_in); 0 where sparsity is structural.
    fn default_sparsity_coefficient(&self) -> f64 {
        0.0
    }

    /// The tensors a SAELens file holds for this architecture besides
    /// `W_enc`, `W_dec` and `b_dec`. May rewrite `cfg` where SAELens knows
    /// the SAE under another architecture (BatchTopK is saved as JumpReLU).
    fn saved_tensors(
        &self,
        w: &SaeWeights,
        _cfg: &mut SaeConfig,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        Ok(vec![("b_enc", w.b_enc.shallow_clone())])
    }

    /// Reads back what [`Architecture::saved_tensors`] wrote, by name.
    fn load_tensors(
        &self,
        w: &mut SaeWeights,
        take: &mut dyn FnMut(&str) -> Result<Tensor>,
    ) -> Result<()> {
        w.b_enc = take("b_enc")?;
        Ok(())
    }

    /// `[batch, d_sae]` feature activations of `x` `[batch, d_in]` at inference.
    fn encode(&self, w: &SaeWeights, cfg: &SaeConfig, x: &Tensor) -> Result<Tensor>;

    /// The training loss with its graph.
    fn loss(
        &self,
        w: &SaeWeights,
        cfg: &SaeConfig,
        x: &Tensor,
        ctx: &StepContext,
    ) -> Result<Losses>;

    /// One step's metrics and gradients. The default runs [`Architecture::loss`]
    /// through autograd.
    fn train_step(
        &self,
        w: &mut SaeWeights,
        cfg: &SaeConfig,
        x: &Tensor,
        ctx: &StepContext,
    ) -> Result<StepOutput> {
        autograd_step(self, w, cfg, x, ctx)
    }
}

/// `x - b_dec` when the config subtracts the decoder bias, else `x`.
pub fn encoder_input(w: &SaeWeights, cfg: &SaeConfig, x: &Tensor) -> Result<Tensor> {
    Ok(if cfg.apply_b_dec_to_input {
        x.f_sub(&w.b_dec)?
    } else {
        x.shallow_clone()
    })
}

/// `[batch, d_sae]` pre-activations of raw inputs `x`: [`encoder_input`]
/// then [`pre_activations`], the matmul in `kind`.
pub fn encoder_pre(w: &SaeWeights, cfg: &SaeConfig, x: &Tensor, kind: Kind) -> Result<Tensor> {
    pre_activations(&encoder_input(w, cfg, x)?, &w.w_enc, &w.b_enc, kind)
}

/// `[batch, d_sae]` = `x_in · W_encᵀ + b_enc`, the matmul in `kind` (f32 master
/// weights are cast for bf16 compute; the result is f32).
pub fn pre_activations(
    x_in: &Tensor,
    w_enc: &Tensor,
    b_enc: &Tensor,
    kind: Kind,
) -> Result<Tensor> {
    if kind == Kind::Float {
        return Ok(b_enc.f_addmm(x_in, &w_enc.f_tr()?)?);
    }
    let low = x_in
        .f_to_kind(kind)?
        .f_matmul(&w_enc.f_to_kind(kind)?.f_tr()?)?;
    Ok(low.f_to_kind(Kind::Float)?.f_add(b_enc)?)
}

/// An optional parameter an architecture needs when saving.
pub fn required<'a>(t: &'a Option<Tensor>, name: &str) -> Result<&'a Tensor> {
    t.as_ref()
        .ok_or_else(|| crate::error::Error::MissingTensor {
            name: name.into(),
            source_desc: "the SAE being saved".into(),
        })
}

/// `[batch, d_sae]`: `values` scattered at `indices`, zero elsewhere.
pub fn scatter_dense(values: &Tensor, indices: &Tensor, d_sae: i64) -> Result<Tensor> {
    let rows = values.size()[0];
    Ok(
        Tensor::f_zeros([rows, d_sae], (values.kind(), values.device()))?
            .f_scatter(1, indices, values)?,
    )
}

/// `[batch, d_in]` = `acts · W_dec + b_dec` for dense `acts` `[batch, d_sae]`.
pub fn decode(w: &SaeWeights, acts: &Tensor) -> Result<Tensor> {
    Ok(w.b_dec.f_addmm(acts, &w.w_dec)?)
}

/// The FVU's denominator for `x` under `ctx`: its override, or
/// [`total_variance`].
pub fn step_variance(x: &Tensor, ctx: &StepContext) -> Result<Tensor> {
    match ctx.total_variance {
        Some(v) => Ok(Tensor::from(v.max(1e-12) as f32).f_to_device(x.device())?),
        None => total_variance(x),
    }
}

/// Σ over the batch of squared deviations from the batch mean: the
/// denominator of the fraction of variance unexplained.
pub fn total_variance(x: &Tensor) -> Result<Tensor> {
    let centred = x.f_sub(&x.f_mean_dim([0i64].as_slice(), true, Kind::Float)?)?;
    Ok(centred.f_square()?.f_sum(Kind::Float)?.f_clamp_min(1e-12)?)
}

/// Mean over rows of Σ over features of squared error (SAELens's training MSE).
pub fn summed_squared_error(recon: &Tensor, x: &Tensor) -> Result<Tensor> {
    Ok(recon
        .f_sub(x)?
        .f_square()?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
        .f_mean(Kind::Float)?)
}

/// Losses of `‖x̂ − x‖² + penalty` with `x̂` decoded from `acts`.
pub fn penalised_mse(w: &SaeWeights, x: &Tensor, acts: Tensor, penalty: Tensor) -> Result<Losses> {
    let recon = decode(w, &acts)?;
    let total = summed_squared_error(&recon, x)?.f_add(&penalty)?;
    Ok(Losses {
        total,
        recon,
        acts,
        sparsity: Some(penalty),
        aux: None,
    })
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.f_double_value(&[])?)
}

/// Reconstruction metrics shared by every step: (mse per element, fvu).
pub fn recon_metrics(recon: &Tensor, x: &Tensor) -> Result<(f64, f64)> {
    tch::no_grad(|| {
        let sq = recon.f_sub(x)?.f_square()?.f_sum(Kind::Float)?;
        let mse = scalar(&sq)? / x.numel() as f64;
        let fvu = scalar(&sq)? / scalar(&total_variance(x)?)?;
        Ok((mse, fvu))
    })
}

/// The autograd training step: loss, backward, gradients collected and cleared.
pub fn autograd_step<A: Architecture + ?Sized>(
    arch: &A,
    w: &mut SaeWeights,
    cfg: &SaeConfig,
    x: &Tensor,
    ctx: &StepContext,
) -> Result<StepOutput> {
    Ok(autograd_step_with_acts(arch, w, cfg, x, ctx)?.0)
}

/// [`autograd_step`], also returning the detached `[batch, d_sae]` activations.
pub fn autograd_step_with_acts<A: Architecture + ?Sized>(
    arch: &A,
    w: &mut SaeWeights,
    cfg: &SaeConfig,
    x: &Tensor,
    ctx: &StepContext,
) -> Result<(StepOutput, Tensor)> {
    w.set_requires_grad(true);
    let losses = arch.loss(w, cfg, x, ctx)?;
    losses.total.f_backward()?;
    let mut grads = Vec::new();
    for (_, t) in w.trainable_mut() {
        let g = t.f_grad()?;
        let g = if g.defined() {
            g.f_detach()?.copy()
        } else {
            t.f_zeros_like()?
        };
        grads.push(g);
        t.zero_grad();
    }
    w.set_requires_grad(false);
    let (mse, fvu) = recon_metrics(&losses.recon.f_detach()?, x)?;
    let acts = losses.acts.f_detach()?;
    let active = acts.f_gt(0.0)?;
    let l0 = scalar(&active.f_sum(Kind::Float)?)? / x.size()[0] as f64;
    let fire_counts = active.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?;
    let value = |t: &Option<Tensor>| -> Result<f64> {
        t.as_ref().map_or(Ok(0.0), |t| scalar(&t.f_detach()?))
    };
    let out = StepOutput {
        loss: scalar(&losses.total.f_detach()?)?,
        mse,
        fvu,
        l0,
        sparsity_loss: value(&losses.sparsity)?,
        aux_loss: value(&losses.aux)?,
        fire_counts,
        grads,
    };
    Ok((out, acts))
}

/// Hand-checkable weights shared by the architectures' unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use tch::Tensor;

    use super::super::config::SaeConfig;
    use super::super::weights::SaeWeights;

    pub fn t(values: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(values).reshape(shape)
    }

    /// d_in 2, d_sae 3: encoder rows (1,0), (0,1), (1,1); decoder rows (1,0),
    /// (0,2), (1,1); `b_enc`, `b_dec` as given.
    pub fn tiny(b_enc: [f32; 3], b_dec: [f32; 2]) -> SaeWeights {
        let mut w = SaeWeights::from_matrices(
            t(&[1., 0., 0., 1., 1., 1.], &[3, 2]),
            t(&[1., 0., 0., 2., 1., 1.], &[3, 2]),
        );
        w.b_enc = t(&b_enc, &[3]);
        w.b_dec = t(&b_dec, &[2]);
        w
    }

    pub fn cfg(arch: &str, k: Option<usize>, apply_b_dec: bool) -> SaeConfig {
        let mut cfg = SaeConfig::new(arch, 2, 3);
        cfg.k = k;
        cfg.apply_b_dec_to_input = apply_b_dec;
        cfg
    }

    pub fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap()
    }

    pub fn assert_close(got: &Tensor, want: &[f32]) {
        let got = values(got);
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }
}
