//! One optimiser step of one SAE: its gradients (from its architecture, and
//! averaged over the ranks of a data-parallel job), removal of the
//! decoder-gradient component parallel to each unit-norm decoder row,
//! global-norm clipping, Adam with the LR schedule, decoder renormalisation,
//! dead-latent tracking and a metrics line.

use tch::{Device, Kind, Tensor};

use super::adam::Adam;
use super::config::SaeSpec;
use super::config::TrainConfig;
use super::dead::DeadLatents;
use super::metrics::MetricsLog;
use super::metrics::StepRecord;
use super::schedule::Schedule;
use crate::dist::ProcessGroup;
use crate::error::{Error, Result};
use crate::sae::Sae;
use crate::sae::{StepContext, StepOutput};

/// One SAE being trained.
pub(super) struct SaeRun {
    pub(super) spec: SaeSpec,
    /// Its place among the config's SAEs.
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) hook_index: usize,
    pub(super) device: Device,
    pub(super) sae: Sae,
    pub(super) scale: f64,
    pub(super) adam: Adam,
    pub(super) dead: DeadLatents,
    /// `[d_sae]` f32 rows each latent fired on, over the whole run.
    pub(super) fire_counts: Tensor,
    pub(super) metrics: Option<MetricsLog>,
    pub(super) last: Option<StepRecord>,
}

/// The learning rate a spec trains at: the config's, or sparsify's rule
/// `2e-4 / √(d_sae / 2¹⁴)`.
pub fn learning_rate(cfg: &TrainConfig, d_sae: usize) -> f64 {
    cfg.optim
        .lr
        .unwrap_or_else(|| 2e-4 / (d_sae as f64 / 16384.0).sqrt())
}

/// One optimiser step of `run` on its rows of `batch`. With a data-parallel
/// `group`, the rows are this rank's share, and the gradients (averaged),
/// fire counts (summed) and metrics (averaged) are reduced over the ranks
/// before anything depends on them, so every rank takes the same step as
/// one process would on the whole batch. `step_rows` is the whole step's
/// rows over all ranks (the trainer knows it already).
pub(super) fn train_step(
    cfg: &TrainConfig,
    run: &mut SaeRun,
    batch: &[Tensor],
    (step, tokens_after, step_rows): (u64, u64, i64),
    compute_kind: Kind,
    group: Option<&ProcessGroup>,
) -> Result<StepRecord> {
    let schedule = Schedule {
        lr: learning_rate(cfg, run.sae.cfg.d_sae),
        warmup_steps: cfg.optim.lr_warmup_steps,
        decay_fraction: cfg.optim.lr_decay_fraction,
        sparsity_warmup_fraction: cfg.optim.sparsity_warmup_fraction,
        total_steps: cfg.total_steps(),
    };
    let x = batch[run.hook_index]
        .f_to_device(run.device)?
        .f_mul_scalar(run.scale)?;
    let rows = x.size()[0];
    let sparsity_coefficient = run.spec.sparsity_coefficient() * schedule.sparsity_factor(step);
    let ctx = StepContext {
        k: run.spec.k,
        sparsity_coefficient,
        bandwidth: run.spec.bandwidth,
        auxk_alpha: run.spec.auxk_alpha,
        dead_mask: Some(run.dead.mask()?),
        compute_kind,
        sparse: cfg.run.sparse_topk,
        threshold_momentum: run.spec.threshold_momentum,
        total_variance: match group {
            Some(g) => Some(shared_variance(g, &x)?),
            None => None,
        },
    };
    let arch = run.spec.architecture.implementation();
    let mut out = arch.train_step(&mut run.sae.weights, &run.sae.cfg, &x, &ctx)?;
    let rows = match group {
        Some(g) => {
            reduce_over_ranks(g, &mut out, rows, step_rows)?;
            step_rows
        }
        None => rows,
    };
    if !out.loss.is_finite() {
        return Err(Error::Training(format!(
            "SAE `{}`: loss is {} at step {step}; lower the learning rate or check the activations",
            run.name, out.loss
        )));
    }
    let mut grads = out.grads;
    let unit_norm = arch.unit_norm_decoder();
    tch::no_grad(|| -> Result<()> {
        if unit_norm {
            // Remove the component of each decoder row's gradient along the row.
            let w_dec = &run.sae.weights.w_dec;
            let along =
                grads[2]
                    .f_mul(w_dec)?
                    .f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?;
            grads[2] = grads[2].f_sub(&along.f_mul(w_dec)?)?;
        }
        if cfg.optim.grad_clip > 0.0 {
            let total = grads
                .iter()
                .map(|g| g.f_square()?.f_sum(Kind::Float))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let norm = Tensor::f_stack(&total, 0)?
                .f_sum(Kind::Float)?
                .f_sqrt()?
                .f_double_value(&[])?;
            if norm > cfg.optim.grad_clip {
                let factor = cfg.optim.grad_clip / norm;
                for g in grads.iter_mut() {
                    let _ = g.f_mul_scalar_(factor)?;
                }
            }
        }
        Ok(())
    })?;
    let lr = schedule.lr(step);
    {
        let mut params: Vec<&mut Tensor> = run
            .sae
            .weights
            .trainable_mut()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        run.adam.update(&mut params, &grads, lr)?;
    }
    if unit_norm {
        run.sae.weights.normalize_decoder_rows()?;
    }
    run.dead.update(&out.fire_counts.f_gt(0.0)?, rows)?;
    let _ = run.fire_counts.f_add_(&out.fire_counts)?;
    let record = StepRecord {
        step,
        tokens: tokens_after,
        loss: out.loss,
        mse: out.mse,
        fvu: out.fvu,
        explained_variance: 1.0 - out.fvu,
        l0: out.l0,
        dead_fraction: run.dead.fraction()?,
        lr,
        sparsity_coefficient,
        sparsity_loss: out.sparsity_loss,
        aux_loss: out.aux_loss,
    };
    if let Some(m) = run.metrics.as_mut() {
        m.write(&record)?;
    }
    run.last = Some(record.clone());
    Ok(record)
}

/// The whole batch's total variance (Σ of squared deviations from its mean,
/// over every rank's rows) times this rank's share of the rows: a rank's FVU
/// with it, averaged over the ranks by rows, is the whole batch's FVU.
fn shared_variance(group: &ProcessGroup, x: &Tensor) -> Result<f64> {
    let x = x.f_to_kind(Kind::Double)?;
    let rows = x.size()[0];
    let sums = Tensor::f_cat(
        &[
            x.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?,
            x.f_square()?.f_sum(Kind::Double)?.f_view([1])?,
            Tensor::from_slice(&[rows as f64]).f_to_device(x.device())?,
        ],
        0,
    )?;
    let mut sums = sums.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    group.all_reduce_sum(&mut sums)?;
    let sums = Vec::<f64>::try_from(&sums)?;
    let (d, n) = (sums.len() - 2, sums[sums.len() - 1]);
    let mean_sq: f64 = sums[..d].iter().map(|s| (s / n) * (s / n)).sum();
    let total = sums[d] - n * mean_sq;
    Ok(total * rows as f64 / n)
}

/// Averages `out`'s gradients and metrics over the ranks, weighted by each
/// rank's `rows` of the step's `total` (so that shares of unequal size give
/// the whole batch's mean), and sums its fire counts. Every rank calls the
/// same collectives in the same order (one per gradient, then the counts,
/// then one for the metrics).
fn reduce_over_ranks(
    group: &ProcessGroup,
    out: &mut StepOutput,
    rows: i64,
    total: i64,
) -> Result<()> {
    let weight = rows as f64 / total as f64;
    for g in out.grads.iter_mut() {
        *g = g.f_mul_scalar(weight)?.f_contiguous()?;
        group.all_reduce_sum(g)?;
    }
    out.fire_counts = out.fire_counts.f_contiguous()?;
    group.all_reduce_sum(&mut out.fire_counts)?;
    let metrics = [
        out.loss,
        out.mse,
        out.fvu,
        out.l0,
        out.sparsity_loss,
        out.aux_loss,
    ];
    let mut t = Tensor::from_slice(&metrics.map(|m| m * weight));
    group.all_reduce_sum(&mut t)?;
    let mean = Vec::<f64>::try_from(&t)?;
    (out.loss, out.mse, out.fvu, out.l0) = (mean[0], mean[1], mean[2], mean[3]);
    (out.sparsity_loss, out.aux_loss) = (mean[4], mean[5]);
    Ok(())
}
