//! Learning an intervention's parameters by gradient descent through the
//! frozen model on a task's training prompts: Adam on
//! `−effect + λ_faith·KL + λ_min·L1` (see [`crate::steer::learn::objective`]).

pub mod method;
pub mod objective;
pub mod select;
pub mod task;

use serde::Serialize;
use tch::{Kind, Tensor};

use super::steer::Steer;
use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::model::{ForwardInput, LoadedModel, LogitsFor, StopAt};
use crate::steer::learn::objective::{objective, ObjectiveWeights};
use crate::steer::learn::task::Task;
use crate::train::adam::{Adam, AdamConfig};

#[derive(Debug, Clone, Copy)]
pub struct LearnConfig {
    pub weights: ObjectiveWeights,
    /// Passes over the training prompts.
    pub epochs: usize,
    pub lr: f64,
    /// Prompts per step.
    pub batch: usize,
}

/// One epoch's means.
#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub effect: f64,
    pub kl: f64,
    pub l1: f64,
}

/// `[batch, vocab]` f32 logits at the last position of `tokens` `[batch, seq]`.
pub fn last_logits(model: &LoadedModel, tokens: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
    let tokens = tokens.f_to_device(model.model.device())?;
    let logits = model
        .model
        .forward(
            &ForwardInput::tokens(&tokens),
            None,
            hooks,
            StopAt::Logits(LogitsFor::Last),
        )?
        .ok_or_else(|| Error::InvalidArgument("the forward pass returned no logits".into()))?;
    Ok(logits.f_squeeze_dim(1)?.f_to_kind(Kind::Float)?)
}

/// Trains `steer`'s parameters on `task`; calls `on_epoch` after each epoch.
pub fn learn(
    model: &LoadedModel,
    task: &Task,
    steer: &mut dyn Steer,
    cfg: &LearnConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Vec<EpochRecord>> {
    let batches = task.batches(cfg.batch)?;
    let device = model.model.device();
    let clean: Vec<Tensor> = batches
        .iter()
        .map(|b| tch::no_grad(|| last_logits(model, &b.tokens, &mut Hooks::new())))
        .collect::<Result<_>>()?;
    let params: Vec<Tensor> = steer
        .parameters()
        .iter()
        .map(|p| p.shallow_clone())
        .collect();
    if params.is_empty() {
        return Err(Error::InvalidArgument(
            "this intervention has nothing to learn".into(),
        ));
    }
    let refs: Vec<&Tensor> = params.iter().collect();
    let mut adam = Adam::new(
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        &refs,
    )?;
    let mut history = Vec::new();
    for epoch in 0..cfg.epochs {
        let mut sums = [0.0; 4];
        for (batch, clean) in batches.iter().zip(&clean) {
            let steered = last_logits(model, &batch.tokens, &mut Hooks::new().with(&mut *steer))?;
            let l1 = steer.l1_from_identity()?;
            let target = batch.target.f_to_device(device)?;
            let foil = batch.foil.f_to_device(device)?;
            let obj = objective(clean, &steered, &target, &foil, &l1, &cfg.weights)?;
            if !obj.loss.f_double_value(&[])?.is_finite() {
                return Err(Error::Training(format!(
                    "the steering objective is not finite at epoch {epoch}"
                )));
            }
            obj.loss.f_backward()?;
            let mut ps = steer.parameters();
            let grads: Vec<Tensor> = ps
                .iter()
                .map(|p| {
                    let g = p.grad();
                    if g.defined() {
                        g.copy()
                    } else {
                        p.zeros_like()
                    }
                })
                .collect();
            for p in ps.iter_mut() {
                p.zero_grad();
            }
            adam.update(&mut ps, &grads, cfg.lr)?;
            for (s, v) in
                sums.iter_mut()
                    .zip([obj.loss.f_double_value(&[])?, obj.effect, obj.kl, obj.l1])
            {
                *s += v;
            }
        }
        let n = batches.len() as f64;
        let record = EpochRecord {
            epoch,
            loss: sums[0] / n,
            effect: sums[1] / n,
            kl: sums[2] / n,
            l1: sums[3] / n,
        };
        on_epoch(&record);
        history.push(record);
    }
    Ok(history)
}
