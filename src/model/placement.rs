//! Where a model runs and in what precision, as configs and flags spell it:
//! [`DeviceSpec`] (`cpu`, `cuda`, `cuda:N`) and [`ModelDtype`] (`auto` or a
//! [`Dtype`] from `io`: `f32`, `bf16`, `f16`). Both parse once, when a config
//! or flag is read, with errors that list the allowed values. `auto` picks bf16
//! only where bf16 arithmetic is native, because elsewhere libtorch's bf16
//! matmuls run several times slower than f32 ones.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

pub use crate::io::dtype::Dtype;

use crate::error::{Error, Result};
use crate::machine::{cpu, cuda};

/// A device by name. Parsing checks the spelling; [`DeviceSpec::resolve`]
/// checks that the device is visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    Cpu,
    /// `cuda` (index 0, written back as `cuda`) or `cuda:N`.
    Cuda {
        index: usize,
        explicit: bool,
    },
}

impl DeviceSpec {
    /// The libtorch device, or an error when that CUDA device is not visible.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda { index, .. } => {
                let (available, reason) = cuda::usable_devices();
                if index >= available {
                    return Err(Error::InvalidArgument(format!(
                        "cuda:{index} requested but {available} CUDA device(s) are visible{}",
                        reason.map(|r| format!(": {r}")).unwrap_or_default()
                    )));
                }
                Ok(Device::Cuda(index))
            }
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda {
                index: 0,
                explicit: false,
            }),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(index)) => Ok(DeviceSpec::Cuda {
                    index,
                    explicit: true,
                }),
                _ => Err(Error::InvalidArgument(format!(
                    "unknown device `{name}` (expected cpu, cuda or cuda:N)"
                ))),
            },
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;

    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(device: DeviceSpec) -> String {
        device.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda {
                explicit: false, ..
            } => f.write_str("cuda"),
            DeviceSpec::Cuda { index, .. } => write!(f, "cuda:{index}"),
        }
    }
}

/// Parses and resolves a device name (see [`DeviceSpec`]).
pub fn parse_device(name: &str) -> Result<Device> {
    name.parse::<DeviceSpec>()?.resolve()
}

/// Parses `f32`, `bf16` or `f16` into a libtorch kind.
pub fn parse_dtype(name: &str) -> Result<Kind> {
    Ok(name.parse::<Dtype>()?.kind())
}

/// The precision a model runs in: `auto`, or one asked for by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum ModelDtype {
    /// bf16 where the device does bf16 arithmetic natively (a CPU with
    /// AVX512-BF16 or AMX, a CUDA device of compute capability 8.0 or later),
    /// f32 elsewhere.
    #[default]
    Auto,
    Exact(Dtype),
}

/// A [`ModelDtype`] applied to a device, and a warning when the choice will be slow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenDtype {
    pub dtype: Dtype,
    pub slow_warning: Option<String>,
}

impl ModelDtype {
    /// The dtype for `device`. Uses the CPU tier from the environment
    /// (`SAESCOPE_CPU` lowers it), so that an emulated AVX2 machine chooses
    /// as a real one would.
    pub fn choose(self, device: Device) -> ChosenDtype {
        let native_bf16 = match device {
            Device::Cuda(index) => cuda::device_has_bf16(index),
            _ => cpu::configured().has_native_bf16(),
        };
        match self {
            ModelDtype::Auto => ChosenDtype {
                dtype: if native_bf16 { Dtype::Bf16 } else { Dtype::F32 },
                slow_warning: None,
            },
            ModelDtype::Exact(dtype) => ChosenDtype {
                dtype,
                slow_warning: (dtype == Dtype::Bf16 && device == Device::Cpu && !native_bf16).then(
                    || {
                        format!(
                            "bf16 was asked for, but this CPU (tier {}) has no native bf16 \
                             arithmetic (AVX512-BF16 or AMX): libtorch widens every bf16 \
                             matmul in software, about 10x slower than f32. `auto` would \
                             pick f32 here.",
                            cpu::configured()
                        )
                    },
                ),
            },
        }
    }
}

impl FromStr for ModelDtype {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        if name == "auto" {
            return Ok(ModelDtype::Auto);
        }
        name.parse().map(ModelDtype::Exact).map_err(|_| {
            Error::InvalidArgument(format!(
                "unknown dtype `{name}` (expected auto, f32, bf16 or f16)"
            ))
        })
    }
}

impl TryFrom<String> for ModelDtype {
    type Error = Error;

    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

impl From<ModelDtype> for String {
    fn from(dtype: ModelDtype) -> String {
        dtype.to_string()
    }
}

impl fmt::Display for ModelDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelDtype::Auto => f.write_str("auto"),
            ModelDtype::Exact(dtype) => write!(f, "{dtype}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_native_bf16_and_explicit_bf16_warns_only_where_slow() {
        let native = cpu::configured().has_native_bf16();
        let auto = ModelDtype::Auto.choose(Device::Cpu);
        assert_eq!(auto.dtype, if native { Dtype::Bf16 } else { Dtype::F32 });
        assert!(auto.slow_warning.is_none());
        let bf16 = ModelDtype::Exact(Dtype::Bf16).choose(Device::Cpu);
        assert_eq!(bf16.dtype, Dtype::Bf16);
        assert_eq!(bf16.slow_warning.is_some(), !native);
        assert!(ModelDtype::Exact(Dtype::F32)
            .choose(Device::Cpu)
            .slow_warning
            .is_none());
    }

    #[test]
    fn names_round_trip_and_bad_ones_list_the_choices() {
        for name in ["cpu", "cuda", "cuda:3"] {
            assert_eq!(name.parse::<DeviceSpec>().unwrap().to_string(), name);
        }
        for name in ["f32", "bf16", "f16"] {
            assert_eq!(name.parse::<Dtype>().unwrap().to_string(), name);
        }
        assert_eq!("float32".parse::<Dtype>().unwrap(), Dtype::F32);
        for name in ["auto", "f32", "bf16", "f16"] {
            assert_eq!(name.parse::<ModelDtype>().unwrap().to_string(), name);
        }
        let err = "int4".parse::<ModelDtype>().unwrap_err().to_string();
        assert!(err.contains("auto, f32, bf16 or f16"), "{err}");
        let err = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("cpu, cuda or cuda:N"), "{err}");
        let err = "int4".parse::<Dtype>().unwrap_err().to_string();
        assert!(err.contains("f32, bf16 or f16"), "{err}");
    }
}
