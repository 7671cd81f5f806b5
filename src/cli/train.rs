//! `saescope train`: SAEs from a TOML config and/or flags, with a progress
//! bar; prints a summary table and where the files and plots are.

use std::path::PathBuf;

use clap::Args;
use indicatif::ProgressBar;
use saescope::data::corpus::Corpus;
use saescope::data::harvest::stream::StreamingSource;
use saescope::data::store::Store;
use saescope::hooks::HookPoint;
use saescope::model::{load_model, parse_device, parse_dtype};
use saescope::sae::config::SaeMetadata;
use saescope::train::config::SaeSpec;
use saescope::train::feed::store_for_hook;
use saescope::train::metrics::StepRecord;
use saescope::train::{
    train, StoreFeed, StreamFeed, TrainConfig, TrainObserver, TrainOptions, TrainSummary,
};

use super::set_threads;

/// Every field of a training config as an optional flag; a flag overrides
/// the config file. List flags (`--k 16,32`) make a sweep: one SAE per
/// combination of hook × architecture × expansion × k × coefficient.
#[derive(Args, Default)]
pub struct TrainArgs {
    /// A TOML training config (see train/*.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// CPU threads for libtorch.
    #[arg(long)]
    pub threads: Option<i32>,
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
    pub model_dtype: Option<String>,
    #[arg(long)]
    pub model_device: Option<String>,
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
    /// expected_average_only_in or none.
    #[arg(long)]
    pub normalize: Option<String>,
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
    /// f32 or bf16 (bf16 encoder matmul, f32 master weights).
    #[arg(long)]
    pub compute_dtype: Option<String>,
    // [run]
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    #[arg(long)]
    pub dead_tokens: Option<u64>,
    /// geometric_median, mean or zeros.
    #[arg(long)]
    pub init_b_dec: Option<String>,
    #[arg(long)]
    pub init_seed: Option<u64>,
    /// Use the dense autograd TopK step instead of the sparse one.
    #[arg(long)]
    pub dense_topk: bool,
    // [[sae]] (lists make a sweep)
    #[arg(long = "architecture", value_delimiter = ',')]
    pub architectures: Vec<String>,
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
    pub devices: Vec<String>,
}

fn set<T: Clone>(target: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *target = v.clone();
    }
}

impl TrainArgs {
    /// The config file (or defaults) with every given flag applied.
    pub fn resolve(&self) -> anyhow::Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(path) => TrainConfig::from_toml_file(path)?,
            None => TrainConfig::default(),
        };
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
            let or = |v: &Vec<String>, d: &String| {
                if v.is_empty() {
                    vec![d.clone()]
                } else {
                    v.clone()
                }
            };
            let mut out = Vec::new();
            for hook in or(&self.hooks, &first.hook) {
                for arch in or(&self.architectures, &first.architecture) {
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
                                    architecture: arch.clone(),
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
                spec.device = self.devices[i % self.devices.len()].clone();
            }
        }
        specs
    }
}

/// A progress bar over steps, showing tokens/s and the first SAE's numbers.
pub struct BarObserver {
    bar: ProgressBar,
    batch: u64,
}

impl BarObserver {
    pub fn new(hidden: bool) -> anyhow::Result<Self> {
        Ok(BarObserver {
            bar: super::token_bar(hidden, "  {msg}")?,
            batch: 1,
        })
    }
}

impl TrainObserver for BarObserver {
    fn on_start(&mut self, start_step: u64, total_steps: u64, batch_size: usize) {
        self.batch = batch_size as u64;
        self.bar.set_length(total_steps * self.batch);
        self.bar.set_position(start_step * self.batch);
        self.bar.reset_eta();
    }

    fn on_step(&mut self, _step: u64, tokens: u64, records: &[StepRecord]) {
        self.bar.set_position(tokens);
        if let Some(r) = records.first() {
            self.bar.set_message(format!(
                "FVU {:.3}  L0 {:.1}  dead {:.1}%",
                r.fvu,
                r.l0,
                100.0 * r.dead_fraction
            ));
        }
    }
}

/// Prints one line per SAE.
pub fn print_summary(summary: &TrainSummary) {
    println!(
        "trained {} SAE(s) for {} steps, {} tokens each, in {:.1} s ({:.0} tokens/s per SAE)",
        summary.saes.len(),
        summary.steps,
        summary.tokens,
        summary.seconds,
        summary.tokens as f64 / summary.seconds.max(1e-9)
    );
    println!(
        "{:<48} {:>8} {:>8} {:>8}  folder",
        "SAE", "FVU", "L0", "dead"
    );
    for s in &summary.saes {
        let (fvu, l0, dead) = s.last.as_ref().map_or((f64::NAN, f64::NAN, f64::NAN), |r| {
            (r.fvu, r.l0, r.dead_fraction)
        });
        let dir = s
            .dir
            .as_ref()
            .map_or("-".into(), |d| d.display().to_string());
        println!(
            "{:<48} {fvu:>8.4} {l0:>8.1} {:>7.1}%  {dir}",
            s.name,
            100.0 * dead
        );
    }
    if summary.saes.iter().any(|s| s.dir.is_some()) {
        println!("each folder holds cfg.json + sae_weights.safetensors (SAELens), metrics.jsonl, training_curves.svg and feature_density.svg");
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    set_threads(args.threads)?;
    let cfg = args.resolve()?;
    let mut observer = BarObserver::new(false)?;
    let mut opts = TrainOptions {
        resume: args.resume,
        ..TrainOptions::default()
    };
    let hooks = cfg.hooks();
    let summary = match &cfg.data.store {
        Some(root) => {
            let first = Store::open(&store_for_hook(root, &hooks[0])?)?;
            let m = first.manifest();
            opts.metadata = SaeMetadata {
                model_name: Some(m.model.spec.clone()),
                context_size: Some(m.context),
                prepend_bos: Some(true),
                dataset_path: Some(m.corpus.clone()),
                ..SaeMetadata::default()
            };
            let mut feed = StoreFeed::open(
                root,
                &hooks,
                cfg.data.batch_size,
                cfg.data.seed,
                cfg.data.buffer_shards,
            )?;
            train(&cfg, &mut feed, &opts, &mut observer)?
        }
        None => {
            let model = load_model(
                &cfg.data.model,
                parse_device(&cfg.data.model_device)?,
                parse_dtype(&cfg.data.model_dtype)?,
            )?;
            let n_layers = model.model.config().n_layers;
            let points = hooks
                .iter()
                .map(|h| HookPoint::parse_for(h, n_layers))
                .collect::<saescope::Result<Vec<_>>>()?;
            let corpus = Corpus::open(&cfg.data.corpus, &cfg.data.text_field)?;
            let source = StreamingSource::with_hooks(
                &model,
                &corpus,
                &points,
                cfg.data.context,
                cfg.data.windows_per_forward,
                cfg.data.skip_bos,
                false,
            )?;
            opts.metadata = SaeMetadata {
                model_name: Some(cfg.data.model.clone()),
                context_size: Some(cfg.data.context),
                prepend_bos: Some(true),
                dataset_path: Some(cfg.data.corpus.clone()),
                ..SaeMetadata::default()
            };
            let mut feed = StreamFeed::new(source, cfg.data.batch_size);
            train(&cfg, &mut feed, &opts, &mut observer)?
        }
    };
    observer.bar.finish_and_clear();
    print_summary(&summary);
    Ok(())
}
