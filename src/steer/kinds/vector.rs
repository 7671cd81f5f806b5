//! Steering vectors: `a ← a + scale·v` at chosen sites and every position
//! (prompt and generated tokens). `v` is either a difference of means over
//! contrast pairs (Turner et al. 2023; Rimsky et al. 2024), optionally
//! mean-centred (Jorgensen et al. 2023), or learned with the steering
//! objective — the SteerVec baseline of Stoehr et al. 2024.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::hooks::{HookContext, HookPoint, Intervention, RowEdit};
use crate::model::LoadedModel;
use crate::steer::build::{BuildContext, SteerKind};
use crate::steer::kinds::host_rows::HostRows;
use crate::steer::learn::task::Task;
use crate::steer::spec::SteerSpec;
use crate::steer::steer::Steer;
use serde::{Deserialize, Serialize};

pub struct SteeringVector {
    pub sites: Vec<HookPoint>,
    /// `[n_sites, d]`.
    pub vectors: Tensor,
    pub scale: f64,
    /// `scale · vectors` on the host, for the fused decode step.
    host: HostRows,
}

impl SteeringVector {
    pub fn new(sites: Vec<HookPoint>, vectors: Tensor, scale: f64) -> Result<Self> {
        let size = vectors.size();
        if size.len() != 2 || size[0] != sites.len() as i64 {
            return Err(Error::ShapeMismatch {
                name: "steering vectors".into(),
                expected: vec![sites.len() as i64, -1],
                got: size,
            });
        }
        Ok(SteeringVector {
            sites,
            vectors,
            scale,
            host: HostRows::default(),
        })
    }

    /// Zero vectors requiring gradients, for learning.
    pub fn zeros(sites: Vec<HookPoint>, d: usize, device: tch::Device) -> Result<Self> {
        let v = Tensor::f_zeros([sites.len() as i64, d as i64], (Kind::Float, device))?
            .set_requires_grad(true);
        Self::new(sites, v, 1.0)
    }
}

impl Intervention for SteeringVector {
    fn wants(&self, hook: HookPoint) -> bool {
        self.sites.contains(&hook)
    }

    /// `act` is `[batch, seq, d]`.
    fn apply(&mut self, hook: HookPoint, act: &Tensor, _: &HookContext) -> Result<Option<Tensor>> {
        let Some(i) = self.sites.iter().position(|s| *s == hook) else {
            return Ok(None);
        };
        let v = self.vectors.f_get(i as i64)?;
        if act.size().last() != v.size().last() {
            return Err(Error::Intervention {
                hook: hook.to_string(),
                reason: format!(
                    "steering vector of width {:?} for an activation {:?}",
                    v.size(),
                    act.size()
                ),
            });
        }
        let add = v
            .f_mul_scalar(self.scale)?
            .f_to_device(act.device())?
            .f_to_kind(act.kind())?;
        Ok(Some(act.f_add(&add)?))
    }

    /// The scaled vector, added to every row.
    fn row_edits(&mut self, hook: HookPoint, _: &HookContext) -> Result<Option<Vec<RowEdit>>> {
        let Some(i) = self.sites.iter().position(|s| *s == hook) else {
            return Ok(Some(Vec::new()));
        };
        let rows = self.host.get(&self.vectors, self.scale)?;
        Ok(Some(vec![RowEdit::Add(rows[i].clone())]))
    }
}

impl Steer for SteeringVector {
    fn parameters(&mut self) -> Vec<&mut Tensor> {
        vec![&mut self.vectors]
    }

    fn l1_from_identity(&self) -> Result<Tensor> {
        Ok(self
            .vectors
            .f_abs()?
            .f_sum(Kind::Float)?
            .f_mul_scalar(self.scale.abs())?)
    }

    fn components(&self, eps: f64) -> Result<(i64, i64)> {
        let moved = self
            .vectors
            .f_detach()?
            .f_abs()?
            .f_mul_scalar(self.scale.abs())?
            .f_gt(eps)?;
        Ok((
            moved.f_sum(Kind::Int64)?.f_int64_value(&[])?,
            self.vectors.numel() as i64,
        ))
    }

    fn to_spec(&self) -> Result<(SteerSpec, Vec<(String, Tensor)>)> {
        Ok((
            SteerSpec::new(
                KIND.name,
                &VectorParams {
                    sites: self.sites.iter().map(|s| s.to_string()).collect(),
                    scale: self.scale,
                },
            )?,
            vec![("vectors".into(), self.vectors.f_detach()?)],
        ))
    }
}

/// The JSON fields of a `steering_vector` spec; tensor `vectors [n_sites, d]`
/// goes beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorParams {
    pub sites: Vec<String>,
    pub scale: f64,
}

pub const KIND: SteerKind = SteerKind {
    name: "steering_vector",
    has_tensors: true,
    build: |spec, ctx: &mut BuildContext| {
        let p: VectorParams = ctx.params(spec)?;
        let sites = ctx.hooks(&p.sites)?;
        let vectors = ctx.tensor("vectors")?;
        Ok(Box::new(SteeringVector::new(sites, vectors, p.scale)?))
    },
};

/// `[batch, d]` activations at `hook`, last position, of each prompt of
/// `task` followed by its target (`answer = true`) or foil token.
fn last_position_acts(
    model: &LoadedModel,
    task: &Task,
    hook: HookPoint,
    answer: Option<bool>,
) -> Result<Tensor> {
    let mut rows = Vec::new();
    for item in &task.items {
        let mut ids = item.tokens.clone();
        match answer {
            Some(true) => ids.push(item.target),
            Some(false) => ids.push(item.foil),
            None => {}
        }
        let tokens = Tensor::f_from_slice(&ids)?
            .f_view([1, -1])?
            .f_to_device(model.model.device())?;
        let act = model.model.hook_rows(&tokens, &[hook])?.remove(0);
        let seq = act.size()[1];
        rows.push(
            act.f_select(1, seq - 1)?
                .f_reshape([-1])?
                .f_to_kind(Kind::Float)?,
        );
    }
    Ok(Tensor::f_stack(&rows, 0)?)
}

/// Difference of means at `hook` between each prompt completed with its
/// target and with its foil (the activation at the answer token). With
/// `mean_centre`, the target mean minus the mean over the prompts alone
/// (the dataset mean) instead.
pub fn difference_of_means(
    model: &LoadedModel,
    task: &Task,
    hook: HookPoint,
    mean_centre: bool,
) -> Result<Tensor> {
    let positive = last_position_acts(model, task, hook, Some(true))?.f_mean_dim(
        [0i64].as_slice(),
        false,
        Kind::Float,
    )?;
    let baseline = if mean_centre {
        last_position_acts(model, task, hook, None)?
    } else {
        last_position_acts(model, task, hook, Some(false))?
    };
    Ok(positive.f_sub(&baseline.f_mean_dim([0i64].as_slice(), false, Kind::Float)?)?)
}
