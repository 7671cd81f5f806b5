//! `saescope harvest`: activations of one or more hook points over a corpus,
//! into a resumable activation store, with a progress bar.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use indicatif::ProgressBar;
use saescope::data::{
    harvest, harvest_as_rank, HarvestConfig, HarvestObserver, StoreDtype, DEFAULT_CORPUS,
};
use saescope::hooks::HookPoint;
use saescope::model::{load_model, DeviceSpec, ModelDtype};

use super::{choose_dtype, set_threads};

#[derive(Args)]
pub struct HarvestArgs {
    /// A .gguf file, a Hugging Face model folder, a hub id, or `smollm2-135m`.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// The dtype the model runs in: auto (bf16 where the device has native
    /// bf16 arithmetic, else f32), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    model_dtype: ModelDtype,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// A text or .jsonl file (optionally .gz), a folder of them, `hf:org/name`, or `default`.
    #[arg(long, default_value = DEFAULT_CORPUS)]
    corpus: String,
    /// The field of each JSONL record that holds its text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Hook point to harvest (repeat for several, all from one forward pass).
    #[arg(long = "hook", required = true)]
    hooks: Vec<String>,
    /// Activation rows to store per hook (rounded up to whole windows).
    #[arg(long)]
    tokens: u64,
    /// Tokens per window, BOS included.
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// The store folder; with several hooks, one subfolder per hook.
    #[arg(long)]
    out: PathBuf,
    /// How activations are stored.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: StoreDtype,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Rows per shard (rounded down to whole windows).
    #[arg(long, default_value_t = 32768)]
    shard_tokens: u64,
    /// Continue a harvest that was interrupted.
    #[arg(long)]
    resume: bool,
    /// Recorded in the manifest as the readers' default shuffle seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Leave each window's BOS position out of the store.
    #[arg(long)]
    skip_bos: bool,
    /// Print the summary as one JSON object (no progress bar).
    #[arg(long)]
    json: bool,
}

/// A progress bar in tokens per second.
struct Progress {
    bar: ProgressBar,
    /// Pause after each shard ([`super::progress::test_pause`]), so that
    /// tests can interrupt a harvest between shards.
    shard_delay: Option<Duration>,
}

impl HarvestObserver for Progress {
    fn started(&mut self, target_rows: u64, done_rows: u64) {
        self.bar.set_length(target_rows);
        self.bar.set_position(done_rows);
        self.bar.reset_eta();
    }

    fn advanced(&mut self, rows: u64) {
        self.bar.inc(rows);
    }

    fn shard_written(&mut self, _index: usize, _rows: u64) {
        if let Some(delay) = self.shard_delay {
            std::thread::sleep(delay);
        }
    }
}

pub fn run(args: HarvestArgs) -> anyhow::Result<()> {
    set_threads(args.threads)?;
    let device = args.device.resolve()?;
    let dtype = choose_dtype(args.model_dtype, device);
    let model = load_model(&args.model, device, dtype.kind())?;
    let n_layers = model.model.config().n_layers;
    let hooks = args
        .hooks
        .iter()
        .map(|h| HookPoint::parse_for(h, n_layers))
        .collect::<saescope::Result<Vec<_>>>()?;
    let cfg = HarvestConfig {
        corpus: args.corpus,
        text_field: args.text_field,
        hooks,
        tokens: args.tokens,
        context: args.context,
        batch: args.batch,
        dtype: args.dtype,
        skip_bos: args.skip_bos,
        seed: args.seed,
        shard_tokens: args.shard_tokens,
        resume: args.resume,
        out: args.out,
    };
    // Under a launcher each rank harvests its part; rank 0 shows progress
    // and reports the merged store.
    // The ranks only agree on success and failure: Gloo, wherever the model runs.
    let group = super::dist::join_from_env(None)?;
    let rank = group.as_ref().map_or(0, |g| g.rank());
    let bar = super::token_bar(args.json || rank != 0, "")?;
    let shard_delay = super::progress::test_pause();
    let mut progress = Progress { bar, shard_delay };
    let started = std::time::Instant::now();
    let summary = match &group {
        Some(g) => harvest_as_rank(&model, &cfg, g, &mut progress)?,
        None => harvest(&model, &cfg, &mut progress)?,
    };
    progress.bar.finish_and_clear();
    if rank != 0 {
        return Ok(());
    }
    let secs = started.elapsed().as_secs_f64();
    let new_rows = summary.rows - summary.kept_rows;
    if args.json {
        let stores: Vec<String> = summary
            .stores
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let out = serde_json::json!({
            "rows": summary.rows,
            "windows": summary.windows,
            "shards": summary.shards,
            "kept_rows": summary.kept_rows,
            "new_rows": new_rows,
            "seconds": secs,
            "tokens_per_s": new_rows as f64 / secs.max(1e-9),
            "forward_seconds": summary.forward_secs,
            "corpus_exhausted": summary.corpus_exhausted,
            "stores": stores,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "stored {} tokens ({} windows, {} shards, {} kept from before) per hook in {secs:.1} s ({:.0} tokens/s)",
        summary.rows,
        summary.windows,
        summary.shards,
        summary.kept_shards,
        new_rows as f64 / secs.max(1e-9)
    );
    if new_rows > 0 {
        println!(
            "model forward: {:.1} s ({:.0}% of the run; tokenizing and writing run beside it on other threads)",
            summary.forward_secs,
            100.0 * summary.forward_secs / secs.max(1e-9)
        );
    }
    for dir in &summary.stores {
        println!("  {}", dir.display());
    }
    if summary.corpus_exhausted {
        eprintln!(
            "warning: the corpus ended before --tokens {} was reached",
            cfg.tokens
        );
    }
    Ok(())
}
