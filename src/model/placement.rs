//! Where a model runs and in what precision, as configs and flags spell it:
//! [`DeviceSpec`] (`cpu`, `cuda`, `cuda:N`) here and [`Dtype`] (`f32`,
//! `bf16`, `f16`, from `io`). Both parse once, when a config or flag is read,
//! with errors that list the allowed values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

pub use crate::io::dtype::Dtype;

use crate::error::{Error, Result};

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
                let available = tch::Cuda::device_count() as usize;
                if index >= available {
                    return Err(Error::InvalidArgument(format!(
                        "cuda:{index} requested but {available} CUDA device(s) are visible"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_list_the_choices() {
        for name in ["cpu", "cuda", "cuda:3"] {
            assert_eq!(name.parse::<DeviceSpec>().unwrap().to_string(), name);
        }
        for name in ["f32", "bf16", "f16"] {
            assert_eq!(name.parse::<Dtype>().unwrap().to_string(), name);
        }
        assert_eq!("float32".parse::<Dtype>().unwrap(), Dtype::F32);
        let err = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("cpu, cuda or cuda:N"), "{err}");
        let err = "int4".parse::<Dtype>().unwrap_err().to_string();
        assert!(err.contains("f32, bf16 or f16"), "{err}");
    }
}
