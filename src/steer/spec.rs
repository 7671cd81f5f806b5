//! Intervention files: a JSON document listing interventions (kind, hook
//! points, parameters) and, beside it with the same stem, a safetensors file
//! with their learned tensors (`{index}.{name}`). `saescope generate --steer
//! FILE` and `saescope eval steer` read them; several compose in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::dyn_scalar::DynScalar;
use super::sae_features::{FeatureEdit, SaeFeatureSteer};
use super::sae_runtime::{Condition, SaeRuntimeSteer, Strategy};
use super::scaling::{ActivationScaling, Granularity};
use super::steer::Steer;
use super::vector::SteeringVector;
use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::model::safetensors_io::{read_safetensors, write_safetensors};
use crate::sae::load_sae;

pub const FORMAT_VERSION: u32 = 1;

/// One intervention as written in the JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SteerSpec {
    /// Tensor `scalars [n_sites, heads or 1, positions or 1]`.
    ActivationScaling {
        sites: Vec<String>,
        granularity: Granularity,
        positions: Option<usize>,
    },
    /// Tensors `weight [n_sites, d]`, `bias [n_sites]`.
    DynScalar { sites: Vec<String> },
    /// Tensor `vectors [n_sites, d]`.
    SteeringVector { sites: Vec<String>, scale: f64 },
    /// No tensors; the SAE folder is referenced by path.
    SaeFeatures {
        sae: String,
        hook: String,
        edits: Vec<FeatureEdit>,
        keep_error: bool,
    },
    /// Wu et al.'s runtime strategies; no tensors.
    SaeRuntime {
        sae: String,
        hook: String,
        strategy: Strategy,
        features: Vec<usize>,
        magnitude: f64,
        #[serde(default)]
        condition: Option<Condition>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerFile {
    pub format_version: u32,
    /// The model the intervention was made for (informational).
    #[serde(default)]
    pub model: Option<String>,
    pub interventions: Vec<SteerSpec>,
}

/// The tensor file beside `json`: same stem, `.safetensors`.
pub fn tensor_path(json: &Path) -> PathBuf {
    json.with_extension("safetensors")
}

/// Writes interventions to `path` (JSON) and their tensors beside it, atomically.
pub fn save_steers(path: &Path, model: Option<&str>, steers: &[&dyn Steer]) -> Result<()> {
    let mut specs = Vec::new();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (i, s) in steers.iter().enumerate() {
        let (spec, named) = s.to_spec()?;
        specs.push(spec);
        tensors.extend(named.into_iter().map(|(n, t)| (format!("{i}.{n}"), t)));
    }
    if !tensors.is_empty() {
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors(&tensor_path(path), &refs)?;
    }
    let file = SteerFile {
        format_version: FORMAT_VERSION,
        model: model.map(str::to_string),
        interventions: specs,
    };
    write_atomic(path, serde_json::to_string_pretty(&file)?.as_bytes())
}

fn hooks(path: &Path, names: &[String], n_layers: usize) -> Result<Vec<HookPoint>> {
    if names.is_empty() {
        return Err(Error::malformed(
            path,
            "an intervention lists no hook points",
        ));
    }
    names
        .iter()
        .map(|n| HookPoint::parse_for(n, n_layers))
        .collect()
}

/// An SAE folder named in `file`: absolute, or relative to the file's folder.
fn resolve(file: &Path, sae: &str) -> PathBuf {
    if Path::new(sae).is_absolute() {
        PathBuf::from(sae)
    } else {
        file.parent().unwrap_or(Path::new(".")).join(sae)
    }
}

/// Reads an intervention file and builds its interventions for a model with
/// `n_layers` blocks and `n_heads` heads, on `device`. Hook names, tensor
/// shapes and feature indices are all checked.
pub fn load_steers(path: &Path, n_layers: usize, device: Device) -> Result<Vec<Box<dyn Steer>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file: SteerFile = serde_json::from_str(&text)
        .map_err(|e| Error::malformed(path, format!("not an intervention file: {e}")))?;
    if file.format_version != FORMAT_VERSION {
        return Err(Error::malformed(
            path,
            format!(
                "format_version {} (this saescope reads {FORMAT_VERSION})",
                file.format_version
            ),
        ));
    }
    if file.interventions.is_empty() {
        return Err(Error::malformed(path, "the file lists no interventions"));
    }
    let needs_tensors = file.interventions.iter().any(|s| {
        !matches!(
            s,
            SteerSpec::SaeFeatures { .. } | SteerSpec::SaeRuntime { .. }
        )
    });
    let mut tensors: HashMap<String, Tensor> = if needs_tensors {
        read_safetensors(&tensor_path(path))?
    } else {
        HashMap::new()
    };
    let mut take = |i: usize, name: &str| -> Result<Tensor> {
        let key = format!("{i}.{name}");
        let t = tensors.remove(&key).ok_or_else(|| Error::MissingTensor {
            name: key,
            source_desc: tensor_path(path).display().to_string(),
        })?;
        Ok(t.f_to_kind(tch::Kind::Float)?.f_to_device(device)?)
    };
    let mut out: Vec<Box<dyn Steer>> = Vec::new();
    for (i, spec) in file.interventions.into_iter().enumerate() {
        out.push(match spec {
            SteerSpec::ActivationScaling {
                sites,
                granularity,
                positions,
            } => Box::new(ActivationScaling::new(
                hooks(path, &sites, n_layers)?,
                granularity,
                positions,
                take(i, "scalars")?,
            )?),
            SteerSpec::DynScalar { sites } => Box::new(DynScalar::new(
                hooks(path, &sites, n_layers)?,
                take(i, "weight")?,
                take(i, "bias")?,
            )?),
            SteerSpec::SteeringVector { sites, scale } => Box::new(SteeringVector::new(
                hooks(path, &sites, n_layers)?,
                take(i, "vectors")?,
                scale,
            )?),
            SteerSpec::SaeFeatures {
                sae,
                hook,
                edits,
                keep_error,
            } => {
                let loaded = load_sae(&resolve(path, &sae))?.to_device(device)?;
                let hook = HookPoint::parse_for(&hook, n_layers)?;
                Box::new(SaeFeatureSteer::new(loaded, sae, hook, edits, keep_error)?)
            }
            SteerSpec::SaeRuntime {
                sae,
                hook,
                strategy,
                features,
                magnitude,
                condition,
            } => {
                let loaded = load_sae(&resolve(path, &sae))?.to_device(device)?;
                let hook = HookPoint::parse_for(&hook, n_layers)?;
                Box::new(SaeRuntimeSteer::new(
                    loaded, sae, hook, strategy, features, magnitude, condition,
                )?)
            }
        });
    }
    Ok(out)
}

/// [`load_steers`] for several files, their interventions in file order.
pub fn load_steer_files(
    paths: &[PathBuf],
    n_layers: usize,
    device: Device,
) -> Result<Vec<Box<dyn Steer>>> {
    let mut steers = Vec::new();
    for path in paths {
        steers.extend(load_steers(path, n_layers, device)?);
    }
    Ok(steers)
}
