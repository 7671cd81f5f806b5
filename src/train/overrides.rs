//! Overriding a training config from the command line: every field as an
//! optional flag, and list flags (`--k 16,32`) that expand into a sweep of
//! one SAE per combination of hook × architecture × expansion × k ×
//! coefficient over the config's first SAE.

use std::path::PathBuf;

use super::config::{
    ComputeDtype, InitBDec, InputNormalization, ModuleExchange, SaeSpec, TrainConfig,
};
use crate::error::Result;
use crate::model::{DeviceSpec, ModelDtype};
use crate::sae::SaeArchitecture;

/// Every field of a [`TrainConfig`] as an optional override.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrainOverrides {
    // [data]
    /// Activation store from `saescope harvest` (else activations stream from --model).
    #[arg(long)]
    pub store: Option<PathBuf>,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub corpus: Option<String>,
    #[arg(long)]
    pub text_field: Option<String>,
    #[arg(long)]
    pub context: Option<usize>,
    #[arg(long)]
    /// auto, f32, bf16 or f16.
    pub model_dtype: Option<ModelDtype>,
    #[arg(long)]
    pub model_device: Option<DeviceSpec>,
    /// Leave BOS positions out when streaming (true/false).
    #[arg(long)]
    pub skip_bos: Option<bool>,
    #[arg(long)]
    pub windows_per_forward: Option<usize>,
    /// Activation rows per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Training rows per SAE.
    #[arg(long)]
    pub tokens: Option<u64>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub buffer_shards: Option<usize>,
    #[arg(long)]
    pub normalize: Option<InputNormalization>,
    /// Disjoint shares the data is read in (default: one per rank).
    #[arg(long)]
    pub read_shares: Option<usize>,
    // [optim]
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub beta1: Option<f64>,
    #[arg(long)]
    pub beta2: Option<f64>,
    #[arg(long)]
    pub eps: Option<f64>,
    #[arg(long)]
    pub lr_warmup_steps: Option<u64>,
    #[arg(long)]
    pub lr_decay_fraction: Option<f64>,
    /// 0 turns clipping off.
    #[arg(long)]
    pub grad_clip: Option<f64>,
    #[arg(long)]
    pub sparsity_warmup_fraction: Option<f64>,
    /// bf16: bf16 encoder matmul, f32 master weights.
    #[arg(long)]
    pub compute_dtype: Option<ComputeDtype>,
    // [run]
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    #[arg(long)]
    pub dead_tokens: Option<u64>,
    #[arg(long)]
    pub init_b_dec: Option<InitBDec>,
    #[arg(long)]
    pub init_seed: Option<u64>,
    /// Use the dense autograd TopK step instead of the sparse one.
    #[arg(long)]
    pub dense_topk: bool,
    /// Under a launcher, give each rank whole SAEs instead of a share of each batch.
    #[arg(long)]
    pub distribute_modules: bool,
    /// all_to_all (rows only to the ranks that need them) or all_gather.
    #[arg(long)]
    pub module_exchange: Option<ModuleExchange>,
    // [[sae]] (lists make a sweep)
    #[arg(long = "architecture", value_delimiter = ',')]
    pub architectures: Vec<SaeArchitecture>,
    #[arg(long = "hook", value_delimiter = ',')]
    pub hooks: Vec<String>,
    #[arg(long = "expansion", value_delimiter = ',')]
    pub expansions: Vec<usize>,
    #[arg(long = "k", value_delimiter = ',')]
    pub ks: Vec<usize>,
    /// L1 (standard, gated) or L0 (jumprelu) coefficient.
    #[arg(long = "sparsity-coefficient", value_delimiter = ',')]
    pub sparsity_coefficients: Vec<f64>,
    #[arg(long)]
    pub bandwidth: Option<f64>,
    #[arg(long)]
    pub auxk_alpha: Option<f64>,
    #[arg(long)]
    pub threshold_momentum: Option<f64>,
    /// W_enc = scale · W_decᵀ at initialisation (default 1/√3).
    #[arg(long)]
    pub encoder_init_scale: Option<f64>,
    /// One device per SAE, round robin (cpu, cuda:0, cuda:1, ...).
    #[arg(long = "devices", value_delimiter = ',')]
    pub devices: Vec<DeviceSpec>,
}

fn set<T: Clone>(target: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *target = v.clone();
    }
}

impl TrainOverrides {
    /// `cfg` (a config file's, or the defaults) with every given override
    /// applied and the sweep expanded, validated.
    pub fn apply(&self, mut cfg: TrainConfig) -> Result<TrainConfig> {
        let d = &mut cfg.data;
        if self.store.is_some() {
            d.store = self.store.clone();
        }
        set(&mut d.model, &self.model);
        set(&mut d.corpus, &self.corpus);
        set(&mut d.text_field, &self.text_field);
        set(&mut d.context, &self.context);
        set(&mut d.model_dtype, &self.model_dtype);
        set(&mut d.model_device, &self.model_device);
        set(&mut d.skip_bos, &self.skip_bos);
        set(&mut d.windows_per_forward, &self.windows_per_forward);
        set(&mut d.batch_size, &self.batch_size);
        set(&mut d.tokens, &self.tokens);
        set(&mut d.seed, &self.seed);
        set(&mut d.buffer_shards, &self.buffer_shards);
        set(&mut d.normalize, &self.normalize);
        set(&mut d.read_shares, &self.read_shares);
        let o = &mut cfg.optim;
        if self.lr.is_some() {
            o.lr = self.lr;
        }
        set(&mut o.beta1, &self.beta1);
        set(&mut o.beta2, &self.beta2);
        set(&mut o.eps, &self.eps);
        set(&mut o.lr_warmup_steps, &self.lr_warmup_steps);
        set(&mut o.lr_decay_fraction, &self.lr_decay_fraction);
        set(&mut o.grad_clip, &self.grad_clip);
        set(
            &mut o.sparsity_warmup_fraction,
            &self.sparsity_warmup_fraction,
        );
        set(&mut o.compute_dtype, &self.compute_dtype);
        let r = &mut cfg.run;
        set(&mut r.out, &self.out);
        set(&mut r.checkpoint_every_tokens, &self.checkpoint_every);
        set(&mut r.dead_tokens, &self.dead_tokens);
        set(&mut r.init_b_dec, &self.init_b_dec);
        set(&mut r.seed, &self.init_seed);
        if self.dense_topk {
            r.sparse_topk = false;
        }
        if self.distribute_modules {
            r.distribute_modules = true;
        }
        set(&mut r.module_exchange, &self.module_exchange);
        cfg.saes = self.sweep(&cfg.saes);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The SAEs: the config's, or the product of the list flags over the
    /// config's first SAE; scalar flags apply to all.
    fn sweep(&self, base: &[SaeSpec]) -> Vec<SaeSpec> {
        let lists_given = !(self.architectures.is_empty()
            && self.hooks.is_empty()
            && self.expansions.is_empty()
            && self.ks.is_empty()
            && self.sparsity_coefficients.is_empty());
        let mut specs: Vec<SaeSpec> = if lists_given {
            let first = base.first().cloned().unwrap_or_default();
            fn or<T: Clone>(v: &[T], d: &T) -> Vec<T> {
                if v.is_empty() {
                    vec![d.clone()]
                } else {
                    v.to_vec()
                }
            }
            let mut out = Vec::new();
            for hook in or(&self.hooks, &first.hook) {
                for &architecture in &or(&self.architectures, &first.architecture) {
                    let expansions = if self.expansions.is_empty() {
                        vec![first.expansion]
                    } else {
                        self.expansions.clone()
                    };
                    for &expansion in &expansions {
                        let ks: Vec<Option<usize>> = if self.ks.is_empty() {
                            vec![first.k]
                        } else {
                            self.ks.iter().map(|&k| Some(k)).collect()
                        };
                        for &k in &ks {
                            let coefs: Vec<Option<f64>> = if self.sparsity_coefficients.is_empty() {
                                vec![first.sparsity_coefficient]
                            } else {
                                self.sparsity_coefficients
                                    .iter()
                                    .map(|&c| Some(c))
                                    .collect()
                            };
                            for &c in &coefs {
                                out.push(SaeSpec {
                                    name: None,
                                    architecture,
                                    hook: hook.clone(),
                                    expansion,
                                    k,
                                    sparsity_coefficient: c,
                                    ..first.clone()
                                });
                            }
                        }
                    }
                }
            }
            out
        } else {
            base.to_vec()
        };
        for (i, spec) in specs.iter_mut().enumerate() {
            set(&mut spec.bandwidth, &self.bandwidth);
            set(&mut spec.auxk_alpha, &self.auxk_alpha);
            set(&mut spec.threshold_momentum, &self.threshold_momentum);
            set(&mut spec.encoder_init_scale, &self.encoder_init_scale);
            if !self.devices.is_empty() {
                spec.device = self.devices[i % self.devices.len()];
            }
        }
        specs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_flags_sweep_over_the_first_sae_and_scalars_apply_to_all() {
        let overrides = TrainOverrides {
            architectures: vec![SaeArchitecture::TopK, SaeArchitecture::BatchTopK],
            ks: vec![16, 32],
            auxk_alpha: Some(0.5),
            devices: vec![DeviceSpec::Cpu],
            init_b_dec: Some(InitBDec::Mean),
            ..TrainOverrides::default()
        };
        let cfg = overrides.apply(TrainConfig::default()).unwrap();
        let names: Vec<String> = cfg.saes.iter().map(SaeSpec::name).collect();
        assert_eq!(
            names,
            [
                "blocks.8.hook_resid_post-topk-x16-k16",
                "blocks.8.hook_resid_post-topk-x16-k32",
                "blocks.8.hook_resid_post-batchtopk-x16-k16",
                "blocks.8.hook_resid_post-batchtopk-x16-k32",
            ]
        );
        assert!(cfg.saes.iter().all(|s| s.auxk_alpha == 0.5));
        assert_eq!(cfg.run.init_b_dec, InitBDec::Mean);
    }

    #[test]
    fn without_list_flags_the_configs_saes_are_kept_and_checked() {
        let mut base = TrainConfig::default();
        base.saes[0].k = None;
        let err = TrainOverrides::default().apply(base).unwrap_err();
        assert!(err.to_string().contains("needs k"), "{err}");
    }
}
