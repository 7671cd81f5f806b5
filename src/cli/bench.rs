//! `saescope bench`: throughput measurements for the benchmark drivers under `eval/bench/`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use saescope::bench::{runtime_bench, RuntimeBenchConfig};
use saescope::data::store::Store;
use saescope::eval::evaluate_rows;
use saescope::train::config::SaeSpec;
use saescope::train::trainer::Quiet;
use saescope::train::{train, MemoryFeed, TrainConfig, TrainOptions};

use super::{set_threads, ModelArgs};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Forward, early-stopping forward and generation throughput, with machine limits.
    Runtime(RuntimeArgs),
    /// SAE training throughput and held-out FVU on stored activations, with
    /// sparsify's defaults (eval/bench/sae_train.py runs sparsify beside it).
    Train(TrainBenchArgs),
    /// Greedy generation with and without interventions, alternating rounds.
    Steer(SteerBenchArgs),
}

#[derive(Args)]
pub struct SteerBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Intervention file(s), applied together.
    #[arg(long = "steer", required = true)]
    steer: Vec<PathBuf>,
    #[arg(long, default_value = "The city of Rome is in France. Rome is in")]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TrainBenchArgs {
    /// Activation store (one hook).
    #[arg(long)]
    store: PathBuf,
    /// Train on the store's first N rows.
    #[arg(long, default_value_t = 1 << 20)]
    train_tokens: u64,
    /// Measure FVU on the store's last M rows.
    #[arg(long, default_value_t = 1 << 16)]
    held_out_tokens: u64,
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    #[arg(long, default_value = "topk")]
    architecture: String,
    #[arg(long, default_value_t = 16)]
    expansion: usize,
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Default: sparsify's 2e-4 / sqrt(d_sae / 2^14).
    #[arg(long)]
    lr: Option<f64>,
    /// Linear warm-up, then linear decay to zero at the last step (sparsify's schedule).
    #[arg(long, default_value_t = 1000)]
    lr_warmup_steps: u64,
    /// AuxK weight (sparsify's default: 0).
    #[arg(long, default_value_t = 0.0)]
    auxk_alpha: f64,
    /// f32 or bf16 (encoder matmul).
    #[arg(long, default_value = "f32")]
    compute_dtype: String,
    /// The dense autograd TopK step instead of the sparse one.
    #[arg(long)]
    dense_topk: bool,
    /// Input normalisation: none (sparsify's) or expected_average_only_in
    /// (saescope's default: mean norm √d_in, folded into the weights after).
    #[arg(long, default_value = "none")]
    normalize: String,
    /// b_dec initialisation: mean (sparsify's), geometric_median or zeros.
    #[arg(long, default_value = "mean")]
    init_b_dec: String,
    /// W_enc = scale · W_decᵀ at initialisation.
    #[arg(long, default_value_t = saescope::train::config::DEFAULT_ENCODER_INIT_SCALE)]
    encoder_init_scale: f64,
    #[arg(long)]
    threads: Option<i32>,
    /// Print one JSON line only.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RuntimeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Smaller shapes and fewer repeats, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Train(args) => train_bench(args),
        BenchCommand::Steer(args) => steer_bench(args),
        BenchCommand::Runtime(args) => {
            let loaded = args.model.load()?;
            let mut cfg = RuntimeBenchConfig::default();
            if args.quick {
                cfg = RuntimeBenchConfig {
                    seq: 64,
                    new_tokens: 8,
                    repeats: 1,
                    ..cfg
                };
            }
            let report = runtime_bench(&loaded.model, &cfg)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(())
        }
    }
}

/// Steps left out of the throughput (allocator and cache warm-up).
const WARMUP_STEPS: usize = 3;

fn train_bench(args: TrainBenchArgs) -> anyhow::Result<()> {
    set_threads(args.threads)?;
    let store = Store::open(&args.store)?;
    let rows = store.manifest().tokens;
    anyhow::ensure!(
        args.train_tokens + args.held_out_tokens <= rows,
        "the store has {rows} rows; --train-tokens + --held-out-tokens must not exceed it"
    );
    let train_rows = store.read_rows(0, args.train_tokens)?;
    let held_out = store.read_rows(rows - args.held_out_tokens, args.held_out_tokens)?;
    let d = train_rows.size()[1] as usize;
    let mut cfg = TrainConfig::default();
    // Full batches only, as sparsify's driver does.
    let steps = args.train_tokens / args.batch as u64;
    anyhow::ensure!(
        steps > WARMUP_STEPS as u64,
        "too few rows for {} batches",
        WARMUP_STEPS + 1
    );
    cfg.data.batch_size = args.batch;
    cfg.data.tokens = steps * args.batch as u64;
    cfg.data.normalize = args.normalize.clone();
    cfg.optim.lr = args.lr;
    cfg.optim.lr_warmup_steps = args.lr_warmup_steps;
    cfg.optim.lr_decay_fraction = if args.lr_warmup_steps < steps {
        (steps - args.lr_warmup_steps) as f64 / steps as f64
    } else {
        0.0
    };
    cfg.optim.grad_clip = 0.0;
    cfg.optim.compute_dtype = args.compute_dtype.clone();
    cfg.run.init_b_dec = args.init_b_dec.clone();
    cfg.run.sparse_topk = !args.dense_topk;
    cfg.saes = vec![SaeSpec {
        architecture: args.architecture.clone(),
        hook: store.manifest().hook.clone(),
        expansion: args.expansion,
        k: Some(args.k),
        auxk_alpha: args.auxk_alpha,
        encoder_init_scale: args.encoder_init_scale,
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
    let flops_per_token = if args.dense_topk || args.architecture != "topk" {
        10.0 * d * n
    } else {
        2.0 * d * n + 8.0 * k * d
    };
    let report = serde_json::json!({
        "architecture": args.architecture,
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
        "lr": saescope::train::trainer::learning_rate(&cfg, n as usize),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Tokens/s of greedy generation of `new_tokens` with `hooks`.
fn time_generation(
    loaded: &saescope::model::LoadedModel,
    prompt: &[i64],
    new_tokens: usize,
    hooks: &mut saescope::hooks::Hooks,
) -> anyhow::Result<f64> {
    let config = saescope::model::GenerateConfig {
        max_new_tokens: new_tokens,
        sampling: saescope::model::SamplingConfig::default(),
        stop_ids: Vec::new(),
    };
    let started = std::time::Instant::now();
    let out =
        saescope::model::generate(&loaded.model, &[prompt.to_vec()], &config, hooks, |_, _| {})?;
    let _ = out;
    Ok(new_tokens as f64 / started.elapsed().as_secs_f64())
}

fn steer_bench(args: SteerBenchArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let prompt = loaded.tokenizer.encode(&args.prompt, true)?;
    let n_layers = loaded.model.config().n_layers;
    let mut steers =
        saescope::steer::load_steer_files(&args.steer, n_layers, loaded.model.device())?;
    let (mut plain, mut steered) = (0.0f64, 0.0f64);
    // Warm up both paths, then alternate, keeping each side's best round.
    for round in 0..=args.rounds {
        let p = time_generation(
            &loaded,
            &prompt,
            args.new_tokens,
            &mut saescope::hooks::Hooks::new(),
        )?;
        let mut hooks = saescope::steer::steer_hooks(&mut steers);
        let q = time_generation(&loaded, &prompt, args.new_tokens, &mut hooks)?;
        if round > 0 {
            plain = plain.max(p);
            steered = steered.max(q);
        }
    }
    let report = serde_json::json!({
        "model": loaded.spec,
        "interventions": args.steer.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "new_tokens": args.new_tokens,
        "unsteered_tokens_per_s": plain,
        "steered_tokens_per_s": steered,
        "ratio": steered / plain,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
