//! The standard patching sweeps of `saescope patch` (TransformerLens's
//! `patching` module names them alike): the residual stream by layer ×
//! position, attention and MLP outputs by layer × position and by layer,
//! and every head's `z` by layer × head; each exact, by attribution, or both
//! with their correlation, written as JSON and heatmaps.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::patching::{
    attribution_patching, exact_patching, grid_correlation, Baselines, Direction, PatchGrid,
    PatchTask, Unit,
};
use crate::error::{Error, Result};
use crate::hooks::{BlockSite, HookPoint};
use crate::io::atomic::write_atomic;
use crate::model::LoadedModel;
use crate::plots::{heatmap_around_svg, Grid};

/// One sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Sweep {
    /// `hook_resid_pre`, layer × position.
    ResidPre,
    /// `hook_attn_out`, layer × position.
    AttnOut,
    /// `hook_mlp_out`, layer × position.
    MlpOut,
    /// `hook_attn_out` of every position, by layer.
    AttnOutLayer,
    /// `hook_mlp_out` of every position, by layer.
    MlpOutLayer,
    /// `attn.hook_z` of every position, layer × head.
    Heads,
}

impl Sweep {
    fn hooks_and_unit(self, n_layers: usize) -> (Vec<HookPoint>, Unit) {
        let at = |site| (0..n_layers).map(|l| HookPoint::Block(l, site)).collect();
        match self {
            Sweep::ResidPre => (at(BlockSite::ResidPre), Unit::Position),
            Sweep::AttnOut => (at(BlockSite::AttnOut), Unit::Position),
            Sweep::MlpOut => (at(BlockSite::MlpOut), Unit::Position),
            Sweep::AttnOutLayer => (at(BlockSite::AttnOut), Unit::All),
            Sweep::MlpOutLayer => (at(BlockSite::MlpOut), Unit::All),
            Sweep::Heads => (at(BlockSite::AttnZ), Unit::Head),
        }
    }
}

/// Exact patching, attribution patching, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Exact,
    Attribution,
    Both,
}

/// One sweep's grids.
#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    pub sweep: Sweep,
    pub exact: Option<PatchGrid>,
    pub attribution: Option<PatchGrid>,
    /// Pearson correlation of the two grids' cells, with both.
    pub correlation: Option<f64>,
    pub exact_seconds: Option<f64>,
    pub attribution_seconds: Option<f64>,
}

/// The result of [`run_sweeps`].
#[derive(Debug, Clone, Serialize)]
pub struct PatchReport {
    pub task: String,
    pub pairs: usize,
    pub direction: Direction,
    pub baselines: Option<Baselines>,
    /// The first pair's clean tokens, one per position.
    pub positions: Vec<String>,
    pub sweeps: Vec<SweepResult>,
}

/// Runs `sweeps` on `task`; head sweeps patch only `head_positions` when given.
#[allow(clippy::too_many_arguments)]
pub fn run_sweeps(
    model: &LoadedModel,
    task: &PatchTask,
    task_name: &str,
    sweeps: &[Sweep],
    direction: Direction,
    method: Method,
    head_positions: Option<&[usize]>,
    progress: &mut dyn FnMut(Sweep, usize, usize),
) -> Result<PatchReport> {
    if sweeps.is_empty() {
        return Err(Error::InvalidArgument("no sweep to run".into()));
    }
    let n_layers = model.model.config().n_layers;
    let mut baselines = None;
    let mut results = Vec::new();
    for &sweep in sweeps {
        let (hooks, unit) = sweep.hooks_and_unit(n_layers);
        let positions = if unit == Unit::Head {
            head_positions
        } else {
            None
        };
        let (mut exact, mut attribution) = (None, None);
        let (mut exact_seconds, mut attribution_seconds) = (None, None);
        if method != Method::Attribution {
            let started = std::time::Instant::now();
            let (grid, base) = exact_patching(
                model,
                task,
                &hooks,
                unit,
                direction.runs(),
                positions,
                &mut |d, t| progress(sweep, d, t),
            )?;
            exact_seconds = Some(started.elapsed().as_secs_f64());
            exact = Some(grid);
            baselines = Some(base);
        }
        if method != Method::Exact {
            let started = std::time::Instant::now();
            let (grid, base) =
                attribution_patching(model, task, &hooks, unit, direction.runs(), positions)?;
            attribution_seconds = Some(started.elapsed().as_secs_f64());
            attribution = Some(grid);
            baselines = Some(base);
        }
        let correlation = match (&exact, &attribution) {
            (Some(e), Some(a)) => Some(grid_correlation(e, a)),
            _ => None,
        };
        results.push(SweepResult {
            sweep,
            exact,
            attribution,
            correlation,
            exact_seconds,
            attribution_seconds,
        });
    }
    Ok(PatchReport {
        task: task_name.to_string(),
        pairs: task.pairs.len(),
        direction,
        baselines,
        positions: task.position_labels.clone(),
        sweeps: results,
    })
}

impl PatchReport {
    /// Writes `patching.json` and a heatmap per sweep and method
    /// (`<sweep>_<method>.svg`, rows = layers, columns = positions with their
    /// tokens, heads, or the whole site) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = dir.join("patching.json");
        write_atomic(&json, serde_json::to_string_pretty(self)?.as_bytes())?;
        let mut written = vec![json];
        for s in &self.sweeps {
            for (method, grid) in [("exact", &s.exact), ("attribution", &s.attribution)] {
                let Some(grid) = grid else { continue };
                let cols = grid.values.first().map_or(0, Vec::len);
                let col_names: Vec<String> = match grid.unit {
                    Unit::Position => self
                        .positions
                        .iter()
                        .enumerate()
                        .map(|(i, t)| format!("{i} {}", t.escape_debug()))
                        .collect(),
                    Unit::Head => (0..cols).map(|h| format!("H{h}")).collect(),
                    Unit::All => vec!["all".into()],
                };
                let plot = Grid {
                    rows: (0..grid.values.len()).map(|l| format!("L{l}")).collect(),
                    cols: col_names,
                    values: grid.values.clone(),
                };
                let title = format!(
                    "{:?} patching, {:?} ({}), {} pairs: 0 = corrupted, 1 = clean",
                    s.sweep, self.direction, method, self.pairs
                );
                let path = dir.join(format!("{}_{method}.svg", sweep_name(s.sweep)));
                write_atomic(&path, heatmap_around_svg(&plot, &title, 0.0)?.as_bytes())?;
                written.push(path);
            }
        }
        Ok(written)
    }
}

fn sweep_name(s: Sweep) -> &'static str {
    match s {
        Sweep::ResidPre => "resid_pre",
        Sweep::AttnOut => "attn_out",
        Sweep::MlpOut => "mlp_out",
        Sweep::AttnOutLayer => "attn_out_layer",
        Sweep::MlpOutLayer => "mlp_out_layer",
        Sweep::Heads => "heads",
    }
}
