//! SAE training throughput and held-out FVU on stored activations, with
//! sparsify's defaults, in memory (nothing written); `eval/bench/sae_train.py`
//! runs sparsify beside it on the same rows.

use std::path::PathBuf;

use crate::data::store::Store;
use crate::error::{Error, Result};
use crate::eval::evaluate_rows;
use crate::model::DeviceSpec;
use crate::sae::SaeArchitecture;
use crate::train::config::{
    ComputeDtype, InitBDec, InputNormalization, SaeSpec, DEFAULT_ENCODER_INIT_SCALE,
};
use crate::train::trainer::{learning_rate, Quiet};
use crate::train::{train, MemoryFeed, TrainConfig, TrainOptions};

/// What to train and how, with sparsify's defaults where they differ from ours.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainBenchConfig {
    /// Activation store (one hook).
    #[arg(long)]
    pub store: PathBuf,
    /// Train on the store's first N rows.
    #[arg(long, default_value_t = 1 << 20)]
    pub train_tokens: u64,
    /// Measure FVU on the store's last M rows.
    #[arg(long, default_value_t = 1 << 16)]
    pub held_out_tokens: u64,
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
    #[arg(long, default_value = "topk")]
    pub architecture: SaeArchitecture,
    #[arg(long, default_value_t = 16)]
    pub expansion: usize,
    #[arg(long, default_value_t = 32)]
    pub k: usize,
    /// Default: sparsify's 2e-4 / sqrt(d_sae / 2^14).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warm-up, then linear decay to zero at the last step (sparsify's schedule).
    #[arg(long, default_value_t = 1000)]
    pub lr_warmup_steps: u64,
    /// AuxK weight (sparsify's default: 0).
    #[arg(long, default_value_t = 0.0)]
    pub auxk_alpha: f64,
    /// Precision of the encoder matmul.
    #[arg(long, default_value = "f32")]
    pub compute_dtype: ComputeDtype,
    /// The dense autograd TopK step instead of the sparse one.
    #[arg(long)]
    pub dense_topk: bool,
    /// Input normalisation: none (sparsify's) or expected_average_only_in
    /// (saescope's default: mean norm √d_in, folded into the weights after).
    #[arg(long, default_value = "none")]
    pub normalize: InputNormalization,
    /// b_dec initialisation: mean (sparsify's), geometric_median or zeros.
    #[arg(long, default_value = "mean")]
    pub init_b_dec: InitBDec,
    /// W_enc = scale · W_decᵀ at initialisation.
    #[arg(long, default_value_t = DEFAULT_ENCODER_INIT_SCALE)]
    pub encoder_init_scale: f64,
    /// Where the SAE trains: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

/// Steps left out of the throughput (allocator and cache warm-up).
const WARMUP_STEPS: usize = 3;

/// Trains on the store's first rows in memory and reports throughput (after
/// warm-up steps) and FVU on its last rows, as one JSON object.
pub fn train_bench(args: &TrainBenchConfig) -> Result<serde_json::Value> {
    let store = Store::open(&args.store)?;
    let rows = store.manifest().tokens;
    if args.train_tokens + args.held_out_tokens > rows {
        return Err(Error::InvalidArgument(format!(
            "the store has {rows} rows; --train-tokens + --held-out-tokens must not exceed it"
        )));
    }
    let train_rows = store.read_rows(0, args.train_tokens)?;
    let held_out = store.read_rows(rows - args.held_out_tokens, args.held_out_tokens)?;
    let d = train_rows.size()[1] as usize;
    let mut cfg = TrainConfig::default();
    // Full batches only, as sparsify's driver does.
    let steps = args.train_tokens / args.batch as u64;
    if steps <= WARMUP_STEPS as u64 {
        return Err(Error::InvalidArgument(format!(
            "too few rows for {} batches",
            WARMUP_STEPS + 1
        )));
    }
    cfg.data.batch_size = args.batch;
    cfg.data.tokens = steps * args.batch as u64;
    cfg.data.normalize = args.normalize;
    cfg.optim.lr = args.lr;
    cfg.optim.lr_warmup_steps = args.lr_warmup_steps;
    cfg.optim.lr_decay_fraction = if args.lr_warmup_steps < steps {
        (steps - args.lr_warmup_steps) as f64 / steps as f64
    } else {
        0.0
    };
    cfg.optim.grad_clip = 0.0;
    cfg.optim.compute_dtype = args.compute_dtype;
    cfg.run.init_b_dec = args.init_b_dec;
    cfg.run.sparse_topk = !args.dense_topk;
    cfg.saes = vec![SaeSpec {
        architecture: args.architecture,
        hook: store.manifest().hook.clone(),
        expansion: args.expansion,
        k: Some(args.k),
        auxk_alpha: args.auxk_alpha,
        encoder_init_scale: args.encoder_init_scale,
        device: args.device,
        ..SaeSpec::default()
    }];
    let mut feed = MemoryFeed::new(vec![train_rows], args.batch, cfg.data.seed)?;
    let opts = TrainOptions {
        in_memory: true,
        ..TrainOptions::default()
    };
    let summary = train(&cfg, &mut feed, &opts, &mut Quiet)?;
    let timed = &summary.step_seconds[WARMUP_STEPS..];
    let tokens_per_s = (timed.len() * args.batch) as f64 / timed.iter().sum::<f64>();
    let trained = &summary.saes[0];
    let held = evaluate_rows(&trained.sae, &held_out, 8192)?;
    let n = (d * args.expansion) as f64;
    let (d, k) = (d as f64, args.k as f64);
    // Work per token: the dense encoder matmul, then either the sparse path
    // (decode, its two gradients, the encoder gradient: 4 × 2kd) or the dense
    // autograd path (decoder forward and three dense gradients).
    let flops_per_token = if args.dense_topk || args.architecture != SaeArchitecture::TopK {
        10.0 * d * n
    } else {
        2.0 * d * n + 8.0 * k * d
    };
    Ok(serde_json::json!({
        "architecture": args.architecture.name(),
        "d_in": d,
        "d_sae": n,
        "k": args.k,
        "batch": args.batch,
        "steps": summary.steps,
        "seconds": summary.seconds,
        "tokens_per_s": tokens_per_s,
        "held_out_fvu": held.fvu,
        "held_out_l0": held.l0,
        "held_out_dead_fraction": held.dead_fraction,
        "train_fvu_last": trained.last.as_ref().map(|r| r.fvu),
        "flops_per_token": flops_per_token,
        "compute_dtype": args.compute_dtype,
        "normalize": args.normalize,
        "init_b_dec": args.init_b_dec,
        "encoder_init_scale": args.encoder_init_scale,
        "sparse_topk": !args.dense_topk,
        "lr": learning_rate(&cfg, n as usize),
    }))
}
