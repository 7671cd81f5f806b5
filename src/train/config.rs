//! Everything a training run needs, as one TOML file (`saescope train
//! --config FILE`; every field also has a CLI flag). The resolved config is
//! saved next to the results.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::machine::memory::bytes_of;
use crate::model::{DeviceSpec, ModelDtype};
use crate::sae::config::NORMALIZE_EXPECTED_AVERAGE;
use crate::sae::SaeArchitecture;

/// How training inputs are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputNormalization {
    /// Scale inputs by one constant so their mean norm is √d_in (SAELens's
    /// `expected_average_only_in`), folded into the saved weights.
    #[serde(rename = "expected_average_only_in")]
    ExpectedAverageOnlyIn,
    #[serde(rename = "none")]
    None,
}

impl InputNormalization {
    /// The SAELens `normalize_activations` string.
    pub fn name(self) -> &'static str {
        match self {
            InputNormalization::ExpectedAverageOnlyIn => NORMALIZE_EXPECTED_AVERAGE,
            InputNormalization::None => "none",
        }
    }
}

/// Where `b_dec` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitBDec {
    /// The geometric median of the first batch (Bricken et al. 2023).
    GeometricMedian,
    /// The mean of the first batch.
    Mean,
    Zeros,
}

/// The precision of the encoder matmul (master weights stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    F32,
    Bf16,
}

/// `FromStr` for a config enum from its serde spelling, with an error that
/// names the config field and the allowed values (what flags print too).
macro_rules! parse_as_config {
    ($ty:ty, $field:literal, [$($name:literal => $value:expr),+ $(,)?]) => {
        impl std::str::FromStr for $ty {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self> {
                match text {
                    $($name => Ok($value),)+
                    other => Err(Error::Config(format!(
                        concat!($field, " `{}`: use ", parse_as_config!(@list $($name),+)),
                        other
                    ))),
                }
            }
        }
    };
    (@list $first:literal) => { $first };
    (@list $first:literal, $($rest:literal),+) => {
        concat!($first, ", ", parse_as_config!(@list $($rest),+))
    };
}

parse_as_config!(InputNormalization, "normalize", [
    "expected_average_only_in" => InputNormalization::ExpectedAverageOnlyIn,
    "none" => InputNormalization::None,
]);
parse_as_config!(InitBDec, "init_b_dec", [
    "geometric_median" => InitBDec::GeometricMedian,
    "mean" => InitBDec::Mean,
    "zeros" => InitBDec::Zeros,
]);
/// How the activations reach the ranks that own the SAEs under module
/// distribution (see `train::ranks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleExchange {
    /// Each hook's rows go only to the ranks whose SAEs train on it.
    AllToAll,
    /// Every hook's rows go to every rank (what sparsify does).
    AllGather,
}

parse_as_config!(ModuleExchange, "module_exchange", [
    "all_to_all" => ModuleExchange::AllToAll,
    "all_gather" => ModuleExchange::AllGather,
]);
parse_as_config!(ComputeDtype, "compute_dtype", [
    "f32" => ComputeDtype::F32,
    "bf16" => ComputeDtype::Bf16,
]);

/// Where activations come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// A store from `saescope harvest` (a folder with `manifest.json`, or one
    /// with a subfolder per hook). Without it, activations stream from `model`.
    pub store: Option<PathBuf>,
    pub model: String,
    pub corpus: String,
    pub text_field: String,
    pub context: usize,
    /// `auto` (bf16 where native, else f32) or a dtype.
    pub model_dtype: ModelDtype,
    /// Device of the model when streaming.
    pub model_device: DeviceSpec,
    pub skip_bos: bool,
    /// Windows per forward pass when streaming.
    pub windows_per_forward: usize,
    /// Activation rows per training step.
    pub batch_size: usize,
    /// Training tokens (rows) per SAE; a store is read for as many epochs as needed.
    pub tokens: u64,
    /// Shuffle seed of the store reader.
    pub seed: u64,
    pub buffer_shards: usize,
    /// `expected_average_only_in` (scale inputs to mean norm √d_in, folded into
    /// the saved weights) or `none`.
    pub normalize: InputNormalization,
    /// Disjoint shares the data is read in (store shards or streamed windows,
    /// round robin), each giving its slice of every batch; the ranks of a job
    /// divide the shares. 0: as many as the job has ranks. A resumed run
    /// keeps its checkpoint's shares, whatever the number of ranks.
    pub read_shares: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            store: None,
            model: "smollm2-135m".into(),
            corpus: "default".into(),
            text_field: "text".into(),
            context: 128,
            model_dtype: ModelDtype::Auto,
            model_device: DeviceSpec::Cpu,
            skip_bos: true,
            windows_per_forward: 16,
            batch_size: 4096,
            tokens: 5_000_000,
            seed: 0,
            buffer_shards: 4,
            normalize: InputNormalization::ExpectedAverageOnlyIn,
            read_shares: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate; default `2e-4 / √(d_sae / 2¹⁴)` (sparsify's rule).
    pub lr: Option<f64>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub lr_warmup_steps: u64,
    /// Linear decay to zero over this final fraction of the steps.
    pub lr_decay_fraction: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub grad_clip: f64,
    /// Ramp the sparsity coefficient up over this first fraction of the steps.
    pub sparsity_warmup_fraction: f64,
    /// `f32`, or `bf16` for the encoder matmul with f32 master weights.
    pub compute_dtype: ComputeDtype,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: None,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            lr_warmup_steps: 100,
            lr_decay_fraction: 0.2,
            grad_clip: 1.0,
            sparsity_warmup_fraction: 0.05,
            compute_dtype: ComputeDtype::F32,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub out: PathBuf,
    /// Write a checkpoint every this many tokens (0: only at the end).
    pub checkpoint_every_tokens: u64,
    /// A latent is dead after this many tokens without firing.
    pub dead_tokens: u64,
    /// `geometric_median`, `mean` or `zeros`.
    pub init_b_dec: InitBDec,
    /// Seed of the weight initialisation.
    pub seed: u64,
    /// Use the sparse TopK step (else the dense autograd reference).
    pub sparse_topk: bool,
    /// In a multi-rank job, give each rank whole SAEs (sparsify's
    /// `--distribute_modules`) instead of a share of every SAE's batch.
    pub distribute_modules: bool,
    /// `all_to_all` or `all_gather`: how module distribution moves rows.
    pub module_exchange: ModuleExchange,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            out: PathBuf::from("out/train"),
            checkpoint_every_tokens: 1_000_000,
            dead_tokens: 10_000_000,
            init_b_dec: InitBDec::GeometricMedian,
            seed: 0,
            sparse_topk: true,
            distribute_modules: false,
            module_exchange: ModuleExchange::AllToAll,
        }
    }
}

/// `1/√3`, see [`SaeSpec::encoder_init_scale`].
pub const DEFAULT_ENCODER_INIT_SCALE: f64 = 0.577_350_269_189_625_8;

/// One SAE of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SaeSpec {
    /// Folder name under `run.out`; default `{hook}-{architecture}-x{expansion}[-k{k}][-c{coef}]`.
    pub name: Option<String>,
    pub architecture: SaeArchitecture,
    pub hook: String,
    pub expansion: usize,
    pub k: Option<usize>,
    /// L1 (standard, gated) or L0 (jumprelu) weight; default per architecture.
    pub sparsity_coefficient: Option<f64>,
    pub bandwidth: f64,
    pub auxk_alpha: f64,
    pub threshold_momentum: f64,
    /// `W_enc = encoder_init_scale · W_decᵀ` at initialisation. The default,
    /// 1/√3, is the row norm of PyTorch's default `nn.Linear` init that
    /// sparsify starts from; unit encoder rows train measurably worse
    /// (eval/results/sae-train-*.json).
    pub encoder_init_scale: f64,
    pub device: DeviceSpec,
}

impl Default for SaeSpec {
    fn default() -> Self {
        SaeSpec {
            name: None,
            architecture: SaeArchitecture::TopK,
            hook: "blocks.8.hook_resid_post".into(),
            expansion: 16,
            k: Some(32),
            sparsity_coefficient: None,
            bandwidth: 0.001,
            auxk_alpha: 1.0 / 32.0,
            threshold_momentum: 0.01,
            encoder_init_scale: DEFAULT_ENCODER_INIT_SCALE,
            device: DeviceSpec::Cpu,
        }
    }
}

impl SaeSpec {
    pub fn default_name(&self) -> String {
        let mut name = format!("{}-{}-x{}", self.hook, self.architecture, self.expansion);
        if let (Some(k), true) = (self.k, self.uses_k()) {
            name.push_str(&format!("-k{k}"));
        }
        if let Some(c) = self.sparsity_coefficient {
            name.push_str(&format!("-c{c}"));
        }
        name
    }

    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.default_name())
    }

    fn uses_k(&self) -> bool {
        self.architecture.implementation().needs_k()
    }

    /// The sparsity coefficient, or the architecture's starting point
    /// (inputs normalised to mean norm √d_in).
    pub fn sparsity_coefficient(&self) -> f64 {
        self.sparsity_coefficient.unwrap_or_else(|| {
            self.architecture
                .implementation()
                .default_sparsity_coefficient()
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub data: DataConfig,
    pub optim: OptimConfig,
    pub run: RunConfig,
    #[serde(rename = "sae")]
    pub saes: Vec<SaeSpec>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: DataConfig::default(),
            optim: OptimConfig::default(),
            run: RunConfig::default(),
            saes: vec![SaeSpec::default()],
        }
    }
}

/// The file the resolved config is saved to, in `run.out`.
pub const SAVED_CONFIG_FILE: &str = "train_config.toml";

impl TrainConfig {
    pub fn from_toml_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text)
            .map_err(|e| Error::malformed(path, format!("invalid training config: {e}")))
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config(format!("cannot write config: {e}")))
    }

    /// Checks every field a run depends on before any work starts.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.saes.is_empty() {
            return bad("no SAE to train: add a [[sae]] table or --architecture".into());
        }
        if self.data.batch_size == 0 || self.data.tokens == 0 {
            return bad("batch_size and tokens must be positive".into());
        }
        let o = &self.optim;
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) || o.eps <= 0.0 {
            return bad("Adam needs 0 ≤ beta < 1 and eps > 0".into());
        }
        if o.lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
            return bad("lr must be positive".into());
        }
        if !(0.0..=1.0).contains(&o.lr_decay_fraction)
            || !(0.0..=1.0).contains(&o.sparsity_warmup_fraction)
        {
            return bad("lr_decay_fraction and sparsity_warmup_fraction must be in [0, 1]".into());
        }
        let mut names = std::collections::HashSet::new();
        for spec in &self.saes {
            let arch = spec.architecture.implementation();
            if arch.needs_k() && spec.k.is_none_or(|k| k == 0) {
                return bad(format!(
                    "{}: architecture `{}` needs k > 0",
                    spec.name(),
                    spec.architecture
                ));
            }
            if spec.expansion == 0 {
                return bad(format!("{}: expansion must be positive", spec.name()));
            }
            if !names.insert(spec.name()) {
                return bad(format!("two SAEs are both named `{}`", spec.name()));
            }
        }
        Ok(())
    }

    /// The distinct hook points of the run, in first-mention order.
    pub fn hooks(&self) -> Vec<String> {
        let mut hooks: Vec<String> = Vec::new();
        for s in &self.saes {
            if !hooks.contains(&s.hook) {
                hooks.push(s.hook.clone());
            }
        }
        hooks
    }

    /// Steps the run takes.
    pub fn total_steps(&self) -> u64 {
        self.data.tokens.div_ceil(self.data.batch_size as u64)
    }
}

/// What training one SAE holds at once: each `[d_in, d_sae]` matrix (W_enc,
/// W_dec) with its gradient and Adam's two moments, and a few
/// `[batch, d_sae]` activations and their gradients.
pub fn training_bytes(d_in: usize, d_sae: usize, batch: usize) -> u64 {
    let (d_in, d_sae, batch) = (d_in as u64, d_sae as u64, batch as u64);
    bytes_of(&[8, d_in, d_sae, 4]).saturating_add(bytes_of(&[4, batch, d_sae, 4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trips_and_unknown_keys_are_rejected() {
        let mut cfg = TrainConfig::default();
        cfg.saes.push(SaeSpec {
            k: Some(16),
            ..SaeSpec::default()
        });
        let text = cfg.to_toml().unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        back.validate().unwrap();
        let err = toml::from_str::<TrainConfig>("[data]\nbatch = 3\n").unwrap_err();
        assert!(err.to_string().contains("batch"), "{err}");
    }

    #[test]
    fn duplicate_names_and_missing_k_are_errors() {
        let mut cfg = TrainConfig::default();
        cfg.saes.push(SaeSpec::default());
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("both named"));
        cfg.saes = vec![SaeSpec {
            k: None,
            ..SaeSpec::default()
        }];
        assert!(cfg.validate().unwrap_err().to_string().contains("needs k"));
    }

    /// A `train_config.toml` as saescope wrote it before the fields were
    /// typed: every string spelling still loads, and a bad value is an error
    /// naming the field and the allowed values.
    #[test]
    fn configs_saved_with_string_fields_still_load() {
        let saved = r#"
[data]
model = "smollm2-135m"
model_dtype = "bf16"
model_device = "cuda:1"
normalize = "none"

[optim]
compute_dtype = "bf16"

[run]
init_b_dec = "zeros"

[[sae]]
architecture = "jumprelu"
hook = "blocks.3.hook_resid_post"
device = "cuda"
"#;
        let cfg: TrainConfig = toml::from_str(saved).unwrap();
        assert_eq!(
            cfg.data.model_dtype,
            ModelDtype::Exact(crate::model::Dtype::Bf16)
        );
        assert_eq!(cfg.data.model_device.to_string(), "cuda:1");
        assert_eq!(cfg.data.normalize, InputNormalization::None);
        assert_eq!(cfg.optim.compute_dtype, ComputeDtype::Bf16);
        assert_eq!(cfg.run.init_b_dec, InitBDec::Zeros);
        assert_eq!(cfg.saes[0].architecture, SaeArchitecture::JumpRelu);
        assert_eq!(cfg.saes[0].device.to_string(), "cuda");
        // Written back with the same spellings.
        let text = cfg.to_toml().unwrap();
        for line in [
            "model_dtype = \"bf16\"",
            "model_device = \"cuda:1\"",
            "normalize = \"none\"",
            "init_b_dec = \"zeros\"",
            "architecture = \"jumprelu\"",
            "device = \"cuda\"",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        for (field, bad, allowed) in [
            (
                "init_b_dec",
                "[run]\ninit_b_dec = \"median\"",
                "geometric_median",
            ),
            (
                "normalize",
                "[data]\nnormalize = \"l2\"",
                "expected_average_only_in",
            ),
            (
                "architecture",
                "[[sae]]\narchitecture = \"relu\"",
                "batchtopk",
            ),
            ("model_dtype", "[data]\nmodel_dtype = \"int4\"", "bf16"),
            ("model_device", "[data]\nmodel_device = \"tpu\"", "cuda:N"),
        ] {
            let err = toml::from_str::<TrainConfig>(bad).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(allowed), "{err}");
        }
    }
}
