//! Choosing SAE features to steer a task with: each feature's decoder row
//! is scored by how much adding it at the hook would raise
//! `logit(target) − logit(foil)` at the last position, to first order — the
//! dot product of the row with the gradient of that difference, averaged
//! over the task's prompts (attribution patching along feature directions).

use tch::{Kind, Tensor};

use super::objective::logit_diff;
use super::task::Task;
use crate::error::{Error, Result};
use crate::hooks::{FnIntervention, HookPoint, Hooks};
use crate::model::LoadedModel;
use crate::sae::Sae;
use crate::steer::learn::last_logits;

/// Features with their mean first-order effect on the logit difference per
/// unit of activation, best first.
pub fn rank_features(
    model: &LoadedModel,
    task: &Task,
    sae: &Sae,
    hook: HookPoint,
) -> Result<Vec<(usize, f64)>> {
    let device = model.model.device();
    let mut total: Option<Tensor> = None;
    let mut n = 0i64;
    for batch in task.batches(16)? {
        let (b, seq) = (batch.tokens.size()[0], batch.tokens.size()[1]);
        let delta = Tensor::f_zeros([b, seq, sae.cfg.d_in as i64], (Kind::Float, device))?
            .set_requires_grad(true);
        let probe = delta.shallow_clone();
        let mut add = FnIntervention::new(vec![hook], move |_, act: &Tensor, _| {
            Ok(Some(act.f_add(&probe.f_to_kind(act.kind())?)?))
        });
        let logits = last_logits(model, &batch.tokens, &mut Hooks::new().with(&mut add))?;
        let diff = logit_diff(
            &logits,
            &batch.target.f_to_device(device)?,
            &batch.foil.f_to_device(device)?,
        )?;
        diff.f_sum(Kind::Float)?.f_backward()?;
        let grad = delta.grad();
        if !grad.defined() {
            return Err(Error::Intervention {
                hook: hook.to_string(),
                reason: "no gradient reached the hook point".into(),
            });
        }
        // [b, d] at the last position, summed over prompts.
        let g =
            grad.f_select(1, seq - 1)?
                .f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?;
        total = Some(match total {
            Some(t) => t.f_add(&g)?,
            None => g,
        });
        n += b;
    }
    let g = total
        .ok_or_else(|| Error::InvalidArgument("empty task".into()))?
        .f_div_scalar(n as f64)?;
    let scores = sae.weights.w_dec.f_matmul(&g.f_to_device(sae.device())?)?; // [d_sae]
    let values: Vec<f64> = Vec::<f32>::try_from(&scores)?
        .into_iter()
        .map(f64::from)
        .collect();
    let mut ranked: Vec<(usize, f64)> = values.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(ranked)
}
