//! From an `architecture` string to its implementation.

use super::architecture::Architecture;
use crate::error::{Error, Result};
use crate::sae::arch::batchtopk::BatchTopK;
use crate::sae::arch::gated::Gated;
use crate::sae::arch::jumprelu::JumpRelu;
use crate::sae::arch::standard::Standard;
use crate::sae::arch::topk::TopK;

/// Every architecture name the registry knows.
pub const ARCHITECTURES: [&str; 5] = ["standard", "topk", "batchtopk", "jumprelu", "gated"];

/// The implementation of `name`.
pub fn architecture(name: &str) -> Result<Box<dyn Architecture>> {
    Ok(match name {
        "standard" => Box::new(Standard),
        "topk" => Box::new(TopK),
        "batchtopk" => Box::new(BatchTopK),
        "jumprelu" => Box::new(JumpRelu),
        "gated" => Box::new(Gated),
        other => {
            return Err(Error::Config(format!(
                "unknown SAE architecture `{other}` (known: {})",
                ARCHITECTURES.join(", ")
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_resolves_to_itself() {
        for name in ARCHITECTURES {
            assert_eq!(architecture(name).unwrap().name(), name);
        }
        let err = architecture("relu").err().unwrap().to_string();
        assert!(err.contains("unknown SAE architecture `relu`"), "{err}");
    }
}
