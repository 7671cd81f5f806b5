//! The attention ratio of Yousefi et al. (2023, arXiv 2310.00313): how much
//! attention the query's tokens pay to the relevant part of a prompt against
//! the irrelevant part, per head and layer, read from
//! `blocks.{L}.attn.hook_pattern` (the exact softmax, materialised for the
//! hook), and compared between two conditions of the same items.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use super::prompts::{require_span, Prompt, PromptSet, TokenizedPrompt};
use super::runner::{accuracy, for_each_prompt, is_correct};
use super::stats::{paired_test, PairedTest};
use crate::error::{Error, Result};
use crate::hooks::{BlockSite, HookPoint};
use crate::io::atomic::write_atomic;
use crate::model::LoadedModel;
use crate::plots::{heatmap_svg, lines_svg, Grid};

/// Which spans the ratio compares.
#[derive(Debug, Clone)]
pub struct RatioSpans {
    pub query: String,
    pub relevant: String,
    pub irrelevant: String,
    /// Divide each mass by its span's length (attention per token).
    pub per_token: bool,
}

/// `[heads]` ratios `mass(query → relevant) / mass(query → irrelevant)` of
/// one pattern `[1 or batch, heads, seq, seq]` (the first row of the batch).
pub fn ratio_of_pattern(
    pattern: &Tensor,
    tokenized: &TokenizedPrompt,
    spans: &RatioSpans,
) -> Result<Vec<f64>> {
    let range = |name: &str| {
        tokenized
            .spans
            .get(name)
            .cloned()
            .ok_or_else(|| Error::InvalidArgument(format!("unknown span `{name}` in a prompt")))
    };
    let (q, r, i) = (
        range(&spans.query)?,
        range(&spans.relevant)?,
        range(&spans.irrelevant)?,
    );
    let a = pattern.f_select(0, 0)?.f_to_kind(Kind::Double)?;
    let mass = |keys: &std::ops::Range<usize>| -> Result<Tensor> {
        let block = a
            .f_narrow(1, q.start as i64, (q.end - q.start) as i64)?
            .f_narrow(2, keys.start as i64, (keys.end - keys.start) as i64)?;
        let total = block.f_sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Double)?;
        Ok(if spans.per_token {
            total.f_div_scalar((keys.end - keys.start) as f64)?
        } else {
            total
        })
    };
    let ratio = mass(&r)?.f_div(&mass(&i)?.f_clamp_min(1e-12)?)?;
    Ok(Vec::try_from(&ratio)?)
}

/// Ratios of one condition: `[prompt][layer][head]`.
pub type Ratios = Vec<Vec<Vec<f64>>>;

/// Every prompt's ratios at every layer, and its correctness.
pub fn condition_ratios(
    model: &LoadedModel,
    prompts: &[&Prompt],
    spans: &RatioSpans,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Ratios, Vec<Option<bool>>)> {
    for name in [&spans.query, &spans.relevant, &spans.irrelevant] {
        require_span(prompts, name)?;
    }
    let n_layers = model.model.config().n_layers;
    let hooks: Vec<HookPoint> = (0..n_layers)
        .map(|l| HookPoint::Block(l, BlockSite::AttnPattern))
        .collect();
    let with_logits = prompts.iter().any(|p| p.target.is_some());
    let mut ratios = Vec::with_capacity(prompts.len());
    let mut correct = Vec::with_capacity(prompts.len());
    for_each_prompt(
        model,
        prompts,
        &hooks,
        with_logits,
        progress,
        &mut |_, tokenized, run| {
            let per_layer = hooks
                .iter()
                .map(|&h| ratio_of_pattern(&run.take(h)?, tokenized, spans))
                .collect::<Result<Vec<_>>>()?;
            ratios.push(per_layer);
            correct.push(is_correct(tokenized, run)?);
            Ok(())
        },
    )?;
    Ok((ratios, correct))
}

/// One condition's summary.
#[derive(Debug, Clone, Serialize)]
pub struct ConditionRatios {
    pub condition: String,
    pub prompts: usize,
    /// Share of prompts whose top next token is the target.
    pub accuracy: Option<f64>,
    /// `[layer][head]` geometric mean of the ratio over prompts.
    pub per_head: Vec<Vec<f64>>,
    /// `[layer]` geometric mean over heads and prompts.
    pub per_layer: Vec<f64>,
    /// Geometric mean over layers, heads and prompts.
    pub mean: f64,
}

/// The ratio report of a prompt set.
#[derive(Debug, Clone, Serialize)]
pub struct AttentionRatioReport {
    pub prompts: String,
    pub query: String,
    pub relevant: String,
    pub irrelevant: String,
    pub per_token: bool,
    pub conditions: Vec<ConditionRatios>,
    /// Paired over groups, `after − before` of each prompt's mean log ratio
    /// over heads (and layers, for `overall`), `conditions[1]` against
    /// `conditions[0]`.
    pub paired: Option<PairedComparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairedComparison {
    pub before: String,
    pub after: String,
    pub overall: PairedTest,
    pub per_layer: Vec<PairedTest>,
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

fn summarise(condition: &str, ratios: &Ratios, correct: &[Option<bool>]) -> ConditionRatios {
    let layers = ratios.first().map_or(0, Vec::len);
    let heads = ratios.first().and_then(|p| p.first()).map_or(0, Vec::len);
    // Geometric means: ratios are heavy-tailed, their logs are not.
    let log_per_head: Vec<Vec<f64>> = (0..layers)
        .map(|l| {
            (0..heads)
                .map(|h| mean(ratios.iter().map(|p| p[l][h].ln())))
                .collect()
        })
        .collect();
    let log_per_layer: Vec<f64> = log_per_head
        .iter()
        .map(|r| mean(r.iter().copied()))
        .collect();
    ConditionRatios {
        condition: condition.to_string(),
        prompts: ratios.len(),
        accuracy: accuracy(correct),
        mean: mean(log_per_layer.iter().copied()).exp(),
        per_head: log_per_head
            .iter()
            .map(|r| r.iter().map(|v| v.exp()).collect())
            .collect(),
        per_layer: log_per_layer.iter().map(|v| v.exp()).collect(),
    }
}

/// Ratios of every condition of `set`, and the paired comparison of the
/// first two conditions over the groups they share.
pub fn attention_ratio(
    model: &LoadedModel,
    set: &PromptSet,
    spans: &RatioSpans,
    permutations: usize,
    seed: u64,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<AttentionRatioReport> {
    let conditions = set.conditions();
    let mut summaries = Vec::new();
    // Per condition: group → [layer] log of the head-mean ratio.
    let mut by_group: Vec<BTreeMap<String, Vec<f64>>> = Vec::new();
    for condition in &conditions {
        let prompts = set.of_condition(condition)?;
        let (ratios, correct) = condition_ratios(model, &prompts, spans, &mut |d, t| {
            progress(condition, d, t)
        })?;
        let mut groups = BTreeMap::new();
        for (p, r) in prompts.iter().zip(&ratios) {
            if let Some(g) = &p.group {
                let logs = r
                    .iter()
                    .map(|heads| mean(heads.iter().copied()).ln())
                    .collect();
                groups.insert(g.clone(), logs);
            }
        }
        by_group.push(groups);
        summaries.push(summarise(condition, &ratios, &correct));
    }
    let paired = match (by_group.first(), by_group.get(1)) {
        (Some(before), Some(after)) => {
            let shared: Vec<&String> = before.keys().filter(|g| after.contains_key(*g)).collect();
            if shared.len() < 2 {
                None
            } else {
                let layers = before[shared[0]].len();
                let series = |m: &BTreeMap<String, Vec<f64>>, l: Option<usize>| -> Vec<f64> {
                    shared
                        .iter()
                        .map(|g| match l {
                            Some(l) => m[*g][l],
                            None => mean(m[*g].iter().copied()),
                        })
                        .collect()
                };
                let test =
                    |l| paired_test(&series(before, l), &series(after, l), permutations, seed);
                Some(PairedComparison {
                    before: conditions[0].clone(),
                    after: conditions[1].clone(),
                    overall: test(None)?,
                    per_layer: (0..layers).map(|l| test(Some(l))).collect::<Result<_>>()?,
                })
            }
        }
        _ => None,
    };
    Ok(AttentionRatioReport {
        prompts: set.path.display().to_string(),
        query: spans.query.clone(),
        relevant: spans.relevant.clone(),
        irrelevant: spans.irrelevant.clone(),
        per_token: spans.per_token,
        conditions: summaries,
        paired,
    })
}

impl AttentionRatioReport {
    /// Writes `attention_ratio.json`, a layer × head heatmap of the mean
    /// ratio per condition (`ratio_heads_<condition>.svg`) and the per-layer
    /// curves of every condition (`ratio_layers.svg`) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = dir.join("attention_ratio.json");
        write_atomic(&json, serde_json::to_string_pretty(self)?.as_bytes())?;
        let mut written = vec![json];
        for c in &self.conditions {
            let heads = c.per_head.first().map_or(0, Vec::len);
            let grid = Grid {
                rows: (0..c.per_head.len()).map(|l| format!("L{l}")).collect(),
                cols: (0..heads).map(|h| format!("H{h}")).collect(),
                values: c.per_head.clone(),
            };
            let title = format!(
                "attention ratio {} / {} ({}), {}",
                self.relevant, self.irrelevant, self.query, c.condition
            );
            let path = dir.join(format!("ratio_heads_{}.svg", c.condition));
            write_atomic(&path, heatmap_svg(&grid, &title)?.as_bytes())?;
            written.push(path);
        }
        let series: Vec<(String, Vec<(f64, f64)>)> = self
            .conditions
            .iter()
            .map(|c| {
                let pts = c
                    .per_layer
                    .iter()
                    .enumerate()
                    .map(|(l, r)| (l as f64, *r))
                    .collect();
                (c.condition.clone(), pts)
            })
            .collect();
        let path = dir.join("ratio_layers.svg");
        let title = format!(
            "attention ratio by layer ({} / {})",
            self.relevant, self.irrelevant
        );
        write_atomic(
            &path,
            lines_svg(&series, "layer", "mean ratio over heads", &title)?.as_bytes(),
        )?;
        written.push(path);
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_of_a_hand_built_pattern_is_the_hand_computed_one() {
        // 5 positions: 0 BOS, 1-2 relevant, 3 irrelevant, 4 query; 2 heads.
        let mut rows = vec![0f64; 2 * 5 * 5];
        let head0 = [0.1, 0.3, 0.2, 0.25, 0.15];
        let head1 = [0.5, 0.05, 0.05, 0.3, 0.1];
        rows[4 * 5..5 * 5].copy_from_slice(&head0);
        rows[25 + 4 * 5..25 + 5 * 5].copy_from_slice(&head1);
        let pattern = Tensor::from_slice(&rows).view([1, 2, 5, 5]);
        let tokenized = TokenizedPrompt {
            ids: vec![0; 5],
            spans: [
                ("relevant".to_string(), 1..3),
                ("irrelevant".to_string(), 3..4),
                ("query".to_string(), 4..5),
            ]
            .into_iter()
            .collect(),
            target_id: None,
        };
        let mut spans = RatioSpans {
            query: "query".into(),
            relevant: "relevant".into(),
            irrelevant: "irrelevant".into(),
            per_token: false,
        };
        let r = ratio_of_pattern(&pattern, &tokenized, &spans).unwrap();
        assert!((r[0] - 0.5 / 0.25).abs() < 1e-12 && (r[1] - 0.1 / 0.3).abs() < 1e-12);
        spans.per_token = true;
        let r = ratio_of_pattern(&pattern, &tokenized, &spans).unwrap();
        assert!((r[0] - 0.25 / 0.25).abs() < 1e-12 && (r[1] - 0.05 / 0.3).abs() < 1e-12);
        spans.relevant = "answer".into();
        assert!(ratio_of_pattern(&pattern, &tokenized, &spans).is_err());
    }
}
