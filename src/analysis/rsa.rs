//! Representational similarity analysis (Kriegeskorte et al. 2008), as
//! Yousefi et al. (2023, arXiv 2310.00313) use it on language models: pool
//! each prompt's activations over a span, optionally z-score every dimension
//! across prompts, build the representational dissimilarity matrix (RDM),
//! and rank-correlate its upper triangle with hypothesis matrices; p-values
//! by permuting the prompts of the hypothesis (a Mantel test).

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use super::prompts::{require_span, Prompt, PromptSet};
use super::runner::{accuracy, pooled_activations, Pooling};
use super::stats::{mantel, RankCorrelation};
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::io::atomic::write_atomic;
use crate::model::LoadedModel;
use crate::plots::{lines_svg, matrix_svg};

/// How two pooled representations differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dissimilarity {
    /// `1 − cos(a, b)`.
    Cosine,
    /// `‖a − b‖`.
    Euclidean,
    /// `1 − Pearson(a, b)` over the dimensions.
    Correlation,
}

/// Each column of `x [n, d]` centred and scaled to unit (population)
/// standard deviation across the rows; constant columns become 0.
pub fn zscore(x: &Tensor) -> Result<Tensor> {
    let x = x.f_to_kind(Kind::Double)?;
    let mean = x.f_mean_dim([0i64].as_slice(), true, Kind::Double)?;
    let centred = x.f_sub(&mean)?;
    let std = centred
        .f_square()?
        .f_mean_dim([0i64].as_slice(), true, Kind::Double)?
        .f_sqrt()?;
    let safe = std.f_where_scalarother(&std.f_gt(0.0)?, 1.0)?;
    Ok(centred.f_div(&safe)?)
}

/// The `n × n` RDM of the rows of `x [n, d]`.
pub fn rdm(x: &Tensor, how: Dissimilarity) -> Result<Vec<Vec<f64>>> {
    let x = x.f_to_kind(Kind::Double)?;
    if x.dim() != 2 || x.size()[0] < 2 {
        return Err(Error::InvalidArgument(format!(
            "an RDM needs [prompts ≥ 2, width] representations, got {:?}",
            x.size()
        )));
    }
    let unit = |t: &Tensor| -> Result<Tensor> {
        let norm = t
            .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?
            .f_clamp_min(1e-300)?;
        Ok(t.f_div(&norm)?)
    };
    let d = match how {
        Dissimilarity::Cosine => {
            let u = unit(&x)?;
            u.f_matmul(&u.f_tr()?)?.f_neg()?.f_add_scalar(1.0)?
        }
        Dissimilarity::Correlation => {
            let centred = x.f_sub(&x.f_mean_dim([1i64].as_slice(), true, Kind::Double)?)?;
            let u = unit(&centred)?;
            u.f_matmul(&u.f_tr()?)?.f_neg()?.f_add_scalar(1.0)?
        }
        Dissimilarity::Euclidean => {
            let sq = x
                .f_square()?
                .f_sum_dim_intlist([1i64].as_slice(), true, Kind::Double)?;
            sq.f_add(&sq.f_tr()?)?
                .f_sub(&x.f_matmul(&x.f_tr()?)?.f_mul_scalar(2.0)?)?
                .f_clamp_min(0.0)?
                .f_sqrt()?
        }
    };
    let n = d.size()[0];
    let flat: Vec<f64> = Vec::try_from(&d.f_reshape([-1])?)?;
    Ok((0..n as usize)
        .map(|i| {
            (0..n as usize)
                .map(|j| {
                    if i == j {
                        0.0
                    } else {
                        flat[i * n as usize + j]
                    }
                })
                .collect()
        })
        .collect())
}

/// A hypothesis RDM, named for the report.
#[derive(Debug, Clone)]
pub struct Hypothesis {
    pub name: String,
    pub matrix: Vec<Vec<f64>>,
}

impl Hypothesis {
    /// 0 between prompts with the same value of `field` (`condition` or
    /// `label`), 1 between different ones.
    pub fn from_field(prompts: &[&Prompt], field: &str) -> Result<Hypothesis> {
        let values: Vec<String> = prompts
            .iter()
            .map(|p| match field {
                "condition" => Ok(p.condition.clone()),
                "label" => p.label.clone().ok_or_else(|| {
                    Error::InvalidArgument(format!("prompt `{}` has no `label`", p.id))
                }),
                other => Err(Error::InvalidArgument(format!(
                    "a hypothesis from a field takes `condition` or `label`, not `{other}`"
                ))),
            })
            .collect::<Result<_>>()?;
        let distinct = {
            let mut v = values.clone();
            v.sort();
            v.dedup();
            v.len()
        };
        if distinct < 2 {
            return Err(Error::InvalidArgument(format!(
                "the `{field}` hypothesis needs at least two different values among the prompts"
            )));
        }
        let matrix = values
            .iter()
            .map(|a| values.iter().map(|b| f64::from(a != b)).collect())
            .collect();
        Ok(Hypothesis {
            name: field.to_string(),
            matrix,
        })
    }

    /// A matrix from a JSON file (a list of rows), which must be `n × n`.
    pub fn from_file(path: &std::path::Path, n: usize) -> Result<Hypothesis> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let matrix: Vec<Vec<f64>> = serde_json::from_str(&text)
            .map_err(|e| Error::malformed(path, format!("not a JSON list of rows: {e}")))?;
        if matrix.len() != n || matrix.iter().any(|r| r.len() != n) {
            return Err(Error::malformed(
                path,
                format!("the hypothesis must be {n}×{n}, one row and column per prompt"),
            ));
        }
        Ok(Hypothesis {
            name: path.display().to_string(),
            matrix,
        })
    }
}

/// One hypothesis's fit at one hook.
#[derive(Debug, Clone, Serialize)]
pub struct HypothesisFit {
    pub hypothesis: String,
    pub correlation: f64,
    pub p_value: f64,
}

/// Settings of an RSA.
#[derive(Debug, Clone, Copy)]
pub struct RsaConfig {
    pub dissimilarity: Dissimilarity,
    pub zscore: bool,
    pub correlation: RankCorrelation,
    pub permutations: usize,
    pub seed: u64,
}

/// The RDM of `representations [n, d]` and its fit to each hypothesis.
pub fn rsa(
    representations: &Tensor,
    hypotheses: &[Hypothesis],
    cfg: &RsaConfig,
) -> Result<(Vec<Vec<f64>>, Vec<HypothesisFit>)> {
    let x = if cfg.zscore {
        zscore(representations)?
    } else {
        representations.shallow_clone()
    };
    let matrix = rdm(&x, cfg.dissimilarity)?;
    let fits = hypotheses
        .iter()
        .map(|h| {
            let (correlation, p_value) = mantel(
                &matrix,
                &h.matrix,
                cfg.correlation,
                cfg.permutations,
                cfg.seed,
            )?;
            Ok(HypothesisFit {
                hypothesis: h.name.clone(),
                correlation,
                p_value,
            })
        })
        .collect::<Result<_>>()?;
    Ok((matrix, fits))
}

/// Where a hypothesis comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum HypothesisSource {
    /// `condition` or `label`: 0 between equal values, 1 between different.
    Field(String),
    /// An `n × n` JSON matrix, one row per prompt in file order.
    File(PathBuf),
}

impl std::str::FromStr for HypothesisSource {
    type Err = Error;

    /// `condition`, `label`, or a path to a JSON file.
    fn from_str(text: &str) -> Result<Self> {
        Ok(match text {
            "condition" | "label" => HypothesisSource::Field(text.to_string()),
            path => HypothesisSource::File(PathBuf::from(path)),
        })
    }
}

/// What an RSA over a prompt set reads.
#[derive(Debug, Clone)]
pub struct RsaRequest {
    pub hooks: Vec<HookPoint>,
    pub span: String,
    pub pooling: Pooling,
    /// Only the prompts of this condition (default: all).
    pub condition: Option<String>,
    pub hypotheses: Vec<HypothesisSource>,
    pub cfg: RsaConfig,
}

/// One hook's RDM and fits.
#[derive(Debug, Clone, Serialize)]
pub struct HookRsa {
    pub hook: String,
    pub fits: Vec<HypothesisFit>,
    pub rdm: Vec<Vec<f64>>,
}

/// The result of [`run_rsa`].
#[derive(Debug, Clone, Serialize)]
pub struct RsaReport {
    pub prompts: String,
    pub condition: Option<String>,
    pub prompt_ids: Vec<String>,
    pub span: String,
    pub pooling: Pooling,
    pub dissimilarity: Dissimilarity,
    pub zscore: bool,
    pub correlation: RankCorrelation,
    pub permutations: usize,
    pub seed: u64,
    /// Share of the prompts whose top next token is their target.
    pub accuracy: Option<f64>,
    pub hooks: Vec<HookRsa>,
    pub seconds: f64,
}

/// RSA of `set` at every hook of `request`.
pub fn run_rsa(
    model: &LoadedModel,
    set: &PromptSet,
    request: &RsaRequest,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RsaReport> {
    let started = std::time::Instant::now();
    let prompts = set.select(request.condition.as_deref())?;
    require_span(&prompts, &request.span)?;
    let hypotheses = request
        .hypotheses
        .iter()
        .map(|h| match h {
            HypothesisSource::Field(f) => Hypothesis::from_field(&prompts, f),
            HypothesisSource::File(path) => Hypothesis::from_file(path, prompts.len()),
        })
        .collect::<Result<Vec<_>>>()?;
    if hypotheses.is_empty() {
        return Err(Error::InvalidArgument(
            "RSA needs at least one hypothesis".into(),
        ));
    }
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
            let (rdm, fits) = rsa(x, &hypotheses, &request.cfg)?;
            Ok(HookRsa {
                hook: hook.to_string(),
                fits,
                rdm,
            })
        })
        .collect::<Result<_>>()?;
    Ok(RsaReport {
        prompts: set.path.display().to_string(),
        condition: request.condition.clone(),
        prompt_ids: prompts.iter().map(|p| p.id.clone()).collect(),
        span: request.span.clone(),
        pooling: request.pooling,
        dissimilarity: request.cfg.dissimilarity,
        zscore: request.cfg.zscore,
        correlation: request.cfg.correlation,
        permutations: request.cfg.permutations,
        seed: request.cfg.seed,
        accuracy: accuracy(&pooled.correct),
        hooks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl RsaReport {
    /// Writes `rsa.json`, the layer-wise correlation curves
    /// (`rsa_layers.svg`) and the RDM heatmaps of the first, middle and last
    /// hooks (`rdm_<hook>.svg`) into `dir`; returns the paths.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut written = Vec::new();
        let json = dir.join("rsa.json");
        write_atomic(&json, serde_json::to_string(self)?.as_bytes())?;
        written.push(json);
        let names: Vec<String> = self
            .hooks
            .first()
            .map(|h| h.fits.iter().map(|f| f.hypothesis.clone()).collect())
            .unwrap_or_default();
        let series: Vec<(String, Vec<(f64, f64)>)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let points = self
                    .hooks
                    .iter()
                    .enumerate()
                    .map(|(l, h)| (l as f64, h.fits[i].correlation))
                    .collect();
                (name.clone(), points)
            })
            .collect();
        if self.hooks.len() > 1 && !series.is_empty() {
            let title = format!(
                "RSA by hook ({:?} of the {} span, {} prompts)",
                self.correlation,
                self.span,
                self.prompt_ids.len()
            );
            let svg = lines_svg(&series, "hook (in order)", "rank correlation", &title)?;
            let path = dir.join("rsa_layers.svg");
            write_atomic(&path, svg.as_bytes())?;
            written.push(path);
        }
        let n = self.hooks.len();
        let mut chosen = vec![0, n / 2, n.saturating_sub(1)];
        chosen.dedup();
        for i in chosen.into_iter().filter(|&i| i < n) {
            let h = &self.hooks[i];
            let svg = matrix_svg(&h.rdm, &self.prompt_ids, &format!("RDM at {}", h.hook))?;
            let path = dir.join(format!("rdm_{}.svg", h.hook));
            write_atomic(&path, svg.as_bytes())?;
            written.push(path);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::stats::upper_triangle;

    #[test]
    fn identical_representations_give_identical_rdms_that_correlate_perfectly() {
        let x = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 0.5]).view([4, 2]);
        for how in [
            Dissimilarity::Cosine,
            Dissimilarity::Euclidean,
            Dissimilarity::Correlation,
        ] {
            let a = rdm(&x, how).unwrap();
            let b = rdm(&x.copy(), how).unwrap();
            assert_eq!(a, b);
            assert!(a.iter().enumerate().all(|(i, r)| r[i] == 0.0));
            let r = super::super::stats::spearman(&upper_triangle(&a), &upper_triangle(&b));
            assert!((r - 1.0).abs() < 1e-12);
        }
        let e = rdm(&x, Dissimilarity::Euclidean).unwrap();
        assert!((e[0][1] - 2f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn hypotheses_need_two_values_and_files_the_right_size() {
        let p = |c: &str| Prompt {
            id: c.into(),
            group: None,
            condition: c.into(),
            text: "x".into(),
            spans: Default::default(),
            label: None,
            value: None,
            target: None,
        };
        let (a, b) = (p("a"), p("b"));
        let h = Hypothesis::from_field(&[&a, &b, &a], "condition").unwrap();
        assert_eq!(h.matrix[0], [0.0, 1.0, 0.0]);
        assert!(Hypothesis::from_field(&[&a, &a], "condition").is_err());
        assert!(Hypothesis::from_field(&[&a, &b], "label").is_err());
        assert!(Hypothesis::from_field(&[&a, &b], "colour").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.json");
        std::fs::write(&path, "[[0, 1], [1, 0]]").unwrap();
        assert!(Hypothesis::from_file(&path, 2).is_ok());
        assert!(Hypothesis::from_file(&path, 3).is_err());
    }
}
