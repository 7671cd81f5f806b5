//! What the registry of steer kinds is made of: the descriptor each kind
//! exports ([`SteerKind`]) and the context a kind builds its intervention in
//! ([`BuildContext`]: hook names checked against the model, the file's
//! tensors, SAE folders relative to the file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::spec::SteerSpec;
use super::steer::Steer;
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::sae::{load_sae, Sae};

/// One steer kind, as the registry in `kinds/mod.rs` lists it.
pub struct SteerKind {
    /// The `kind` string of its JSON spec.
    pub name: &'static str,
    /// Whether its spec comes with tensors in the safetensors file.
    pub has_tensors: bool,
    /// Builds the intervention from its spec.
    pub build: fn(&SteerSpec, &mut BuildContext) -> Result<Box<dyn Steer>>,
}

/// Where one intervention of a file is built.
pub struct BuildContext<'a> {
    /// The JSON file (for messages and relative SAE paths).
    pub file: &'a Path,
    /// The intervention's index in the file (its tensors' name prefix).
    pub index: usize,
    pub n_layers: usize,
    pub device: Device,
    /// The file's tensors, taken as kinds claim them.
    pub tensors: &'a mut HashMap<String, Tensor>,
    /// Where the tensors came from (for messages).
    pub tensor_file: &'a Path,
}

impl BuildContext<'_> {
    /// The parameters of `spec`, or an error naming the file, the
    /// intervention and the field.
    pub fn params<P: serde::de::DeserializeOwned>(&self, spec: &SteerSpec) -> Result<P> {
        spec.params().map_err(|e| {
            Error::malformed(
                self.file,
                format!(
                    "not an intervention file: intervention {} (`{}`): {e}",
                    self.index, spec.kind
                ),
            )
        })
    }

    /// Hook names checked against the model; at least one.
    pub fn hooks(&self, names: &[String]) -> Result<Vec<HookPoint>> {
        if names.is_empty() {
            return Err(Error::malformed(
                self.file,
                "an intervention lists no hook points",
            ));
        }
        names.iter().map(|n| self.hook(n)).collect()
    }

    pub fn hook(&self, name: &str) -> Result<HookPoint> {
        HookPoint::parse_for(name, self.n_layers)
    }

    /// This intervention's tensor `name`, as f32 on the context's device.
    pub fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let key = format!("{}.{name}", self.index);
        let t = self
            .tensors
            .remove(&key)
            .ok_or_else(|| Error::MissingTensor {
                name: key,
                source_desc: self.tensor_file.display().to_string(),
            })?;
        Ok(t.f_to_kind(Kind::Float)?.f_to_device(self.device)?)
    }

    /// The SAE folder `sae` (absolute, or relative to the file's folder),
    /// loaded on the context's device.
    pub fn sae(&self, sae: &str) -> Result<Sae> {
        let path = if Path::new(sae).is_absolute() {
            PathBuf::from(sae)
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(sae)
        };
        load_sae(&path)?.to_device(self.device)
    }
}
