//! Activation scaling (ActivScalar, Stoehr et al. 2024): one learned scalar
//! multiplies an activation vector at each chosen site — a layer's attention
//! or MLP output, or one head's output (`attn.hook_z`) — optionally one per
//! prompt position. A scalar of 1 leaves the model unchanged; the scalars
//! strengthen (>1), weaken (<1) or reverse (<0) what the model already
//! computes there.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::hooks::names::BlockSite;
use crate::hooks::{HookContext, HookPoint, Intervention, RowEdit};
use crate::plots::Grid;
use crate::steer::build::{BuildContext, SteerKind};
use crate::steer::kinds::host_rows::HostRows;
use crate::steer::spec::SteerSpec;
use crate::steer::steer::Steer;

/// One scalar per site, or per head of an attention site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Site,
    Head,
}

pub struct ActivationScaling {
    pub sites: Vec<HookPoint>,
    pub granularity: Granularity,
    /// With `Some(p)`, one scalar per absolute position `< p` (positions
    /// beyond are left alone); with `None`, one for all positions.
    pub positions: Option<usize>,
    /// `[n_sites, heads or 1, positions or 1]`.
    pub scalars: Tensor,
    /// Host copies of the scalars for the fused decode step.
    host: HostRows,
}

/// The default sites: every layer's attention and MLP outputs, or every
/// layer's heads.
pub fn default_sites(n_layers: usize, granularity: Granularity) -> Vec<HookPoint> {
    (0..n_layers)
        .flat_map(|l| match granularity {
            Granularity::Site => vec![HookPoint::attn_out(l), HookPoint::mlp_out(l)],
            Granularity::Head => vec![HookPoint::Block(l, BlockSite::AttnZ)],
        })
        .collect()
}

impl ActivationScaling {
    /// All scalars at 1 (the identity), requiring gradients.
    pub fn identity(
        sites: Vec<HookPoint>,
        granularity: Granularity,
        n_heads: usize,
        positions: Option<usize>,
        device: tch::Device,
    ) -> Result<Self> {
        let heads = if granularity == Granularity::Head {
            n_heads as i64
        } else {
            1
        };
        let scalars = Tensor::f_ones(
            [sites.len() as i64, heads, positions.unwrap_or(1) as i64],
            (Kind::Float, device),
        )?
        .set_requires_grad(true);
        Self::new(sites, granularity, positions, scalars)
    }

    /// Checks that the sites fit the granularity and the tensor the sites.
    pub fn new(
        sites: Vec<HookPoint>,
        granularity: Granularity,
        positions: Option<usize>,
        scalars: Tensor,
    ) -> Result<Self> {
        for site in &sites {
            let is_z = matches!(site, HookPoint::Block(_, BlockSite::AttnZ));
            if (granularity == Granularity::Head) != is_z {
                return Err(Error::InvalidArgument(format!(
                    "activation scaling per {granularity:?} cannot use site `{site}` (per-head scaling needs `attn.hook_z` sites, per-site scaling any other)"
                )));
            }
        }
        let size = scalars.size();
        if size.len() != 3
            || size[0] != sites.len() as i64
            || size[2] != positions.unwrap_or(1) as i64
        {
            return Err(Error::ShapeMismatch {
                name: "activation scaling scalars".into(),
                expected: vec![sites.len() as i64, -1, positions.unwrap_or(1) as i64],
                got: size,
            });
        }
        Ok(ActivationScaling {
            sites,
            granularity,
            positions,
            scalars,
            host: HostRows::default(),
        })
    }

    /// `[batch or 1, seq, heads or 1]` factors of site `i` for these positions.
    fn factors(&self, i: usize, ctx: &HookContext) -> Result<Tensor> {
        let s = self.scalars.f_get(i as i64)?; // [heads, P]
        match self.positions {
            None => Ok(s.f_reshape([1, 1, -1])?),
            Some(p) => {
                let pos = ctx.positions.f_to_device(s.device())?; // [b, seq]
                let inside = pos.f_lt(p as i64)?;
                let idx = pos.f_clamp(0, p as i64 - 1)?;
                // [heads, b*seq] → [b, seq, heads]
                let picked = s
                    .f_index_select(1, &idx.f_reshape([-1])?)?
                    .f_tr()?
                    .f_reshape([pos.size()[0], pos.size()[1], -1])?;
                let ones = picked.f_ones_like()?;
                Ok(picked.f_where_self(&inside.f_unsqueeze(-1)?, &ones)?)
            }
        }
    }
}

impl Intervention for ActivationScaling {
    fn wants(&self, hook: HookPoint) -> bool {
        self.sites.contains(&hook)
    }

    /// `[batch, seq, d]` at output sites, `[batch, seq, heads, d_head]` at `hook_z`.
    fn apply(
        &mut self,
        hook: HookPoint,
        act: &Tensor,
        ctx: &HookContext,
    ) -> Result<Option<Tensor>> {
        let Some(i) = self.sites.iter().position(|s| *s == hook) else {
            return Ok(None);
        };
        let f = self.factors(i, ctx)?.f_to_kind(act.kind())?;
        let f = match self.granularity {
            Granularity::Site => f,                  // [b, seq, 1] broadcasts over d
            Granularity::Head => f.f_unsqueeze(-1)?, // [b, seq, heads, 1]
        };
        Ok(Some(act.f_mul(&f)?))
    }

    /// One factor per site, or per position of this step's rows (none once
    /// every row is past the scaled positions, as on most decode steps), or
    /// per head; per-head scaling by position keeps the libtorch path.
    fn row_edits(&mut self, hook: HookPoint, ctx: &HookContext) -> Result<Option<Vec<RowEdit>>> {
        let Some(i) = self.sites.iter().position(|s| *s == hook) else {
            return Ok(Some(Vec::new()));
        };
        let scalars = self.host.get(&self.scalars, 1.0)?[i].clone();
        if self.granularity == Granularity::Head {
            return Ok(self
                .positions
                .is_none()
                .then(|| vec![RowEdit::ScaleHeads(scalars)]));
        }
        let Some(p) = self.positions else {
            return Ok(Some(vec![RowEdit::Scale(scalars[0])]));
        };
        let positions = Vec::<i64>::try_from(ctx.positions.f_reshape([-1])?)?;
        let factors: Vec<f32> = positions
            .iter()
            .map(|&pos| {
                usize::try_from(pos)
                    .ok()
                    .filter(|&q| q < p)
                    .map_or(1.0, |q| scalars[q])
            })
            .collect();
        Ok(Some(if factors.iter().all(|&f| f == 1.0) {
            Vec::new()
        } else {
            vec![RowEdit::ScaleRows(factors)]
        }))
    }
}

impl Steer for ActivationScaling {
    fn parameters(&mut self) -> Vec<&mut Tensor> {
        vec![&mut self.scalars]
    }

    fn l1_from_identity(&self) -> Result<Tensor> {
        Ok(self
            .scalars
            .f_sub_scalar(1.0)?
            .f_abs()?
            .f_sum(Kind::Float)?)
    }

    fn components(&self, eps: f64) -> Result<(i64, i64)> {
        let moved = self
            .scalars
            .f_detach()?
            .f_sub_scalar(1.0)?
            .f_abs()?
            .f_gt(eps)?;
        Ok((
            moved.f_sum(Kind::Int64)?.f_int64_value(&[])?,
            self.scalars.numel() as i64,
        ))
    }

    /// Layers as rows; each site (and head, and position) of a layer as a
    /// column; 1 where a layer has no such site.
    fn grid(&self, n_layers: usize) -> Result<Option<Grid>> {
        let size = self.scalars.size(); // [n_sites, heads, positions]
        let (heads, positions) = (size[1], size[2]);
        let flat: Vec<f32> = Vec::try_from(
            &self
                .scalars
                .f_detach()?
                .f_to_kind(Kind::Float)?
                .f_reshape([-1])?,
        )?;
        let mut cols: Vec<String> = Vec::new();
        let mut cells: std::collections::HashMap<(usize, usize), f64> = Default::default();
        for (i, site) in self.sites.iter().enumerate() {
            let (layer, name) = match site {
                HookPoint::Block(l, s) => (*l, s.name().to_string()),
                other => (0, other.to_string()),
            };
            for h in 0..heads {
                for p in 0..positions {
                    let col = match (heads > 1, positions > 1) {
                        (true, true) => format!("{name} h{h} p{p}"),
                        (true, false) => format!("{name} h{h}"),
                        (false, true) => format!("{name} p{p}"),
                        (false, false) => name.clone(),
                    };
                    let c = match cols.iter().position(|x| *x == col) {
                        Some(c) => c,
                        None => {
                            cols.push(col);
                            cols.len() - 1
                        }
                    };
                    let v = flat[(i as i64 * heads * positions + h * positions + p) as usize];
                    cells.entry((layer, c)).or_insert(v as f64);
                }
            }
        }
        let values = (0..n_layers)
            .map(|l| {
                (0..cols.len())
                    .map(|c| cells.get(&(l, c)).copied().unwrap_or(1.0))
                    .collect()
            })
            .collect();
        let rows = (0..n_layers).map(|l| format!("L{l}")).collect();
        Ok(Some(Grid { rows, cols, values }))
    }

    fn to_spec(&self) -> Result<(SteerSpec, Vec<(String, Tensor)>)> {
        Ok((
            SteerSpec::new(
                KIND.name,
                &ScalingParams {
                    sites: self.sites.iter().map(|s| s.to_string()).collect(),
                    granularity: self.granularity,
                    positions: self.positions,
                },
            )?,
            vec![("scalars".into(), self.scalars.f_detach()?)],
        ))
    }
}

/// The JSON fields of an `activation_scaling` spec; tensor `scalars
/// [n_sites, heads or 1, positions or 1]` goes beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingParams {
    pub sites: Vec<String>,
    pub granularity: Granularity,
    pub positions: Option<usize>,
}

pub const KIND: SteerKind = SteerKind {
    name: "activation_scaling",
    has_tensors: true,
    build: |spec, ctx: &mut BuildContext| {
        let p: ScalingParams = ctx.params(spec)?;
        let sites = ctx.hooks(&p.sites)?;
        let scalars = ctx.tensor("scalars")?;
        Ok(Box::new(ActivationScaling::new(
            sites,
            p.granularity,
            p.positions,
            scalars,
        )?))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_puts_each_scalar_at_its_layer_and_site() {
        let sites = vec![HookPoint::attn_out(0), HookPoint::mlp_out(2)];
        let scalars = Tensor::from_slice(&[2.0f32, 3.0]).view([2, 1, 1]);
        let steer = ActivationScaling::new(sites, Granularity::Site, None, scalars).unwrap();
        let grid = steer.grid(3).unwrap().unwrap();
        assert_eq!(grid.rows, ["L0", "L1", "L2"]);
        assert_eq!(grid.cols, ["hook_attn_out", "hook_mlp_out"]);
        assert_eq!(
            grid.values,
            vec![vec![2.0, 1.0], vec![1.0, 1.0], vec![1.0, 3.0]]
        );
    }

    #[test]
    fn per_head_and_position_scalars_get_a_column_each() {
        let sites = vec![HookPoint::Block(1, BlockSite::AttnZ)];
        let scalars = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([1, 2, 2]);
        let steer = ActivationScaling::new(sites, Granularity::Head, Some(2), scalars).unwrap();
        let grid = steer.grid(2).unwrap().unwrap();
        let cols: Vec<&str> = grid.cols.iter().map(String::as_str).collect();
        assert_eq!(
            cols,
            [
                "attn.hook_z h0 p0",
                "attn.hook_z h0 p1",
                "attn.hook_z h1 p0",
                "attn.hook_z h1 p1"
            ]
        );
        assert_eq!(grid.values[1], [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(grid.values[0], [1.0; 4]);
    }
}
