//! `saescope eval sae`: an SAE spliced into the model on held-out text.
//!
//! For each batch of packed windows:
//! - the clean forward gives the activations at the SAE's hook and the
//!   next-token cross-entropy;
//! - the SAE's reconstruction replaces the activation (every position but the
//!   BOS, which SAEs are not trained on) and the forward continues: CE and KL
//!   to the clean next-token distribution;
//! - the same with the activation zeroed (zero ablation).
//!
//! `ce_loss_score = (CE_zero − CE_sae) / (CE_zero − CE_clean)`, as SAELens
//! defines it: 1 when splicing costs nothing, 0 when it is as bad as deleting
//! the activation. For a residual-stream hook the spliced forwards restart
//! from the hook (TransformerLens's `start_at_layer`) instead of rerunning
//! the earlier layers.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::reconstruction::{ReconstructionMetrics, ReconstructionStats};
use crate::data::corpus::Corpus;
use crate::data::packing::{windows_tensor, PackConfig, Packer};
use crate::error::{Error, Result};
use crate::hooks::names::BlockSite;
use crate::hooks::{HookContext, HookPoint, Hooks, Intervention};
use crate::io::atomic::write_atomic;
use crate::model::transformer::{ForwardInput, LogitsFor, StopAt};
use crate::model::LoadedModel;
use crate::plots::{histogram_svg, log10_densities};
use crate::sae::Sae;

#[derive(Debug, Clone)]
pub struct SaeEvalConfig {
    /// Tokens to evaluate on (rounded up to whole windows).
    pub tokens: u64,
    pub context: usize,
    /// Windows per forward pass.
    pub batch: usize,
    /// Windows of the corpus to skip first (e.g. those trained on).
    pub skip_windows: u64,
}

/// What `saescope eval sae` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaeEvalReport {
    pub model: String,
    pub hook: String,
    pub architecture: String,
    pub d_in: usize,
    pub d_sae: usize,
    pub windows: u64,
    /// Positions whose next token was scored.
    pub scored_tokens: u64,
    pub reconstruction: ReconstructionMetrics,
    pub ce_loss_clean: f64,
    pub ce_loss_with_sae: f64,
    pub ce_loss_with_ablation: f64,
    pub ce_loss_score: f64,
    /// Mean KL(clean ‖ spliced) over scored positions, in nats.
    pub kl_div_with_sae: f64,
    pub kl_div_with_ablation: f64,
}

/// Told after each batch.
pub trait EvalObserver {
    fn on_batch(&mut self, _tokens_done: u64, _tokens_total: u64) {}
}

impl EvalObserver for () {}

/// Replaces the activation at one hook (positions from `skip` on) with a given tensor.
struct Replace<'a> {
    hook: HookPoint,
    with: &'a Tensor,
    skip: i64,
}

impl Intervention for Replace<'_> {
    fn wants(&self, hook: HookPoint) -> bool {
        hook == self.hook
    }

    fn apply(&mut self, _: HookPoint, act: &Tensor, _: &HookContext) -> Result<Option<Tensor>> {
        let seq = act.size()[1];
        let new = self
            .with
            .f_to_kind(act.kind())?
            .f_reshape(act.size().as_slice())?;
        Ok(Some(Tensor::f_cat(
            &[
                act.f_narrow(1, 0, self.skip)?,
                new.f_narrow(1, self.skip, seq - self.skip)?,
            ],
            1,
        )?))
    }
}

/// Sums over scored positions of one batch: (CE, KL to clean) per variant.
struct Scores {
    ce: f64,
    kl: f64,
}

/// `[batch, seq-1]` next-token log-probs of `tokens` from logits `[batch, seq, vocab]`.
fn log_probs(logits: &Tensor) -> Result<Tensor> {
    let seq = logits.size()[1];
    Ok(logits
        .f_narrow(1, 0, seq - 1)?
        .f_to_kind(Kind::Float)?
        .f_log_softmax(-1, Kind::Float)?)
}

fn score(clean: &Tensor, other: &Tensor, targets: &Tensor) -> Result<Scores> {
    let ce = other
        .f_gather(-1, &targets.f_unsqueeze(-1)?, false)?
        .f_neg()?
        .f_sum(Kind::Double)?
        .f_double_value(&[])?;
    let kl = clean
        .f_exp()?
        .f_mul(&clean.f_sub(other)?)?
        .f_sum(Kind::Double)?
        .f_double_value(&[])?;
    Ok(Scores { ce, kl })
}

impl SaeEvalReport {
    /// Writes the report as JSON to `path` and its feature-density histogram
    /// beside it (same stem, `.svg`), atomically.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())?;
        let svg = histogram_svg(
            &log10_densities(&self.reconstruction.densities),
            50,
            &format!("feature density, {} tokens", self.reconstruction.tokens),
            "log10(fraction of tokens a latent fires on)",
        )?;
        write_atomic(&path.with_extension("svg"), svg.as_bytes())
    }
}

/// Evaluates `sae` at `hook` of `model` on `corpus`.
pub fn evaluate_sae(
    model: &LoadedModel,
    sae: &Sae,
    hook: HookPoint,
    corpus: &Corpus,
    cfg: &SaeEvalConfig,
    observer: &mut dyn EvalObserver,
) -> Result<SaeEvalReport> {
    let mcfg = model.model.config();
    let width = mcfg.hook_width(hook)?;
    if width != sae.cfg.d_in {
        return Err(Error::ShapeMismatch {
            name: format!("SAE input at `{hook}` (the hook's width)"),
            expected: vec![width as i64],
            got: vec![sae.cfg.d_in as i64],
        });
    }
    if cfg.context < 2 || cfg.batch == 0 || cfg.tokens == 0 {
        return Err(Error::InvalidArgument(
            "evaluation needs a context of at least 2 tokens, a batch and some tokens".into(),
        ));
    }
    let pack = PackConfig::for_tokenizer(&model.tokenizer, cfg.context);
    let skip = i64::from(pack.bos.is_some());
    let mut packer = Packer::new(corpus, &model.tokenizer, pack)?;
    packer.skip(cfg.skip_windows)?;
    // A residual-stream hook lets the spliced forwards start at the next block.
    let restart = match hook {
        HookPoint::Block(l, BlockSite::ResidPost) if l + 1 < mcfg.n_layers => Some(l + 1),
        HookPoint::Block(l, BlockSite::ResidPre) => Some(l),
        _ => None,
    };
    let total_windows = cfg.tokens.div_ceil(cfg.context as u64);
    let mut stats = ReconstructionStats::new(sae.cfg.d_in, sae.cfg.d_sae);
    let (mut ce_clean, mut sae_scores, mut zero_scores) = (0.0, (0.0, 0.0), (0.0, 0.0));
    let (mut windows, mut scored) = (0u64, 0u64);
    tch::no_grad(|| -> Result<()> {
        while windows < total_windows {
            let want = (total_windows - windows).min(cfg.batch as u64) as usize;
            let batch = packer.next_windows(want)?;
            if batch.is_empty() {
                break;
            }
            let tokens = windows_tensor(&batch, model.model.device())?;
            let mut run = model.model.run_with_cache(
                &ForwardInput::tokens(&tokens),
                &[hook],
                Some(LogitsFor::All),
            )?;
            let logits = run.logits.take().ok_or_else(|| {
                Error::InvalidArgument("the forward pass returned no logits".into())
            })?;
            let act = run.take_rows(hook)?;
            let seq = act.size()[1];
            let kept = act.f_narrow(1, skip, seq - skip)?.f_to_kind(Kind::Float)?;
            let (acts, recon) = sae.forward(&kept)?;
            stats.add(
                &kept.f_reshape([-1, width as i64])?,
                &acts.f_reshape([-1, sae.cfg.d_sae as i64])?,
                &recon
                    .f_reshape([-1, width as i64])?
                    .f_to_device(kept.device())?,
            )?;
            let recon = recon.f_to_device(act.device())?;
            let clean = log_probs(&logits)?;
            let targets = tokens.f_narrow(1, 1, seq - 1)?;
            ce_clean += score(&clean, &clean, &targets)?.ce;
            let full = |middle: Tensor| -> Result<Tensor> {
                Ok(Tensor::f_cat(
                    &[act.f_narrow(1, 0, skip)?, middle.f_to_kind(act.kind())?],
                    1,
                )?)
            };
            let variants = [full(recon)?, full(kept.f_zeros_like()?)?];
            for (i, replacement) in variants.iter().enumerate() {
                let other_logits = match restart {
                    Some(layer) => model.model.forward(
                        &ForwardInput {
                            start_at: Some((layer, replacement)),
                            ..ForwardInput::tokens(&tokens)
                        },
                        None,
                        &mut Hooks::new(),
                        StopAt::Logits(LogitsFor::All),
                    )?,
                    None => {
                        let mut swap = Replace {
                            hook,
                            with: replacement,
                            skip,
                        };
                        model.model.forward(
                            &ForwardInput::tokens(&tokens),
                            None,
                            &mut Hooks::new().with(&mut swap),
                            StopAt::Logits(LogitsFor::All),
                        )?
                    }
                }
                .ok_or_else(|| {
                    Error::InvalidArgument("the forward pass returned no logits".into())
                })?;
                let s = score(&clean, &log_probs(&other_logits)?, &targets)?;
                let slot = if i == 0 {
                    &mut sae_scores
                } else {
                    &mut zero_scores
                };
                slot.0 += s.ce;
                slot.1 += s.kl;
            }
            windows += batch.len() as u64;
            scored += (batch.len() as u64) * (seq as u64 - 1);
            observer.on_batch(
                windows * cfg.context as u64,
                total_windows * cfg.context as u64,
            );
        }
        Ok(())
    })?;
    if scored == 0 {
        return Err(Error::InvalidArgument(
            "the corpus gave no windows to evaluate".into(),
        ));
    }
    let n = scored as f64;
    let (ce_clean, ce_sae, ce_zero) = (ce_clean / n, sae_scores.0 / n, zero_scores.0 / n);
    Ok(SaeEvalReport {
        model: model.spec.clone(),
        hook: hook.to_string(),
        architecture: sae.cfg.architecture.clone(),
        d_in: sae.cfg.d_in,
        d_sae: sae.cfg.d_sae,
        windows,
        scored_tokens: scored,
        reconstruction: stats.finish()?,
        ce_loss_clean: ce_clean,
        ce_loss_with_sae: ce_sae,
        ce_loss_with_ablation: ce_zero,
        ce_loss_score: (ce_zero - ce_sae) / (ce_zero - ce_clean),
        kl_div_with_sae: sae_scores.1 / n,
        kl_div_with_ablation: zero_scores.1 / n,
    })
}
