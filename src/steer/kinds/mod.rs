//! One file per steer kind: its parameters as written in the JSON spec, how
//! it is built from them and its tensors, and the intervention it runs. The
//! registry below is the one place that lists them: adding a kind means its
//! own file and one line in [`KINDS`].

pub mod dyn_scalar;
pub mod host_rows;
pub mod sae_features;
pub mod sae_rows;
pub mod sae_runtime;
pub mod scaling;
pub mod vector;

use super::build::SteerKind;
use crate::error::{Error, Result};

/// Every steer kind, by the `kind` string of its spec.
pub const KINDS: [&SteerKind; 5] = [
    &scaling::KIND,
    &dyn_scalar::KIND,
    &vector::KIND,
    &sae_features::KIND,
    &sae_runtime::KIND,
];

/// The kind named `name`.
pub fn kind(name: &str) -> Result<&'static SteerKind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
            Error::InvalidArgument(format!(
                "unknown intervention kind `{name}` (known: {})",
                known.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_found_by_its_name_and_unknown_ones_list_them() {
        for k in KINDS {
            assert_eq!(kind(k.name).unwrap().name, k.name);
        }
        let err = kind("steer_harder").err().unwrap().to_string();
        assert!(err.contains("steer_harder"), "{err}");
        for k in KINDS {
            assert!(err.contains(k.name), "{err}");
        }
    }
}
