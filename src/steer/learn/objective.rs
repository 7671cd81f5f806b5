//! The three terms that judge an intervention (Stoehr et al. 2024,
//! "Activation Scaling for Steering and Interpreting Language Models"), from
//! next-token logits at the last prompt position:
//! - **effectiveness**: `logit(target) − logit(foil)` (or the probability
//!   difference), to be pushed up;
//! - **faithfulness**: KL(clean ‖ steered) over the vocabulary *without* the
//!   two answer tokens, each distribution renormalised over the rest;
//! - **minimality**: the L1 distance of the intervention's parameters from
//!   the identity (computed by the intervention itself).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::Result;

/// Which difference the effectiveness term moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// `logit(target) − logit(foil)`.
    #[value(name = "logit")]
    LogitDiff,
    /// `p(target) − p(foil)`.
    #[value(name = "prob")]
    ProbDiff,
}

/// `[batch]` `logit(target) − logit(foil)` from last-position logits `[batch, vocab]`.
pub fn logit_diff(logits: &Tensor, target: &Tensor, foil: &Tensor) -> Result<Tensor> {
    let t = logits.f_gather(1, &target.f_unsqueeze(1)?, false)?;
    let f = logits.f_gather(1, &foil.f_unsqueeze(1)?, false)?;
    Ok(t.f_sub(&f)?.f_squeeze_dim(1)?)
}

/// `[batch]` `p(target) − p(foil)`.
pub fn prob_diff(logits: &Tensor, target: &Tensor, foil: &Tensor) -> Result<Tensor> {
    let p = logits.f_softmax(-1, Kind::Float)?;
    let t = p.f_gather(1, &target.f_unsqueeze(1)?, false)?;
    let f = p.f_gather(1, &foil.f_unsqueeze(1)?, false)?;
    Ok(t.f_sub(&f)?.f_squeeze_dim(1)?)
}

/// `[batch, vocab]` log-probs renormalised over every token but `target` and `foil`
/// (those two get −∞).
fn log_probs_without_answers(logits: &Tensor, target: &Tensor, foil: &Tensor) -> Result<Tensor> {
    let masked = logits
        .f_to_kind(Kind::Float)?
        .f_scatter_value(1, &target.f_unsqueeze(1)?, f64::NEG_INFINITY)?
        .f_scatter_value(1, &foil.f_unsqueeze(1)?, f64::NEG_INFINITY)?;
    Ok(masked.f_log_softmax(-1, Kind::Float)?)
}

/// `[batch]` KL(clean ‖ steered) over the tokens other than the answers.
pub fn kl_without_answers(
    clean: &Tensor,
    steered: &Tensor,
    target: &Tensor,
    foil: &Tensor,
) -> Result<Tensor> {
    let p = log_probs_without_answers(clean, target, foil)?;
    let q = log_probs_without_answers(steered, target, foil)?;
    // 0 · (−∞ − −∞) is NaN: zero the answers' terms explicitly.
    let keep = p.f_isfinite()?;
    let terms = p.f_exp()?.f_mul(&p.f_sub(&q)?)?;
    Ok(terms
        .f_where_self(&keep, &Tensor::f_zeros([], (Kind::Float, terms.device()))?)?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?)
}

/// `[batch]` total probability that moved between tokens other than the
/// answers: ½ Σ |p_clean − p_steered| over them (total variation).
pub fn mass_moved_without_answers(
    clean: &Tensor,
    steered: &Tensor,
    target: &Tensor,
    foil: &Tensor,
) -> Result<Tensor> {
    let zero_answers = |logits: &Tensor| -> Result<Tensor> {
        Ok(logits
            .f_softmax(-1, Kind::Float)?
            .f_scatter_value(1, &target.f_unsqueeze(1)?, 0.0)?
            .f_scatter_value(1, &foil.f_unsqueeze(1)?, 0.0)?)
    };
    Ok(zero_answers(clean)?
        .f_sub(&zero_answers(steered)?)?
        .f_abs()?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
        .f_mul_scalar(0.5)?)
}

/// Weights of the learning objective.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ObjectiveWeights {
    pub effect: Effect,
    /// Cap on each prompt's logit difference in the loss: once the target
    /// leads by this much, effectiveness stops pulling (None: no cap).
    pub margin: Option<f64>,
    pub lambda_faith: f64,
    pub lambda_min: f64,
}

/// The scalar loss `−effect + λ_faith·KL + λ_min·L1` (mean over the batch;
/// the effect capped at the margin),
/// with its parts as numbers.
pub struct Objective {
    pub loss: Tensor,
    pub effect: f64,
    pub kl: f64,
    pub l1: f64,
}

pub fn objective(
    clean: &Tensor,
    steered: &Tensor,
    target: &Tensor,
    foil: &Tensor,
    l1: &Tensor,
    w: &ObjectiveWeights,
) -> Result<Objective> {
    let steered = steered.f_to_kind(Kind::Float)?;
    let per_prompt = match w.effect {
        Effect::LogitDiff => logit_diff(&steered, target, foil)?,
        Effect::ProbDiff => prob_diff(&steered, target, foil)?,
    };
    let effect = match w.margin {
        Some(m) => per_prompt.f_clamp_max(m)?,
        None => per_prompt,
    }
    .f_mean(Kind::Float)?;
    let kl = kl_without_answers(clean, &steered, target, foil)?.f_mean(Kind::Float)?;
    let loss = effect
        .f_neg()?
        .f_add(&kl.f_mul_scalar(w.lambda_faith)?)?
        .f_add(&l1.f_mul_scalar(w.lambda_min)?)?;
    Ok(Objective {
        effect: effect.f_double_value(&[])?,
        kl: kl.f_double_value(&[])?,
        l1: l1.f_double_value(&[])?,
        loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_and_mass_ignore_the_answer_tokens() {
        // Moving mass only between target (0) and foil (1) costs nothing.
        let clean = Tensor::from_slice(&[2.0f32, 0.0, 1.0, 1.0]).view([1, 4]);
        let steered = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 1.0]).view([1, 4]);
        let (t, f) = (Tensor::from_slice(&[0i64]), Tensor::from_slice(&[1i64]));
        assert!(
            kl_without_answers(&clean, &steered, &t, &f)
                .unwrap()
                .double_value(&[0])
                .abs()
                < 1e-7
        );
        let d = logit_diff(&steered, &t, &f).unwrap().double_value(&[0]);
        assert_eq!(d, -2.0);
        // Changing the others does cost: KL of (½, ½) against (e/(1+e), 1/(1+e)).
        let other = Tensor::from_slice(&[2.0f32, 0.0, 2.0, 1.0]).view([1, 4]);
        let kl = kl_without_answers(&clean, &other, &t, &f)
            .unwrap()
            .double_value(&[0]);
        let q = std::f64::consts::E / (1.0 + std::f64::consts::E);
        let want = 0.5 * (0.5f64 / q).ln() + 0.5 * (0.5f64 / (1.0 - q)).ln();
        assert!((kl - want).abs() < 1e-6, "{kl} vs {want}");
        assert!(
            mass_moved_without_answers(&clean, &other, &t, &f)
                .unwrap()
                .double_value(&[0])
                > 0.0
        );
    }
}
