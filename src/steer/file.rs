//! Reading and writing intervention files (see `spec` for the format):
//! `saescope generate --steer FILE` and `saescope eval steer` read them, and
//! several compose in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use super::build::BuildContext;
use super::kinds;
use super::spec::{SteerFile, FORMAT_VERSION};
use super::steer::Steer;
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::io::safetensors::{read_safetensors, write_safetensors};

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

/// Reads an intervention file and builds its interventions for a model with
/// `n_layers` blocks, on `device`. Kinds, hook names, tensor shapes and
/// feature indices are all checked.
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
    let kinds = file
        .interventions
        .iter()
        .map(|spec| kinds::kind(&spec.kind).map_err(|e| Error::malformed(path, e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    let tensor_file = tensor_path(path);
    let mut tensors: HashMap<String, Tensor> = if kinds.iter().any(|k| k.has_tensors) {
        read_safetensors(&tensor_file)?
    } else {
        HashMap::new()
    };
    let mut out = Vec::with_capacity(kinds.len());
    for (index, (spec, kind)) in file.interventions.iter().zip(kinds).enumerate() {
        let mut ctx = BuildContext {
            file: path,
            index,
            n_layers,
            device,
            tensors: &mut tensors,
            tensor_file: &tensor_file,
        };
        // A tensor of the wrong shape is reported with the file it came from.
        let steer = (kind.build)(spec, &mut ctx).map_err(|e| match e {
            Error::ShapeMismatch {
                name,
                expected,
                got,
            } => Error::FileTensorShape {
                name: format!("intervention {index} ({}): {name}", spec.kind),
                source_desc: tensor_file.display().to_string(),
                expected,
                got,
            },
            other => other,
        })?;
        out.push(steer);
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
