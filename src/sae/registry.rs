//! The SAE architectures by name: [`SaeArchitecture`] is how configs spell
//! them (SAELens's `architecture` strings) and maps each to its
//! implementation under `arch/`. A new architecture is its file, one
//! variant and one match arm here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::architecture::Architecture;
use crate::error::{Error, Result};
use crate::sae::arch::batchtopk::BatchTopK;
use crate::sae::arch::gated::Gated;
use crate::sae::arch::jumprelu::JumpRelu;
use crate::sae::arch::standard::Standard;
use crate::sae::arch::topk::TopK;

/// An SAE architecture, as configs and flags name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaeArchitecture {
    /// ReLU with an L1 penalty weighted by decoder norms.
    Standard,
    /// The k largest pre-activations (Gao et al. 2024).
    TopK,
    /// The k·batch largest over the batch; JumpReLU at inference.
    BatchTopK,
    /// A learned threshold per latent with an L0 penalty (Rajamanoharan et al. 2024).
    JumpRelu,
    /// Separate gate and magnitude paths (Rajamanoharan et al. 2024).
    Gated,
}

impl SaeArchitecture {
    pub const ALL: [SaeArchitecture; 5] = [
        SaeArchitecture::Standard,
        SaeArchitecture::TopK,
        SaeArchitecture::BatchTopK,
        SaeArchitecture::JumpRelu,
        SaeArchitecture::Gated,
    ];

    pub fn implementation(self) -> &'static dyn Architecture {
        match self {
            SaeArchitecture::Standard => &Standard,
            SaeArchitecture::TopK => &TopK,
            SaeArchitecture::BatchTopK => &BatchTopK,
            SaeArchitecture::JumpRelu => &JumpRelu,
            SaeArchitecture::Gated => &Gated,
        }
    }

    pub fn name(self) -> &'static str {
        self.implementation().name()
    }
}

impl FromStr for SaeArchitecture {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        SaeArchitecture::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown SAE architecture `{name}` (known: {})",
                    ARCHITECTURES.join(", ")
                ))
            })
    }
}

impl fmt::Display for SaeArchitecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every architecture name the registry knows.
pub const ARCHITECTURES: [&str; 5] = ["standard", "topk", "batchtopk", "jumprelu", "gated"];

/// The implementation of `name`.
pub fn architecture(name: &str) -> Result<&'static dyn Architecture> {
    Ok(name.parse::<SaeArchitecture>()?.implementation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_resolves_to_itself() {
        for name in ARCHITECTURES {
            assert_eq!(architecture(name).unwrap().name(), name);
        }
        for arch in SaeArchitecture::ALL {
            let json = serde_json::to_string(&arch).unwrap();
            assert_eq!(json, format!("\"{}\"", arch.name()));
            assert_eq!(arch.name().parse::<SaeArchitecture>().unwrap(), arch);
        }
        let err = architecture("relu").err().unwrap().to_string();
        assert!(err.contains("unknown SAE architecture `relu`"), "{err}");
    }
}
