//! The steer a learning run starts from, built from the method a user names:
//! activation scaling or DynScalar at the identity, a zero steering vector,
//! or a finished difference-of-means vector (nothing to learn).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::task::Task;
use super::{learn, EpochRecord, LearnConfig};
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::model::LoadedModel;
use crate::steer::kinds::dyn_scalar::DynScalar;
use crate::steer::kinds::scaling::{default_sites, ActivationScaling, Granularity};
use crate::steer::kinds::vector::{difference_of_means, SteeringVector};
use crate::steer::steer::Steer;

/// How a steer is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// ActivScalar: one learned scalar per site (or head, or position).
    ActivationScaling,
    /// DynScalar: a learned function of the activation scales it.
    DynScalar,
    /// A learned vector added at each site.
    SteeringVector,
    /// A difference of means over the task's target and foil completions.
    MeanDifference,
}

impl Method {
    /// Whether the method's parameters are learned by gradient descent.
    pub fn is_learned(self) -> bool {
        !matches!(self, Method::MeanDifference)
    }
}

/// Everything besides the optimiser that decides the steer.
#[derive(Debug, Clone)]
pub struct MethodConfig {
    pub method: Method,
    /// Hook names; empty for the defaults (every layer's attention and MLP
    /// outputs, or every layer's `attn.hook_z` per head).
    pub sites: Vec<String>,
    pub granularity: Granularity,
    /// Activation scaling: one scalar per prompt position (prompts must
    /// share a length).
    pub per_position: bool,
    /// Mean difference: subtract the mean over the prompts alone instead of
    /// the foil mean.
    pub mean_centre: bool,
    /// Mean difference: the vector's scale when applied.
    pub scale: f64,
}

/// The steer `cfg` starts from on `model` and `task`: the identity for the
/// learned methods, the finished vector for a difference of means.
pub fn initial_steer(
    model: &LoadedModel,
    task: &Task,
    cfg: &MethodConfig,
) -> Result<Box<dyn Steer>> {
    let mcfg = model.model.config();
    let device = model.model.device();
    let sites: Vec<HookPoint> = if cfg.sites.is_empty() {
        default_sites(mcfg.n_layers, cfg.granularity)
    } else {
        cfg.sites
            .iter()
            .map(|s| HookPoint::parse_for(s, mcfg.n_layers))
            .collect::<Result<_>>()?
    };
    let d = mcfg.d_model as usize;
    Ok(match cfg.method {
        Method::ActivationScaling => {
            let positions = if cfg.per_position {
                Some(task.common_length().ok_or_else(|| {
                    Error::InvalidArgument(
                        "one scalar per position needs prompts of one token length".into(),
                    )
                })?)
            } else {
                None
            };
            Box::new(ActivationScaling::identity(
                sites,
                cfg.granularity,
                mcfg.n_heads as usize,
                positions,
                device,
            )?)
        }
        Method::DynScalar => Box::new(DynScalar::identity(sites, d, device)?),
        Method::SteeringVector => Box::new(SteeringVector::zeros(sites, d, device)?),
        Method::MeanDifference => {
            let vectors = sites
                .iter()
                .map(|&s| difference_of_means(model, task, s, cfg.mean_centre))
                .collect::<Result<Vec<_>>>()?;
            Box::new(SteeringVector::new(
                sites,
                Tensor::f_stack(&vectors, 0)?,
                cfg.scale,
            )?)
        }
    })
}

/// Builds the steer of `cfg` and, for the learned methods, trains it on
/// `task` with `learn_cfg`, reporting each epoch.
pub fn make_steer(
    model: &LoadedModel,
    task: &Task,
    cfg: &MethodConfig,
    learn_cfg: &LearnConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Box<dyn Steer>> {
    let mut steer = initial_steer(model, task, cfg)?;
    if cfg.method.is_learned() {
        learn(model, task, steer.as_mut(), learn_cfg, on_epoch)?;
    }
    Ok(steer)
}
