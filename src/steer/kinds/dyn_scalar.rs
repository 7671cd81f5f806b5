//! DynScalar (Stoehr et al. 2024): the activation-scaling factor at a site
//! is a learned function of the activation vector itself, so one
//! intervention applies to prompts of any length and to generated tokens:
//! `s(a) = 1 + w·â + b` per site, with `â = a/‖a‖` (so `w` is on the scale
//! of `b` whatever the activations' norm), identity at `w = 0, b = 0`.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::hooks::{HookContext, HookPoint, Intervention, RowEdit};
use crate::steer::build::{BuildContext, SteerKind};
use crate::steer::spec::SteerSpec;
use crate::steer::steer::Steer;
use serde::{Deserialize, Serialize};

use super::host_rows::HostRows;

pub struct DynScalar {
    pub sites: Vec<HookPoint>,
    /// `[n_sites, d]`.
    pub weight: Tensor,
    /// `[n_sites]`.
    pub bias: Tensor,
    /// Host copies for the fused decode step.
    host_weight: HostRows,
    host_bias: HostRows,
}

impl DynScalar {
    pub fn new(sites: Vec<HookPoint>, weight: Tensor, bias: Tensor) -> Result<Self> {
        let n = sites.len() as i64;
        if weight.dim() != 2 || weight.size()[0] != n || bias.size() != [n] {
            return Err(Error::ShapeMismatch {
                name: "dyn-scalar weight and bias".into(),
                expected: vec![n, -1],
                got: weight.size(),
            });
        }
        Ok(DynScalar {
            sites,
            weight,
            bias,
            host_weight: HostRows::default(),
            host_bias: HostRows::default(),
        })
    }

    /// The identity (zero weights and biases), requiring gradients.
    pub fn identity(sites: Vec<HookPoint>, d: usize, device: tch::Device) -> Result<Self> {
        let n = sites.len() as i64;
        let weight = Tensor::f_zeros([n, d as i64], (Kind::Float, device))?.set_requires_grad(true);
        let bias = Tensor::f_zeros([n], (Kind::Float, device))?.set_requires_grad(true);
        Self::new(sites, weight, bias)
    }
}

impl Intervention for DynScalar {
    fn wants(&self, hook: HookPoint) -> bool {
        self.sites.contains(&hook)
    }

    /// `act` is `[batch, seq, d]`.
    fn apply(&mut self, hook: HookPoint, act: &Tensor, _: &HookContext) -> Result<Option<Tensor>> {
        let Some(i) = self.sites.iter().position(|s| *s == hook) else {
            return Ok(None);
        };
        let w = self.weight.f_get(i as i64)?;
        if act.size().last() != w.size().last() {
            return Err(Error::Intervention {
                hook: hook.to_string(),
                reason: format!(
                    "dyn-scalar weight of width {:?} for an activation {:?}",
                    w.size(),
                    act.size()
                ),
            });
        }
        let a = act.f_to_kind(Kind::Float)?;
        let unit = a.f_div(
            &a.f_norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)?
                .f_clamp_min(1e-6)?,
        )?;
        let s = unit
            .f_matmul(&w.f_unsqueeze(1)?)? // [b, seq, 1]
            .f_add(&self.bias.f_get(i as i64)?)?
            .f_add_scalar(1.0)?;
        Ok(Some(a.f_mul(&s)?.f_to_kind(act.kind())?))
    }

    /// The same scaling, row by row, for the fused decode step.
    fn row_edits(&mut self, hook: HookPoint, _: &HookContext) -> Result<Option<Vec<RowEdit>>> {
        let Some(i) = self.sites.iter().position(|s| *s == hook) else {
            return Ok(Some(Vec::new()));
        };
        let weight = self.host_weight.get(&self.weight, 1.0)?[i].clone();
        let bias = self.host_bias.get(&self.bias.f_reshape([-1, 1])?, 1.0)?[i][0];
        Ok(Some(vec![RowEdit::DynScale { weight, bias }]))
    }
}

impl Steer for DynScalar {
    fn parameters(&mut self) -> Vec<&mut Tensor> {
        vec![&mut self.weight, &mut self.bias]
    }

    fn l1_from_identity(&self) -> Result<Tensor> {
        Ok(self
            .weight
            .f_abs()?
            .f_sum(Kind::Float)?
            .f_add(&self.bias.f_abs()?.f_sum(Kind::Float)?)?)
    }

    fn components(&self, eps: f64) -> Result<(i64, i64)> {
        // A site is touched when its function is not the identity.
        let w = self
            .weight
            .f_detach()?
            .f_abs()?
            .f_amax([1i64].as_slice(), false)?;
        let touched = w
            .f_gt(eps)?
            .f_logical_or(&self.bias.f_detach()?.f_abs()?.f_gt(eps)?)?;
        Ok((
            touched.f_sum(Kind::Int64)?.f_int64_value(&[])?,
            self.sites.len() as i64,
        ))
    }

    fn to_spec(&self) -> Result<(SteerSpec, Vec<(String, Tensor)>)> {
        Ok((
            SteerSpec::new(
                KIND.name,
                &DynScalarParams {
                    sites: self.sites.iter().map(|s| s.to_string()).collect(),
                },
            )?,
            vec![
                ("weight".into(), self.weight.f_detach()?),
                ("bias".into(), self.bias.f_detach()?),
            ],
        ))
    }
}

/// The JSON fields of a `dyn_scalar` spec; tensors `weight [n_sites, d]` and
/// `bias [n_sites]` go beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynScalarParams {
    pub sites: Vec<String>,
}

pub const KIND: SteerKind = SteerKind {
    name: "dyn_scalar",
    has_tensors: true,
    build: |spec, ctx: &mut BuildContext| {
        let p: DynScalarParams = ctx.params(spec)?;
        let sites = ctx.hooks(&p.sites)?;
        let weight = ctx.tensor("weight")?;
        let bias = ctx.tensor("bias")?;
        Ok(Box::new(DynScalar::new(sites, weight, bias)?))
    },
};
