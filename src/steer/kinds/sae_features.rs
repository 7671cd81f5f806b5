//! Steering through SAE features at the SAE's hook point:
//! - `add`: `a ← a + α·W_dec[f]`;
//! - `clamp`: encode, set feature f to v, decode, and keep the SAE's error
//!   term `a − x̂`, i.e. `a ← a + (v − f(a))·W_dec[f]`, so an unchanged
//!   feature leaves the activation exactly as it was;
//! - `ablate`: clamp to 0.
//!
//! Without the error term, the clamped activation is the SAE's edited
//! reconstruction instead. The BOS position is left alone. On the fused
//! decode step the edits run row by row (`sae_rows`).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::sae_rows::{self, FeatureRows};
use crate::error::{Error, Result};
use crate::hooks::{Computed, HookContext, HookPoint, Intervention, RowEdit};
use crate::sae::config::{NORMALIZE_EXPECTED_AVERAGE, NORMALIZE_NONE};
use crate::sae::Sae;
use crate::steer::build::{BuildContext, SteerKind};
use crate::steer::spec::SteerSpec;
use crate::steer::steer::Steer;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FeatureOp {
    Add { alpha: f64 },
    Clamp { value: f64 },
    Ablate,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureEdit {
    pub feature: usize,
    #[serde(flatten)]
    pub op: FeatureOp,
}

impl std::str::FromStr for FeatureEdit {
    type Err = Error;

    /// `FEATURE:add:ALPHA`, `FEATURE:clamp:VALUE` or `FEATURE:ablate`.
    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidArgument(format!("feature edit `{text}`: {why}"));
        let parts: Vec<&str> = text.split(':').collect();
        let feature: usize = parts[0]
            .parse()
            .map_err(|_| bad("the feature index must be a number"))?;
        let number = |i: usize| -> Result<f64> {
            parts
                .get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("needs a number after the operation"))
        };
        let op = match parts.get(1).copied() {
            Some("add") => FeatureOp::Add { alpha: number(2)? },
            Some("clamp") => FeatureOp::Clamp { value: number(2)? },
            Some("ablate") => FeatureOp::Ablate,
            _ => {
                return Err(bad(
                    "use FEATURE:add:ALPHA, FEATURE:clamp:VALUE or FEATURE:ablate",
                ))
            }
        };
        Ok(FeatureEdit { feature, op })
    }
}

pub struct SaeFeatureSteer {
    pub sae: Sae,
    /// Where the SAE was loaded from (written back into the spec).
    pub sae_path: String,
    pub hook: HookPoint,
    pub edits: Vec<FeatureEdit>,
    pub keep_error: bool,
    /// The edits as a row function for the fused decode step, built on
    /// first use for a model of that dtype (`None` inside: the SAE's
    /// architecture has no host rule).
    fused: Option<(tch::Kind, Option<Computed>)>,
}

impl SaeFeatureSteer {
    pub fn new(
        sae: Sae,
        sae_path: String,
        hook: HookPoint,
        edits: Vec<FeatureEdit>,
        keep_error: bool,
    ) -> Result<Self> {
        if edits.is_empty() {
            return Err(Error::InvalidArgument(
                "an SAE-feature intervention needs at least one edit".into(),
            ));
        }
        for e in &edits {
            if e.feature >= sae.cfg.d_sae {
                return Err(Error::InvalidArgument(format!(
                    "feature {} is out of range: the SAE at {sae_path} has {} features",
                    e.feature, sae.cfg.d_sae
                )));
            }
        }
        let linear = [NORMALIZE_NONE, NORMALIZE_EXPECTED_AVERAGE]
            .contains(&sae.cfg.normalize_activations.as_str());
        if !linear && edits.iter().any(|e| !matches!(e.op, FeatureOp::Add { .. })) {
            return Err(Error::InvalidArgument(format!(
                "clamping features of an SAE with per-row `{}` normalisation is not supported",
                sae.cfg.normalize_activations
            )));
        }
        Ok(SaeFeatureSteer {
            sae,
            sae_path,
            hook,
            edits,
            keep_error,
            fused: None,
        })
    }

    /// `[b*s, d]` change of the activation for rows `x` `[b*s, d]`.
    fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let w_dec = &self.sae.weights.w_dec;
        let needs_acts = self
            .edits
            .iter()
            .any(|e| !matches!(e.op, FeatureOp::Add { .. }));
        let (acts, recon) = if needs_acts {
            let (a, r) = self.sae.forward(x)?;
            (Some(a), Some(r))
        } else {
            (None, None)
        };
        let mut delta = match (&recon, self.keep_error) {
            // Without the error term the activation becomes the reconstruction.
            (Some(r), false) => r.f_sub(x)?,
            _ => x.f_zeros_like()?,
        };
        for e in &self.edits {
            let row = w_dec.f_get(e.feature as i64)?.f_unsqueeze(0)?; // [1, d]
            let coef = match (e.op, &acts) {
                (FeatureOp::Add { alpha }, _) => {
                    Tensor::f_full([x.size()[0], 1], alpha, (Kind::Float, x.device()))?
                }
                (FeatureOp::Clamp { value }, Some(a)) => a
                    .f_narrow(1, e.feature as i64, 1)?
                    .f_neg()?
                    .f_add_scalar(value)?,
                (FeatureOp::Ablate, Some(a)) => a.f_narrow(1, e.feature as i64, 1)?.f_neg()?,
                _ => continue,
            };
            delta = delta.f_add(&coef.f_matmul(&row)?)?;
        }
        Ok(delta)
    }
}

impl Intervention for SaeFeatureSteer {
    fn wants(&self, hook: HookPoint) -> bool {
        hook == self.hook
    }

    /// `act` is `[batch, seq, d_in]`.
    fn apply(&mut self, _: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        let shape = act.size();
        let x = act
            .f_reshape([-1, shape[shape.len() - 1]])?
            .f_to_kind(Kind::Float)?
            .f_to_device(self.sae.device())?;
        let delta = self.delta(&x)?.f_reshape(shape.as_slice())?;
        // Leave position 0 (BOS) alone.
        let keep = ctx
            .positions
            .f_gt(0)?
            .f_unsqueeze(-1)?
            .f_to_kind(Kind::Float)?
            .f_to_device(delta.device())?;
        let delta = delta
            .f_mul(&keep)?
            .f_to_device(act.device())?
            .f_to_kind(act.kind())?;
        Ok(Some(act.f_add(&delta)?))
    }

    /// On steps without a BOS position (which `apply` leaves alone): feature
    /// additions alone as one vector added to every row; clamps and
    /// ablations (with the error term kept) as a row function that encodes
    /// each row with the SAE's encoder rows on the host.
    fn row_edits(&mut self, hook: HookPoint, ctx: &HookContext) -> Result<Option<Vec<RowEdit>>> {
        if hook != self.hook {
            return Ok(Some(Vec::new()));
        }
        let holds_bos = ctx.positions.f_eq(0)?.f_any()?.f_int64_value(&[])? != 0;
        if holds_bos || self.sae.device() != tch::Device::Cpu {
            return Ok(None);
        }
        let adds_only = self
            .edits
            .iter()
            .all(|e| matches!(e.op, FeatureOp::Add { .. }));
        if adds_only {
            return Ok(Some(
                self.summed_additions()?
                    .map(RowEdit::Add)
                    .into_iter()
                    .collect(),
            ));
        }
        if !self.keep_error {
            return Ok(None);
        }
        if self
            .fused
            .as_ref()
            .is_none_or(|(kind, _)| *kind != ctx.model_kind)
        {
            let edits: Vec<(usize, sae_rows::FeatureOp)> = self
                .edits
                .iter()
                .map(|e| {
                    let op = match e.op {
                        FeatureOp::Add { alpha } => sae_rows::FeatureOp::Add(alpha as f32),
                        FeatureOp::Clamp { value } => sae_rows::FeatureOp::Clamp(value as f32),
                        FeatureOp::Ablate => sae_rows::FeatureOp::Ablate,
                    };
                    (e.feature, op)
                })
                .collect();
            let bf16 = ctx.model_kind == Kind::BFloat16;
            let rows = FeatureRows::new(&self.sae, &edits, bf16)?;
            self.fused = Some((
                ctx.model_kind,
                rows.map(|f| Computed(std::sync::Arc::new(f))),
            ));
        }
        Ok(self
            .fused
            .as_ref()
            .and_then(|(_, f)| f.clone())
            .map(|f| vec![RowEdit::Computed(f)]))
    }
}

impl SaeFeatureSteer {
    /// `Σ α·W_dec[f]` over the additions, in `delta`'s order, in f32.
    fn summed_additions(&self) -> Result<Option<Vec<f32>>> {
        let mut sum: Option<Vec<f32>> = None;
        for e in &self.edits {
            let FeatureOp::Add { alpha } = e.op else {
                continue;
            };
            let row = Vec::<f32>::try_from(
                self.sae
                    .weights
                    .w_dec
                    .f_get(e.feature as i64)?
                    .f_to_kind(Kind::Float)?,
            )?;
            let scaled = row.iter().map(|w| alpha as f32 * w);
            sum = Some(match sum {
                None => scaled.collect(),
                Some(acc) => acc.iter().zip(scaled).map(|(a, b)| a + b).collect(),
            });
        }
        Ok(sum)
    }
}

impl Steer for SaeFeatureSteer {
    fn l1_from_identity(&self) -> Result<Tensor> {
        let total: f64 = self
            .edits
            .iter()
            .map(|e| match e.op {
                FeatureOp::Add { alpha } => alpha.abs(),
                FeatureOp::Clamp { .. } | FeatureOp::Ablate => 1.0,
            })
            .sum();
        Ok(Tensor::from(total))
    }

    fn components(&self, _eps: f64) -> Result<(i64, i64)> {
        Ok((self.edits.len() as i64, self.sae.cfg.d_sae as i64))
    }

    fn to_spec(&self) -> Result<(SteerSpec, Vec<(String, Tensor)>)> {
        Ok((
            SteerSpec::new(
                KIND.name,
                &SaeFeaturesParams {
                    sae: self.sae_path.clone(),
                    hook: self.hook.to_string(),
                    edits: self.edits.clone(),
                    keep_error: self.keep_error,
                },
            )?,
            Vec::new(),
        ))
    }
}

/// The JSON fields of an `sae_features` spec (no tensors: the SAE folder is
/// referenced by path, relative to the file or absolute).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeFeaturesParams {
    pub sae: String,
    pub hook: String,
    pub edits: Vec<FeatureEdit>,
    pub keep_error: bool,
}

pub const KIND: SteerKind = SteerKind {
    name: "sae_features",
    has_tensors: false,
    build: |spec, ctx: &mut BuildContext| {
        let p: SaeFeaturesParams = ctx.params(spec)?;
        let hook = ctx.hook(&p.hook)?;
        let sae = ctx.sae(&p.sae)?;
        Ok(Box::new(SaeFeatureSteer::new(
            sae,
            p.sae,
            hook,
            p.edits,
            p.keep_error,
        )?))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_parse_from_their_flag_spelling() {
        let add: FeatureEdit = "12:add:2.5".parse().unwrap();
        assert_eq!((add.feature, add.op), (12, FeatureOp::Add { alpha: 2.5 }));
        let clamp: FeatureEdit = "3:clamp:-1".parse().unwrap();
        assert_eq!(clamp.op, FeatureOp::Clamp { value: -1.0 });
        assert_eq!(
            "7:ablate".parse::<FeatureEdit>().unwrap().op,
            FeatureOp::Ablate
        );
        for (bad, why) in [
            ("x:add:1", "must be a number"),
            ("1:add", "needs a number"),
            ("1:scale:2", "FEATURE:add:ALPHA"),
        ] {
            let err = bad.parse::<FeatureEdit>().unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains(why), "{err}");
        }
    }
}
