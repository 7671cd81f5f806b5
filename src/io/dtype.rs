//! Floating-point precisions as configs, flags and store manifests spell
//! them (`f32`, `bf16`, `f16`): one type for model weights, activations and
//! stored rows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::error::{Error, Result};

/// A floating-point precision for model weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum Dtype {
    #[serde(rename = "f32", alias = "float32")]
    #[value(name = "f32", alias = "float32")]
    F32,
    #[serde(rename = "bf16", alias = "bfloat16")]
    #[value(name = "bf16", alias = "bfloat16")]
    Bf16,
    #[serde(rename = "f16", alias = "float16")]
    #[value(name = "f16", alias = "float16")]
    F16,
}

impl Dtype {
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    pub fn safetensors(self) -> safetensors::Dtype {
        match self {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::Bf16 => safetensors::Dtype::BF16,
            Dtype::F16 => safetensors::Dtype::F16,
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
}

impl FromStr for Dtype {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "f32" | "float32" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f16" | "float16" => Ok(Dtype::F16),
            other => Err(Error::InvalidArgument(format!(
                "unknown dtype `{other}` (expected f32, bf16 or f16)"
            ))),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
