//! Activation patching and attribution patching over pairs of clean and
//! corrupted prompts (as TransformerLens's `patching` module and Nanda 2023's
//! attribution patching define them).
//!
//! The metric is the logit difference `logit(answer) − logit(wrong)` at the
//! last position, normalised over the task so that the corrupted run scores 0
//! and the clean run 1: `(mean LD − mean LD_corrupted) / (mean LD_clean − mean
//! LD_corrupted)`. Denoising patches clean activations into the corrupted run
//! (1 = the patch restores the clean behaviour); noising patches corrupted
//! activations into the clean run (a drop from 1 = the site is needed).
//!
//! Exact patching runs one forward per cell (hook × position, head, or whole
//! site) and batch of pairs, starting at the cell's block from the target
//! run's cached residual. Attribution patching estimates every cell at once
//! from one forward and one backward per batch: `(source − target) · ∂LD/∂act`
//! at the target run.

use std::collections::BTreeMap;

use serde::Serialize;
use tch::{Kind, Tensor};

use super::patch_task::Batch;
pub use super::patch_task::{PatchPair, PatchTask};
use super::stats::pearson;
use crate::error::{Error, Result};
use crate::hooks::{BlockSite, HookContext, HookPoint, Hooks, Intervention};
use crate::model::{ForwardInput, LoadedModel, LogitsFor, StopAt};

/// Which run is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Clean activations into the corrupted run.
    Denoise,
    /// Corrupted activations into the clean run.
    Noise,
}

/// One of a pair's two runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Run {
    Clean,
    Corrupted,
}

impl Direction {
    /// `(source, target)`: whose activations go into which run.
    pub fn runs(self) -> (Run, Run) {
        match self {
            Direction::Denoise => (Run::Clean, Run::Corrupted),
            Direction::Noise => (Run::Corrupted, Run::Clean),
        }
    }
}

/// What one cell of a sweep patches at its hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// One position (all of the hook's other dimensions).
    Position,
    /// One head at every position (per-head hooks: `hook_z`, `hook_result`, q/k/v).
    Head,
    /// The whole activation.
    All,
}

/// Replaces part of the activation at one hook with the source run's.
struct Patch<'a> {
    hook: HookPoint,
    source: &'a Tensor,
    unit: Unit,
    index: i64,
    /// With `Unit::Head`: only these positions (default all).
    positions: Option<&'a [usize]>,
}

impl Intervention for Patch<'_> {
    fn wants(&self, hook: HookPoint) -> bool {
        hook == self.hook
    }

    fn apply(&mut self, _: HookPoint, act: &Tensor, _: &HookContext) -> Result<Option<Tensor>> {
        let src = self.source.f_to_kind(act.kind())?;
        let out = match self.unit {
            Unit::All => src,
            Unit::Head if self.positions.is_some() => {
                let out = act.f_detach_copy()?;
                for &p in self.positions.unwrap_or_default() {
                    let cell = |t: &Tensor| -> Result<Tensor> {
                        Ok(t.f_narrow(1, p as i64, 1)?.f_narrow(2, self.index, 1)?)
                    };
                    cell(&out)?.f_copy_(&cell(&src)?)?;
                }
                out
            }
            Unit::Position | Unit::Head => {
                let dim = if self.unit == Unit::Position { 1 } else { 2 };
                let out = act.f_detach_copy()?;
                out.f_narrow(dim, self.index, 1)?
                    .f_copy_(&src.f_narrow(dim, self.index, 1)?)?;
                out
            }
        };
        Ok(Some(out))
    }
}

/// `[batch]` logit differences at the last position of `logits [batch, seq, vocab]`.
fn logit_diff(logits: &Tensor, answer: &Tensor, wrong: &Tensor) -> Result<Tensor> {
    let last = logits.f_select(1, -1)?.f_to_kind(Kind::Float)?;
    let a = last.f_gather(1, &answer.f_unsqueeze(1)?, false)?;
    let w = last.f_gather(1, &wrong.f_unsqueeze(1)?, false)?;
    Ok(a.f_sub(&w)?.f_squeeze_dim(1)?)
}

fn sum_of(t: &Tensor) -> Result<f64> {
    Ok(t.f_sum(Kind::Double)?.f_double_value(&[])?)
}

/// The number of cells of `unit` at `hook` for a sequence of `seq` tokens.
fn cells(model: &LoadedModel, hook: HookPoint, unit: Unit, seq: usize) -> Result<usize> {
    let cfg = model.model.config();
    if matches!(hook, HookPoint::Block(_, BlockSite::AttnPattern)) {
        return Err(Error::InvalidArgument(format!(
            "`{hook}` is [batch, heads, seq, seq]; patch `attn.hook_z` or `attn.hook_result` instead"
        )));
    }
    Ok(match unit {
        Unit::Position => seq,
        Unit::All => 1,
        Unit::Head => match hook {
            HookPoint::Block(_, BlockSite::AttnZ | BlockSite::AttnResult | BlockSite::AttnQ) => {
                cfg.n_heads as usize
            }
            HookPoint::Block(_, BlockSite::AttnK | BlockSite::AttnV) => cfg.n_kv_heads as usize,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "`{other}` has no heads; patch it by position or whole"
                )))
            }
        },
    })
}

/// The number of cells at each hook, after checking that the cells exist in
/// every pair: by position, every pair must have one token length; chosen
/// positions are for head cells and must lie inside every pair.
fn layout(
    model: &LoadedModel,
    task: &PatchTask,
    hooks: &[HookPoint],
    unit: Unit,
    positions: Option<&[usize]>,
) -> Result<Vec<usize>> {
    check_positions(task, unit, positions)?;
    let seq = task.pairs[0].clean.len();
    if unit == Unit::Position && task.pairs.iter().any(|p| p.clean.len() != seq) {
        return Err(Error::InvalidArgument(
            "patching by position needs every pair to have the same token length".into(),
        ));
    }
    hooks.iter().map(|&h| cells(model, h, unit, seq)).collect()
}

/// Head positions must be given only for head cells, and lie inside every pair.
fn check_positions(task: &PatchTask, unit: Unit, positions: Option<&[usize]>) -> Result<()> {
    let Some(ps) = positions else { return Ok(()) };
    if unit != Unit::Head {
        return Err(Error::InvalidArgument(
            "chosen positions apply to head cells only".into(),
        ));
    }
    let shortest = task.pairs.iter().map(|p| p.clean.len()).min().unwrap_or(0);
    match ps.iter().find(|&&p| p >= shortest) {
        Some(p) => Err(Error::InvalidArgument(format!(
            "position {p} is outside the shortest pair ({shortest} tokens)"
        ))),
        None if ps.is_empty() => Err(Error::InvalidArgument("no positions given".into())),
        None => Ok(()),
    }
}

/// The metric's baselines: mean clean and corrupted logit differences.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Baselines {
    pub clean: f64,
    pub corrupted: f64,
}

impl Baselines {
    fn normalise(&self, mean_ld: f64) -> f64 {
        (mean_ld - self.corrupted) / (self.clean - self.corrupted)
    }
}

/// A sweep's grid: one row per hook, one column per cell.
#[derive(Debug, Clone, Serialize)]
pub struct PatchGrid {
    pub hooks: Vec<String>,
    pub unit: Unit,
    /// The positions head cells were patched at (`None`: all).
    pub positions: Option<Vec<usize>>,
    /// `[hook][cell]` normalised metric.
    pub values: Vec<Vec<f64>>,
}

/// Logits of the last position only, unless the final norm is patched: the
/// forward narrows to the last position before that norm.
fn logits_for(hooks: &[HookPoint]) -> LogitsFor {
    if hooks.contains(&HookPoint::LnFinal) {
        LogitsFor::All
    } else {
        LogitsFor::Last
    }
}

impl PatchGrid {
    fn new(
        hooks: &[HookPoint],
        unit: Unit,
        positions: Option<&[usize]>,
        values: Vec<Vec<f64>>,
    ) -> Self {
        PatchGrid {
            hooks: hooks.iter().map(|h| h.to_string()).collect(),
            unit,
            positions: positions.map(<[usize]>::to_vec),
            values,
        }
    }
}

/// Runs `model` on `tokens` from block `start` (or from the embedding) with
/// `hooks`, returning logits `[batch, 1 or seq, vocab]`.
fn logits_from(
    model: &LoadedModel,
    tokens: &Tensor,
    start: Option<(usize, &Tensor)>,
    hooks: &mut Hooks,
    which: LogitsFor,
) -> Result<Tensor> {
    let input = ForwardInput {
        start_at: start,
        ..ForwardInput::tokens(tokens)
    };
    model
        .model
        .forward(&input, None, hooks, StopAt::Logits(which))?
        .ok_or_else(|| Error::InvalidArgument("the forward returned no logits".into()))
}

/// Both runs of every batch, cached at `hooks` and at every block's
/// `resid_pre` (the starting points), with the baselines.
struct Prepared {
    batches: Vec<Batch>,
    /// Per batch: (clean cache, corrupted cache).
    caches: Vec<(BTreeMap<HookPoint, Tensor>, BTreeMap<HookPoint, Tensor>)>,
    baselines: Baselines,
}

/// One run's cache and tokens within a batch.
fn run_of<'a>(
    b: &'a Batch,
    clean: &'a BTreeMap<HookPoint, Tensor>,
    corrupted: &'a BTreeMap<HookPoint, Tensor>,
    run: Run,
) -> (&'a BTreeMap<HookPoint, Tensor>, &'a Tensor) {
    match run {
        Run::Clean => (clean, &b.clean),
        Run::Corrupted => (corrupted, &b.corrupted),
    }
}

fn prepare(model: &LoadedModel, task: &PatchTask, hooks: &[HookPoint]) -> Result<Prepared> {
    let n_layers = model.model.config().n_layers;
    let mut wanted: Vec<HookPoint> = (0..n_layers).map(HookPoint::resid_pre).collect();
    wanted.extend(hooks.iter().copied());
    wanted.sort();
    wanted.dedup();
    let batches = task.batches(model.model.device())?;
    let (mut clean_sum, mut corrupted_sum) = (0.0, 0.0);
    let mut caches = Vec::with_capacity(batches.len());
    for b in &batches {
        let run = |tokens: &Tensor| -> Result<(BTreeMap<HookPoint, Tensor>, f64)> {
            let mut r = model.model.run_with_cache(
                &ForwardInput::tokens(tokens),
                &wanted,
                Some(logits_for(hooks)),
            )?;
            let logits = r
                .logits
                .take()
                .ok_or_else(|| Error::InvalidArgument("no logits".into()))?;
            let ld = sum_of(&logit_diff(&logits, &b.answer, &b.wrong)?)?;
            let cache = wanted
                .iter()
                .map(|&h| Ok((h, r.take(h)?)))
                .collect::<Result<_>>()?;
            Ok((cache, ld))
        };
        let (clean, lc) = run(&b.clean)?;
        let (corrupted, lx) = run(&b.corrupted)?;
        clean_sum += lc;
        corrupted_sum += lx;
        caches.push((clean, corrupted));
    }
    let n = task.pairs.len() as f64;
    let baselines = Baselines {
        clean: clean_sum / n,
        corrupted: corrupted_sum / n,
    };
    if (baselines.clean - baselines.corrupted).abs() < 1e-6 {
        return Err(Error::InvalidArgument(format!(
            "the clean and corrupted runs have the same mean logit difference ({:.4}); the metric cannot be normalised",
            baselines.clean
        )));
    }
    Ok(Prepared {
        batches,
        caches,
        baselines,
    })
}

/// Exact activation patching of every cell of `unit` at each of `hooks`.
pub fn exact_patching(
    model: &LoadedModel,
    task: &PatchTask,
    hooks: &[HookPoint],
    unit: Unit,
    (from, into): (Run, Run),
    positions: Option<&[usize]>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(PatchGrid, Baselines)> {
    let widths = layout(model, task, hooks, unit, positions)?;
    let prep = prepare(model, task, hooks)?;
    let total: usize = widths.iter().sum();
    let mut done = 0;
    let mut values = Vec::with_capacity(hooks.len());
    for (&hook, &width) in hooks.iter().zip(&widths) {
        let mut row = Vec::with_capacity(width);
        for index in 0..width {
            let mut ld = 0.0;
            for (b, (clean, corrupted)) in prep.batches.iter().zip(&prep.caches) {
                let ((source, _), (target, tokens)) = (
                    run_of(b, clean, corrupted, from),
                    run_of(b, clean, corrupted, into),
                );
                let mut patch = Patch {
                    hook,
                    source: &source[&hook],
                    unit,
                    index: index as i64,
                    positions,
                };
                let start = hook.layer().map(|l| (l, &target[&HookPoint::resid_pre(l)]));
                let logits = tch::no_grad(|| {
                    logits_from(
                        model,
                        tokens,
                        start,
                        &mut Hooks::new().with(&mut patch),
                        logits_for(hooks),
                    )
                })?;
                ld += sum_of(&logit_diff(&logits, &b.answer, &b.wrong)?)?;
            }
            row.push(prep.baselines.normalise(ld / task.pairs.len() as f64));
            done += 1;
            progress(done, total);
        }
        values.push(row);
    }
    Ok((
        PatchGrid::new(hooks, unit, positions, values),
        prep.baselines,
    ))
}

/// Adds a zero tensor that requires gradients at each hook, so that the
/// backward pass leaves `∂metric/∂activation` on it without cutting the graph.
struct GradProbe {
    hooks: Vec<HookPoint>,
    deltas: BTreeMap<HookPoint, Tensor>,
}

impl Intervention for GradProbe {
    fn wants(&self, hook: HookPoint) -> bool {
        self.hooks.contains(&hook)
    }

    fn apply(&mut self, hook: HookPoint, act: &Tensor, _: &HookContext) -> Result<Option<Tensor>> {
        let delta = act.f_zeros_like()?.set_requires_grad(true);
        let out = act.f_add(&delta)?;
        self.deltas.insert(hook, delta);
        Ok(Some(out))
    }
}

/// Attribution patching (first-order) of the same cells as [`exact_patching`].
pub fn attribution_patching(
    model: &LoadedModel,
    task: &PatchTask,
    hooks: &[HookPoint],
    unit: Unit,
    (from, into): (Run, Run),
    positions: Option<&[usize]>,
) -> Result<(PatchGrid, Baselines)> {
    let widths = layout(model, task, hooks, unit, positions)?;
    let prep = prepare(model, task, hooks)?;
    let mut sums: Vec<Vec<f64>> = widths.iter().map(|&w| vec![0.0; w]).collect();
    for (b, (clean, corrupted)) in prep.batches.iter().zip(&prep.caches) {
        let ((source, _), (target, tokens)) = (
            run_of(b, clean, corrupted, from),
            run_of(b, clean, corrupted, into),
        );
        let mut probe = GradProbe {
            hooks: hooks.to_vec(),
            deltas: BTreeMap::new(),
        };
        let logits = logits_from(
            model,
            tokens,
            None,
            &mut Hooks::new().with(&mut probe),
            logits_for(hooks),
        )?;
        let ld = logit_diff(&logits, &b.answer, &b.wrong)?.f_sum(Kind::Float)?;
        ld.f_backward()?;
        for ((hook, row), &width) in hooks.iter().zip(sums.iter_mut()).zip(&widths) {
            let grad = probe.deltas[hook].f_grad()?;
            if !grad.defined() {
                return Err(Error::InvalidArgument(format!(
                    "no gradient reached `{hook}`"
                )));
            }
            // (source − target) · grad, summed over everything but the cell.
            let contrib = source[hook]
                .f_to_kind(Kind::Float)?
                .f_sub(&target[hook].f_to_kind(Kind::Float)?)?
                .f_mul(&grad.f_to_kind(Kind::Float)?)?;
            let per_cell = match unit {
                Unit::All => contrib.f_sum(Kind::Float)?.f_reshape([1])?,
                Unit::Position => {
                    let c = contrib.f_transpose(0, 1)?.f_contiguous()?;
                    c.f_reshape([width as i64, -1])?.f_sum_dim_intlist(
                        [1i64].as_slice(),
                        false,
                        Kind::Float,
                    )?
                }
                Unit::Head => {
                    let contrib = match positions {
                        Some(ps) => {
                            let ps: Vec<i64> = ps.iter().map(|&p| p as i64).collect();
                            contrib.f_index_select(
                                1,
                                &Tensor::f_from_slice(&ps)?.f_to_device(contrib.device())?,
                            )?
                        }
                        None => contrib,
                    };
                    let c = contrib.f_transpose(0, 2)?.f_contiguous()?;
                    c.f_reshape([width as i64, -1])?.f_sum_dim_intlist(
                        [1i64].as_slice(),
                        false,
                        Kind::Float,
                    )?
                }
            };
            let per_cell: Vec<f64> = Vec::try_from(&per_cell.f_to_kind(Kind::Double)?)?;
            for (s, v) in row.iter_mut().zip(per_cell) {
                *s += v;
            }
        }
    }
    let n = task.pairs.len() as f64;
    let target_mean = match into {
        Run::Clean => prep.baselines.clean,
        Run::Corrupted => prep.baselines.corrupted,
    };
    let values = sums
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|s| prep.baselines.normalise(target_mean + s / n))
                .collect()
        })
        .collect();
    Ok((
        PatchGrid::new(hooks, unit, positions, values),
        prep.baselines,
    ))
}

/// Pearson correlation of two grids' cells.
pub fn grid_correlation(a: &PatchGrid, b: &PatchGrid) -> f64 {
    let flat = |g: &PatchGrid| -> Vec<f64> { g.values.iter().flatten().copied().collect() };
    pearson(&flat(a), &flat(b))
}
