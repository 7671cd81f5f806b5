//! An SAE's configuration, serialised as the `cfg.json` that SAELens writes
//! and reads (SAELens 6 field names). Unknown keys from other writers are kept
//! and written back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// How inputs are scaled before encoding (SAELens's `normalize_activations`).
pub const NORMALIZE_NONE: &str = "none";
/// Inputs scaled by a constant so their mean norm is √d_in during training;
/// the constant is folded into the weights when saving, which then says
/// [`NORMALIZE_NONE`]. Identity at inference, as in SAELens.
pub const NORMALIZE_EXPECTED_AVERAGE: &str = "expected_average_only_in";

/// Per row: centre, divide by the (unbiased) std + 1e-5; undone on the output.
pub const NORMALIZE_LAYER_NORM: &str = "layer_norm";
/// Per row: scale to norm √d_in; undone on the output.
pub const NORMALIZE_CONSTANT_NORM: &str = "constant_norm_rescale";
/// Folded into the weights by SAELens's trainer; identity at inference.
pub const NORMALIZE_WHITENING: &str = "covariance_whitening";
/// Every `normalize_activations` value SAELens 6 writes.
pub const NORMALIZATIONS: [&str; 5] = [
    NORMALIZE_NONE,
    NORMALIZE_EXPECTED_AVERAGE,
    NORMALIZE_LAYER_NORM,
    NORMALIZE_CONSTANT_NORM,
    NORMALIZE_WHITENING,
];

/// Where an SAE came from: the model and hook point it reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SaeMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepend_bos: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_path: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `cfg.json` of an SAE folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SaeConfig {
    /// `standard`, `topk`, `jumprelu` or `gated` (a trained `batchtopk` SAE is
    /// saved as `jumprelu` with its learned threshold, as SAELens does).
    pub architecture: String,
    pub d_in: usize,
    pub d_sae: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default = "default_device")]
    pub device: String,
    /// Subtract `b_dec` from the input before encoding.
    #[serde(default = "default_true")]
    pub apply_b_dec_to_input: bool,
    #[serde(default = "default_normalize")]
    pub normalize_activations: String,
    #[serde(default)]
    pub metadata: SaeMetadata,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_dtype() -> String {
    "float32".into()
}
fn default_device() -> String {
    "cpu".into()
}
fn default_true() -> bool {
    true
}
fn default_normalize() -> String {
    NORMALIZE_NONE.into()
}

impl SaeConfig {
    /// A config with SAELens's defaults for everything but the shape.
    pub fn new(architecture: &str, d_in: usize, d_sae: usize) -> Self {
        SaeConfig {
            architecture: architecture.to_string(),
            d_in,
            d_sae,
            k: None,
            dtype: default_dtype(),
            device: default_device(),
            apply_b_dec_to_input: true,
            normalize_activations: default_normalize(),
            metadata: SaeMetadata::default(),
            extra: Map::new(),
        }
    }

    /// Checks what every architecture needs: positive sizes, a `k` that fits.
    pub fn validate(&self) -> Result<()> {
        if self.d_in == 0 || self.d_sae == 0 {
            return Err(Error::Config(format!(
                "SAE sizes must be positive (d_in {}, d_sae {})",
                self.d_in, self.d_sae
            )));
        }
        if let Some(k) = self.k {
            if k == 0 || k > self.d_sae {
                return Err(Error::Config(format!(
                    "k = {k} must be between 1 and d_sae = {}",
                    self.d_sae
                )));
            }
        }
        if !NORMALIZATIONS.contains(&self.normalize_activations.as_str()) {
            return Err(Error::Config(format!(
                "normalize_activations `{}` is not supported (known: {})",
                self.normalize_activations,
                NORMALIZATIONS.join(", ")
            )));
        }
        Ok(())
    }

    /// `k`, or an error naming the architecture that needs it.
    pub fn require_k(&self) -> Result<usize> {
        self.k.ok_or_else(|| {
            Error::Config(format!(
                "architecture `{}` needs `k` in its config",
                self.architecture
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_survive_a_round_trip() {
        let text = r#"{"architecture":"topk","d_in":4,"d_sae":8,"k":2,
            "reshape_activations":"none","metadata":{"hook_name":"blocks.0.hook_resid_post","sae_lens_version":"6.0"}}"#;
        let cfg: SaeConfig = serde_json::from_str(text).unwrap();
        assert_eq!(cfg.extra["reshape_activations"], "none");
        assert_eq!(cfg.metadata.extra["sae_lens_version"], "6.0");
        let again: SaeConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn k_out_of_range_is_rejected() {
        let mut cfg = SaeConfig::new("topk", 4, 8);
        cfg.k = Some(9);
        assert!(cfg.validate().unwrap_err().to_string().contains("k = 9"));
        cfg.k = Some(8);
        cfg.validate().unwrap();
    }
}
