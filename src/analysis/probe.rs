//! Linear probes on pooled activations, scored by k-fold cross-validation:
//! L2-regularised logistic regression for labels (one-vs-rest, accuracy) and
//! ridge regression for values (R² of the out-of-fold predictions), each
//! beside a control task with the targets shuffled (Hewitt & Liang 2019), so
//! selectivity = score − control score.
//!
//! Solvers: ridge in closed form, logistic regression by Newton's method
//! (IRLS), both through libtorch's `linalg_solve` in f64. Activations are
//! wider than the prompts are many (576 against ~100), so each Newton step
//! solves in prompt space with the Woodbury identity:
//! `(λI + XᵀSSX)⁻¹g = (g − XᵀS(λI + SXXᵀS)⁻¹SXg)/λ`. Features are z-scored
//! with the training fold's statistics; the intercept is a constant column,
//! regularised like the rest.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use tch::{Kind, Tensor};

use super::prompts::{require_span, Prompt, PromptSet};
use super::runner::{accuracy, pooled_activations, Pooling};
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::io::atomic::write_atomic;
use crate::model::LoadedModel;
use crate::plots::lines_svg;

/// Settings of a probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeConfig {
    pub folds: usize,
    /// L2 weight on the z-scored features.
    pub l2: f64,
    pub seed: u64,
}

/// What a probe predicts.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Classes, one per prompt.
    Labels(Vec<String>),
    /// A number per prompt.
    Values(Vec<f64>),
}

/// A probe's cross-validated score and its control's.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeScore {
    /// Accuracy (labels) or R² (values), out of fold.
    pub score: f64,
    /// The same with the targets shuffled across prompts.
    pub control: f64,
    pub selectivity: f64,
}

const NEWTON_STEPS: usize = 30;

fn rows(x: &Tensor, index: &[i64]) -> Result<Tensor> {
    Ok(x.f_index_select(0, &Tensor::f_from_slice(index)?)?)
}

/// `(train, test)` with the test fold's statistics taken from `train`, and a
/// constant column appended.
fn standardise(train: &Tensor, test: &Tensor) -> Result<(Tensor, Tensor)> {
    let mean = train.f_mean_dim([0i64].as_slice(), true, Kind::Double)?;
    let std = train
        .f_sub(&mean)?
        .f_square()?
        .f_mean_dim([0i64].as_slice(), true, Kind::Double)?
        .f_sqrt()?;
    let std = std.f_where_scalarother(&std.f_gt(1e-12)?, 1.0)?;
    let with_bias = |t: &Tensor| -> Result<Tensor> {
        let z = t.f_sub(&mean)?.f_div(&std)?;
        let ones = Tensor::f_ones([z.size()[0], 1], (Kind::Double, z.device()))?;
        Ok(Tensor::f_cat(&[z, ones], 1)?)
    };
    Ok((with_bias(train)?, with_bias(test)?))
}

/// Logistic-regression weights `[d]` for 0/1 targets `y [n]` on `x [n, d]`.
fn logistic(x: &Tensor, y: &Tensor, l2: f64) -> Result<Tensor> {
    let (n, d) = (x.size()[0], x.size()[1]);
    let opts = (Kind::Double, x.device());
    let gram = x.f_matmul(&x.f_tr()?)?; // [n, n]
    let eye = Tensor::f_eye(n, opts)?;
    let mut w = Tensor::f_zeros([d], opts)?;
    for _ in 0..NEWTON_STEPS {
        let p = x.f_mv(&w)?.f_sigmoid()?;
        let g = x.f_tr()?.f_mv(&p.f_sub(y)?)?.f_add(&w.f_mul_scalar(l2)?)?;
        let s = p.f_mul(&p.f_neg()?.f_add_scalar(1.0)?)?.f_sqrt()?; // [n]
        let sgs = gram.f_mul(&s.f_unsqueeze(1)?)?.f_mul(&s.f_unsqueeze(0)?)?;
        let inner = sgs.f_add(&eye.f_mul_scalar(l2)?)?;
        let sxg = x.f_mv(&g)?.f_mul(&s)?;
        let solved =
            Tensor::f_linalg_solve(&inner, &sxg.f_unsqueeze(1)?, true)?.f_squeeze_dim(1)?;
        let step = g
            .f_sub(&x.f_tr()?.f_mv(&solved.f_mul(&s)?)?)?
            .f_div_scalar(l2)?;
        w = w.f_sub(&step)?;
        if step.f_abs()?.f_max()?.f_double_value(&[])? < 1e-8 {
            break;
        }
    }
    Ok(w)
}

/// Ridge predictions for `test` from `(train, y)` (targets centred, solved
/// in prompt space).
fn ridge_predict(train: &Tensor, y: &Tensor, test: &Tensor, l2: f64) -> Result<Tensor> {
    let n = train.size()[0];
    let mean = y.f_mean(Kind::Double)?;
    let gram = train
        .f_matmul(&train.f_tr()?)?
        .f_add(&Tensor::f_eye(n, (Kind::Double, train.device()))?.f_mul_scalar(l2)?)?;
    let alpha = Tensor::f_linalg_solve(&gram, &y.f_sub(&mean)?.f_unsqueeze(1)?, true)?;
    let w = train.f_tr()?.f_matmul(&alpha)?.f_squeeze_dim(1)?;
    Ok(test.f_mv(&w)?.f_add(&mean)?)
}

/// Folds of `n` items: a seeded shuffle dealt round-robin into `k` folds.
fn folds(n: usize, k: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut out = vec![Vec::new(); k];
    for (i, item) in order.into_iter().enumerate() {
        out[i % k].push(item);
    }
    out
}

/// The out-of-fold score of `targets` on `x [n, d]`.
fn cross_validate(x: &Tensor, targets: &Targets, cfg: &ProbeConfig) -> Result<f64> {
    let n = x.size()[0] as usize;
    let x = x.f_to_kind(Kind::Double)?;
    let mut predicted_class = vec![0usize; n];
    let mut predicted_value = vec![0f64; n];
    let classes: Vec<String> = match targets {
        Targets::Labels(labels) => {
            let mut c = labels.clone();
            c.sort();
            c.dedup();
            c
        }
        Targets::Values(_) => Vec::new(),
    };
    for test_idx in folds(n, cfg.folds, cfg.seed) {
        let train_idx: Vec<i64> = (0..n as i64).filter(|i| !test_idx.contains(i)).collect();
        let (train, test) = standardise(&rows(&x, &train_idx)?, &rows(&x, &test_idx)?)?;
        match targets {
            Targets::Labels(labels) => {
                // One-vs-rest scores [test, classes]; two classes need one model.
                let fitted = if classes.len() == 2 { 1 } else { classes.len() };
                let mut scores = Vec::with_capacity(fitted);
                for class in &classes[classes.len() - fitted..] {
                    let y: Vec<f64> = train_idx
                        .iter()
                        .map(|&i| f64::from(labels[i as usize] == *class))
                        .collect();
                    let w = logistic(&train, &Tensor::f_from_slice(&y)?, cfg.l2)?;
                    scores.push(test.f_mv(&w)?);
                }
                let best: Vec<i64> = if fitted == 1 {
                    Vec::try_from(&scores[0].f_gt(0.0)?.f_to_kind(Kind::Int64)?)?
                } else {
                    Vec::try_from(&Tensor::f_stack(&scores, 1)?.f_argmax(1, false)?)?
                };
                for (&i, &c) in test_idx.iter().zip(&best) {
                    predicted_class[i as usize] = c as usize;
                }
            }
            Targets::Values(values) => {
                let y: Vec<f64> = train_idx.iter().map(|&i| values[i as usize]).collect();
                let p = ridge_predict(&train, &Tensor::f_from_slice(&y)?, &test, cfg.l2)?;
                let p: Vec<f64> = Vec::try_from(&p)?;
                for (&i, v) in test_idx.iter().zip(p) {
                    predicted_value[i as usize] = v;
                }
            }
        }
    }
    Ok(match targets {
        Targets::Labels(labels) => {
            let hits = labels
                .iter()
                .zip(&predicted_class)
                .filter(|(l, &c)| classes[c] == **l)
                .count();
            hits as f64 / n as f64
        }
        Targets::Values(values) => {
            let mean = values.iter().sum::<f64>() / n as f64;
            let total: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            let residual: f64 = values
                .iter()
                .zip(&predicted_value)
                .map(|(v, p)| (v - p).powi(2))
                .sum();
            if total > 0.0 {
                1.0 - residual / total
            } else {
                0.0
            }
        }
    })
}

/// The cross-validated probe of `targets` on `x [n, d]` and its control.
pub fn probe(x: &Tensor, targets: &Targets, cfg: &ProbeConfig) -> Result<ProbeScore> {
    let n = x.size().first().copied().unwrap_or(0) as usize;
    let len = match targets {
        Targets::Labels(l) => l.len(),
        Targets::Values(v) => v.len(),
    };
    if x.dim() != 2 || len != n {
        return Err(Error::InvalidArgument(format!(
            "a probe needs [prompts, width] activations and one target per prompt (got {:?} and {len} targets)",
            x.size()
        )));
    }
    if cfg.folds < 2 || n < 2 * cfg.folds {
        return Err(Error::InvalidArgument(format!(
            "{n} prompts are too few for {}-fold cross-validation (at least 2 per fold)",
            cfg.folds
        )));
    }
    if let Targets::Labels(l) = targets {
        let first = &l[0];
        if l.iter().all(|x| x == first) {
            return Err(Error::InvalidArgument(
                "a label probe needs at least two classes".into(),
            ));
        }
    }
    if cfg.l2.is_nan() || cfg.l2 <= 0.0 {
        return Err(Error::InvalidArgument(
            "the L2 weight must be positive".into(),
        ));
    }
    let score = cross_validate(x, targets, cfg)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(cfg.seed ^ 0x5eed));
    let shuffled = match targets {
        Targets::Labels(l) => Targets::Labels(order.iter().map(|&i| l[i].clone()).collect()),
        Targets::Values(v) => Targets::Values(order.iter().map(|&i| v[i]).collect()),
    };
    let control = cross_validate(x, &shuffled, cfg)?;
    Ok(ProbeScore {
        score,
        control,
        selectivity: score - control,
    })
}

/// Which field of the prompts a probe decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProbeTarget {
    /// `label`, by logistic regression (accuracy).
    Label,
    /// `value`, by ridge regression (R²).
    Value,
}

/// What a layer-wise probe over a prompt set reads.
#[derive(Debug, Clone)]
pub struct ProbeRequest {
    pub hooks: Vec<HookPoint>,
    pub span: String,
    pub pooling: Pooling,
    pub condition: Option<String>,
    pub target: ProbeTarget,
    pub cfg: ProbeConfig,
}

/// One hook's probe.
#[derive(Debug, Clone, Serialize)]
pub struct HookProbe {
    pub hook: String,
    #[serde(flatten)]
    pub score: ProbeScore,
}

/// The result of [`run_probes`].
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub prompts: String,
    pub condition: Option<String>,
    pub n_prompts: usize,
    pub span: String,
    pub pooling: Pooling,
    pub target: ProbeTarget,
    /// `accuracy` for labels, `r2` for values.
    pub metric: String,
    pub folds: usize,
    pub l2: f64,
    pub seed: u64,
    /// Share of the prompts whose top next token is their target.
    pub accuracy: Option<f64>,
    pub hooks: Vec<HookProbe>,
    pub seconds: f64,
}

/// The targets of `prompts`, or an error naming a prompt without one.
fn targets_of(prompts: &[&Prompt], target: ProbeTarget) -> Result<Targets> {
    let missing = |p: &Prompt, field: &str| {
        Error::InvalidArgument(format!("prompt `{}` has no `{field}` to probe", p.id))
    };
    Ok(match target {
        ProbeTarget::Label => Targets::Labels(
            prompts
                .iter()
                .map(|p| p.label.clone().ok_or_else(|| missing(p, "label")))
                .collect::<Result<_>>()?,
        ),
        ProbeTarget::Value => Targets::Values(
            prompts
                .iter()
                .map(|p| p.value.ok_or_else(|| missing(p, "value")))
                .collect::<Result<_>>()?,
        ),
    })
}

/// A cross-validated probe (and its control) at every hook of `request`.
pub fn run_probes(
    model: &LoadedModel,
    set: &PromptSet,
    request: &ProbeRequest,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ProbeReport> {
    let started = std::time::Instant::now();
    let prompts = set.select(request.condition.as_deref())?;
    require_span(&prompts, &request.span)?;
    let targets = targets_of(&prompts, request.target)?;
    let pooled = pooled_activations(
        model,
        &prompts,
        &request.hooks,
        &request.span,
        request.pooling,
        progress,
    )?;
    let hooks = request
        .hooks
        .iter()
        .map(|hook| {
            let x = pooled.at(*hook)?;
            Ok(HookProbe {
                hook: hook.to_string(),
                score: probe(x, &targets, &request.cfg)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(ProbeReport {
        prompts: set.path.display().to_string(),
        condition: request.condition.clone(),
        n_prompts: prompts.len(),
        span: request.span.clone(),
        pooling: request.pooling,
        target: request.target,
        metric: match request.target {
            ProbeTarget::Label => "accuracy".into(),
            ProbeTarget::Value => "r2".into(),
        },
        folds: request.cfg.folds,
        l2: request.cfg.l2,
        seed: request.cfg.seed,
        accuracy: accuracy(&pooled.correct),
        hooks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl ProbeReport {
    /// Writes `probe.json` and, over several hooks, `probe_layers.svg` (the
    /// score and the control's by hook) into `dir`; returns the paths.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = dir.join("probe.json");
        write_atomic(&json, serde_json::to_string_pretty(self)?.as_bytes())?;
        let mut written = vec![json];
        if self.hooks.len() > 1 {
            let line = |name: &str, get: fn(&ProbeScore) -> f64| {
                let points = self
                    .hooks
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (i as f64, get(&h.score)))
                    .collect();
                (name.to_string(), points)
            };
            let series = vec![
                line("probe", |s| s.score),
                line("control (shuffled)", |s| s.control),
            ];
            let target = match self.target {
                ProbeTarget::Label => "label",
                ProbeTarget::Value => "value",
            };
            let title = format!(
                "{}-fold probe of `{target}` from the {} span ({} prompts)",
                self.folds, self.span, self.n_prompts
            );
            let svg = lines_svg(&series, "hook (in order)", &self.metric, &title)?;
            let path = dir.join("probe_layers.svg");
            write_atomic(&path, svg.as_bytes())?;
            written.push(path);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::rng::normal;

    const CFG: ProbeConfig = ProbeConfig {
        folds: 5,
        l2: 1.0,
        seed: 0,
    };

    #[test]
    fn separable_labels_are_learned_and_shuffled_ones_are_not() {
        // 120 points in 40 dimensions; the class is the sign of dimension 3,
        // pushed away from 0, among three classes made from two dimensions.
        let mut rng = StdRng::seed_from_u64(1);
        let x = normal(&mut rng, &[120, 40], 1.0).to_kind(Kind::Double);
        let d3: Vec<f64> = Vec::try_from(&x.select(1, 3)).unwrap();
        let d5: Vec<f64> = Vec::try_from(&x.select(1, 5)).unwrap();
        let labels: Vec<String> = d3
            .iter()
            .zip(&d5)
            .map(|(a, b)| match (*a > 0.0, *b > 0.0) {
                (true, _) => "pos".to_string(),
                (false, true) => "neg-up".to_string(),
                (false, false) => "neg-down".to_string(),
            })
            .collect();
        let shift: Vec<f64> = labels
            .iter()
            .flat_map(|l| {
                let mut row = vec![0.0; 40];
                row[3] = if l == "pos" { 3.0 } else { -3.0 };
                row[5] = if l == "neg-up" {
                    3.0
                } else if l == "neg-down" {
                    -3.0
                } else {
                    0.0
                };
                row
            })
            .collect();
        let x = x + Tensor::from_slice(&shift).view([120, 40]);
        let s = probe(&x, &Targets::Labels(labels.clone()), &CFG).unwrap();
        assert!(s.score > 0.97, "{s:?}");
        // Chance among three unequal classes is at most ~0.5.
        assert!(s.control < 0.6 && s.selectivity > 0.4, "{s:?}");
        let binary: Vec<String> = labels.iter().map(|l| (l == "pos").to_string()).collect();
        assert!(probe(&x, &Targets::Labels(binary), &CFG).unwrap().score > 0.97);
    }

    #[test]
    fn a_linear_value_is_recovered_by_ridge() {
        let mut rng = StdRng::seed_from_u64(2);
        let x = normal(&mut rng, &[100, 30], 1.0).to_kind(Kind::Double);
        let y: Vec<f64> = Vec::try_from(&(x.select(1, 0) * 2.0 - x.select(1, 7) + 0.5)).unwrap();
        let s = probe(&x, &Targets::Values(y), &CFG).unwrap();
        assert!(s.score > 0.95 && s.control < 0.2, "{s:?}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = Tensor::zeros([6, 3], (Kind::Double, tch::Device::Cpu));
        let labels = |v: &[&str]| Targets::Labels(v.iter().map(|s| s.to_string()).collect());
        assert!(probe(&x, &labels(&["a"; 6]), &CFG).is_err());
        assert!(probe(&x, &labels(&["a", "b"]), &CFG).is_err());
        let small = ProbeConfig { folds: 5, ..CFG };
        assert!(probe(&x, &labels(&["a", "b", "a", "b", "a", "b"]), &small).is_err());
    }
}
