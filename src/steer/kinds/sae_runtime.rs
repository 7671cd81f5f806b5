//! The runtime SAE steering of Wu et al. 2025 ("Interpreting and Steering
//! LLMs with Mutual Information-based Explanations on Sparse Autoencoders"),
//! after their released code (`TopKSAE.enforce_actv` / `condit_actv`), at
//! every position of the prompt and of each decode step:
//!
//! - **amplify**: with `a_j` the selected features' pre-activations (before
//!   the top-k) and target magnitude `m`, the gaps `g_j = ReLU(m − ReLU(a_j))`
//!   weight a push `x ← x + m·Σ_j (g_j/Σ_k g_k)·W_dec[j]`; features already at
//!   `m` get none, and nothing moves when all are;
//! - **calibrate**: every selected feature is moved to exactly `m`,
//!   `x ← x + Σ_j (m − a_j)·W_dec[j]` (raising or lowering);
//!
//! after which the residual is rescaled to its original norm, per position.
//! Either can be **conditioned** on other features: the edit is applied only
//! when the mean of those features' positive activations in the call reaches
//! a threshold (0.1 in their code).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::sae_rows::{self, RuntimeRows};
use crate::error::{Error, Result};
use crate::hooks::{Computed, HookContext, HookPoint, Intervention, RowEdit};
use crate::sae::architecture::{encoder_input, pre_activations};
use crate::sae::Sae;
use crate::steer::build::{BuildContext, SteerKind};
use crate::steer::spec::SteerSpec;
use crate::steer::steer::Steer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Amplify,
    Calibrate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub features: Vec<usize>,
    pub threshold: f64,
}

pub struct SaeRuntimeSteer {
    pub sae: Sae,
    pub sae_path: String,
    pub hook: HookPoint,
    pub strategy: Strategy,
    pub features: Vec<usize>,
    pub magnitude: f64,
    pub condition: Option<Condition>,
    /// The strategy as a row function for the fused decode step, built on
    /// first use for a model of that dtype (`None` inside: no host rule).
    fused: Option<(Kind, Option<Computed>)>,
}

impl SaeRuntimeSteer {
    pub fn new(
        sae: Sae,
        sae_path: String,
        hook: HookPoint,
        strategy: Strategy,
        features: Vec<usize>,
        magnitude: f64,
        condition: Option<Condition>,
    ) -> Result<Self> {
        let all = features
            .iter()
            .chain(condition.iter().flat_map(|c| c.features.iter()));
        for &f in all {
            if f >= sae.cfg.d_sae {
                return Err(Error::InvalidArgument(format!(
                    "feature {f} is out of range: the SAE at {sae_path} has {} features",
                    sae.cfg.d_sae
                )));
            }
        }
        if features.is_empty() {
            return Err(Error::InvalidArgument(
                "runtime steering needs at least one feature".into(),
            ));
        }
        Ok(SaeRuntimeSteer {
            sae,
            sae_path,
            hook,
            strategy,
            features,
            magnitude,
            condition,
            fused: None,
        })
    }

    /// `[n, |idx|]` pre-activations (before any top-k or threshold) of `x` `[n, d]`.
    fn pre(&self, x: &Tensor, idx: &[usize]) -> Result<Tensor> {
        let w = &self.sae.weights;
        let index = Tensor::f_from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>())?
            .f_to_device(x.device())?;
        let rows = w.w_enc.f_index_select(0, &index)?;
        let bias = w.b_enc.f_index_select(0, &index)?;
        pre_activations(
            &encoder_input(w, &self.sae.cfg, x)?,
            &rows,
            &bias,
            Kind::Float,
        )
    }

    fn condition_met(&self, x: &Tensor) -> Result<bool> {
        let Some(c) = &self.condition else {
            return Ok(true);
        };
        if c.features.is_empty() {
            return Ok(true);
        }
        let h = self.pre(x, &c.features)?.f_relu()?;
        let positive = h.f_masked_select(&h.f_gt(0.0)?)?;
        if positive.numel() == 0 {
            return Ok(false);
        }
        Ok(positive.f_mean(Kind::Float)?.f_double_value(&[])? >= c.threshold)
    }

    /// `[n, d]` edited rows.
    fn edit(&self, x: &Tensor) -> Result<Tensor> {
        let index =
            Tensor::f_from_slice(&self.features.iter().map(|&i| i as i64).collect::<Vec<_>>())?
                .f_to_device(x.device())?;
        let dirs = self.sae.weights.w_dec.f_index_select(0, &index)?; // [|S|, d]
        let a = self.pre(x, &self.features)?; // [n, |S|]
        let coef = match self.strategy {
            Strategy::Amplify => {
                let gap = a
                    .f_relu()?
                    .f_neg()?
                    .f_add_scalar(self.magnitude)?
                    .f_relu()?;
                let total = gap.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?;
                // Rows already at the target everywhere are left alone.
                let safe = total.f_clamp_min(1e-12)?;
                gap.f_div(&safe)?.f_mul_scalar(self.magnitude)?
            }
            Strategy::Calibrate => a.f_neg()?.f_add_scalar(self.magnitude)?,
        };
        let moved = x.f_add(&coef.f_matmul(&dirs)?)?;
        let dim = [1i64];
        let norm = x.f_norm_scalaropt_dim(2.0, dim.as_slice(), true)?;
        let new_norm = moved
            .f_norm_scalaropt_dim(2.0, dim.as_slice(), true)?
            .f_clamp_min(1e-12)?;
        Ok(moved.f_mul(&norm.f_div(&new_norm)?)?)
    }
}

impl Intervention for SaeRuntimeSteer {
    fn wants(&self, hook: HookPoint) -> bool {
        hook == self.hook
    }

    /// `act` is `[batch, seq, d_in]`.
    fn apply(&mut self, _: HookPoint, act: &Tensor, _: &HookContext) -> Result<Option<Tensor>> {
        let shape = act.size();
        let x = act
            .f_reshape([-1, shape[shape.len() - 1]])?
            .f_to_kind(Kind::Float)?
            .f_to_device(self.sae.device())?;
        if !self.condition_met(&x)? {
            return Ok(None);
        }
        let out = self.edit(&x)?.f_reshape(shape.as_slice())?;
        Ok(Some(out.f_to_device(act.device())?.f_to_kind(act.kind())?))
    }

    /// The strategy row by row (`sae_rows`). A condition is read over the
    /// whole call's rows on the libtorch path, so a conditioned steer runs
    /// fused only on calls of one row (a decode step of one sequence).
    fn row_edits(&mut self, hook: HookPoint, ctx: &HookContext) -> Result<Option<Vec<RowEdit>>> {
        if hook != self.hook {
            return Ok(Some(Vec::new()));
        }
        let conditioned = self
            .condition
            .as_ref()
            .is_some_and(|c| !c.features.is_empty());
        if self.sae.device() != tch::Device::Cpu || (conditioned && ctx.positions.numel() != 1) {
            return Ok(None);
        }
        if self
            .fused
            .as_ref()
            .is_none_or(|(kind, _)| *kind != ctx.model_kind)
        {
            let condition = self
                .condition
                .as_ref()
                .map(|c| (c.features.as_slice(), c.threshold));
            let rows = RuntimeRows::new(
                &self.sae,
                &self.features,
                condition,
                match self.strategy {
                    Strategy::Amplify => sae_rows::Strategy::Amplify,
                    Strategy::Calibrate => sae_rows::Strategy::Calibrate,
                },
                self.magnitude,
                ctx.model_kind == Kind::BFloat16,
            )?;
            self.fused = Some((
                ctx.model_kind,
                rows.map(|r| Computed(std::sync::Arc::new(r))),
            ));
        }
        Ok(self
            .fused
            .as_ref()
            .and_then(|(_, f)| f.clone())
            .map(|f| vec![RowEdit::Computed(f)]))
    }
}

impl Steer for SaeRuntimeSteer {
    fn l1_from_identity(&self) -> Result<Tensor> {
        Ok(Tensor::from(
            self.magnitude.abs() * self.features.len() as f64,
        ))
    }

    fn components(&self, _eps: f64) -> Result<(i64, i64)> {
        Ok((self.features.len() as i64, self.sae.cfg.d_sae as i64))
    }

    fn to_spec(&self) -> Result<(SteerSpec, Vec<(String, Tensor)>)> {
        Ok((
            SteerSpec::new(
                KIND.name,
                &SaeRuntimeParams {
                    sae: self.sae_path.clone(),
                    hook: self.hook.to_string(),
                    strategy: self.strategy,
                    features: self.features.clone(),
                    magnitude: self.magnitude,
                    condition: self.condition.clone(),
                },
            )?,
            Vec::new(),
        ))
    }
}

/// The JSON fields of an `sae_runtime` spec (no tensors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeRuntimeParams {
    pub sae: String,
    pub hook: String,
    pub strategy: Strategy,
    pub features: Vec<usize>,
    pub magnitude: f64,
    #[serde(default)]
    pub condition: Option<Condition>,
}

pub const KIND: SteerKind = SteerKind {
    name: "sae_runtime",
    has_tensors: false,
    build: |spec, ctx: &mut BuildContext| {
        let p: SaeRuntimeParams = ctx.params(spec)?;
        let hook = ctx.hook(&p.hook)?;
        let sae = ctx.sae(&p.sae)?;
        Ok(Box::new(SaeRuntimeSteer::new(
            sae,
            p.sae,
            hook,
            p.strategy,
            p.features,
            p.magnitude,
            p.condition,
        )?))
    },
};
