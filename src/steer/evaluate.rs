//! `saescope eval steer`: an intervention's effectiveness, faithfulness and
//! minimality on a task's prompts.

use serde::{Deserialize, Serialize};
use tch::Kind;

use super::learn::last_logits;
use super::steer::{steer_hooks, Steer};
use crate::error::Result;
use crate::hooks::Hooks;
use crate::model::LoadedModel;
use crate::steer::learn::objective::{
    kl_without_answers, logit_diff, mass_moved_without_answers, prob_diff,
};
use crate::steer::learn::task::Task;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SteerReport {
    pub prompts: usize,
    /// Effectiveness: share of prompts where the target now beats the foil.
    pub flipped_fraction: f64,
    /// Share of prompts where the clean model already preferred the target.
    pub clean_target_fraction: f64,
    pub mean_logit_diff_clean: f64,
    pub mean_logit_diff: f64,
    pub mean_prob_diff_clean: f64,
    pub mean_prob_diff: f64,
    /// Faithfulness: mean KL(clean ‖ steered) over tokens other than the answers.
    pub kl: f64,
    /// Mean probability mass moved among tokens other than the answers.
    pub mass_moved: f64,
    /// Minimality: Σ|θ − θ_identity| over every intervention.
    pub l1: f64,
    /// Components (scalars, vector entries, features) with |θ − identity| > eps.
    pub components_changed: i64,
    pub components_total: i64,
    pub fraction_changed: f64,
    pub eps: f64,
}

pub fn evaluate_steers(
    model: &LoadedModel,
    task: &Task,
    steers: &mut [Box<dyn Steer>],
    eps: f64,
) -> Result<SteerReport> {
    let device = model.model.device();
    let mut n = 0usize;
    let mut sums = [0.0f64; 8];
    tch::no_grad(|| -> Result<()> {
        for batch in task.batches(16)? {
            let clean = last_logits(model, &batch.tokens, &mut Hooks::new())?;
            let mut hooks = steer_hooks(steers);
            let steered = last_logits(model, &batch.tokens, &mut hooks)?;
            let (t, f) = (
                batch.target.f_to_device(device)?,
                batch.foil.f_to_device(device)?,
            );
            let d_clean = logit_diff(&clean, &t, &f)?;
            let d = logit_diff(&steered, &t, &f)?;
            let sum =
                |x: tch::Tensor| -> Result<f64> { Ok(x.f_sum(Kind::Double)?.f_double_value(&[])?) };
            let vals = [
                sum(d.f_gt(0.0)?.f_to_kind(Kind::Float)?)?,
                sum(d_clean.f_gt(0.0)?.f_to_kind(Kind::Float)?)?,
                sum(d_clean.shallow_clone())?,
                sum(d)?,
                sum(prob_diff(&clean, &t, &f)?)?,
                sum(prob_diff(&steered, &t, &f)?)?,
                sum(kl_without_answers(&clean, &steered, &t, &f)?)?,
                sum(mass_moved_without_answers(&clean, &steered, &t, &f)?)?,
            ];
            for (s, v) in sums.iter_mut().zip(vals) {
                *s += v;
            }
            n += batch.tokens.size()[0] as usize;
        }
        Ok(())
    })?;
    let (mut l1, mut changed, mut total) = (0.0, 0, 0);
    for s in steers.iter() {
        l1 += s.l1_from_identity()?.f_double_value(&[])?;
        let (c, t) = s.components(eps)?;
        changed += c;
        total += t;
    }
    let m = n.max(1) as f64;
    Ok(SteerReport {
        prompts: n,
        flipped_fraction: sums[0] / m,
        clean_target_fraction: sums[1] / m,
        mean_logit_diff_clean: sums[2] / m,
        mean_logit_diff: sums[3] / m,
        mean_prob_diff_clean: sums[4] / m,
        mean_prob_diff: sums[5] / m,
        kl: sums[6] / m,
        mass_moved: sums[7] / m,
        l1,
        components_changed: changed,
        components_total: total,
        fraction_changed: changed as f64 / total.max(1) as f64,
        eps,
    })
}
