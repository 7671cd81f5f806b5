//! `saescope train`: SAEs from a TOML config and/or flags, with a progress
//! bar; prints a summary table and where the files and plots are.

use std::path::PathBuf;

use clap::Args;
use indicatif::ProgressBar;
use saescope::train::metrics::StepRecord;
use saescope::train::overrides::TrainOverrides;
use saescope::train::ranks::{first_cuda_device, place_for_local_rank};
use saescope::train::{train_from_config, TrainConfig, TrainObserver, TrainSummary};

use super::set_threads;

/// A config file and/or flags; a flag overrides the file.
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
    #[command(flatten)]
    pub overrides: TrainOverrides,
}

impl TrainArgs {
    /// The config file (or defaults) with every given flag applied.
    pub fn resolve(&self) -> anyhow::Result<TrainConfig> {
        let cfg = match &self.config {
            Some(path) => TrainConfig::from_toml_file(path)?,
            None => TrainConfig::default(),
        };
        Ok(self.overrides.apply(cfg)?)
    }
}

/// A progress bar over steps, showing tokens/s and the first SAE's numbers.
pub struct BarObserver {
    bar: ProgressBar,
    batch: u64,
    /// Pause after each step ([`super::progress::test_pause`]).
    pause: Option<std::time::Duration>,
}

impl BarObserver {
    pub fn new(hidden: bool) -> anyhow::Result<Self> {
        Ok(BarObserver {
            bar: super::token_bar(hidden, "  {msg}")?,
            batch: 1,
            pause: super::progress::test_pause(),
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

    fn on_warning(&mut self, message: &str) {
        self.bar.suspend(|| eprintln!("warning: {message}"));
    }

    fn on_step(&mut self, _step: u64, tokens: u64, records: &[StepRecord]) {
        if let Some(pause) = self.pause {
            std::thread::sleep(pause);
        }
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
    if summary.exchanged_bytes > 0 {
        println!(
            "moved rows to the SAEs' ranks: {} bytes sent per step",
            summary.exchanged_bytes / summary.step_seconds.len().max(1) as u64
        );
    }
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
    let mut cfg = args.resolve()?;
    // Under a launcher, each local rank takes its own GPUs.
    if let Some(launch) = saescope::dist::Launch::from_env()? {
        let visible = tch::Cuda::device_count().max(0) as usize;
        cfg = place_for_local_rank(&cfg, launch.local_rank, visible);
    }
    let group = super::dist::join_from_env(first_cuda_device(&cfg))?;
    let rank = group.as_ref().map_or(0, |g| g.rank());
    // Ranks other than 0 train quietly; rank 0 shows progress and the
    // summary, and under module distribution each rank lists its own SAEs.
    let mut observer = BarObserver::new(rank != 0)?;
    let summary = train_from_config(&cfg, args.resume, group, &mut observer)?;
    observer.bar.finish_and_clear();
    if rank == 0 || cfg.run.distribute_modules {
        if cfg.run.distribute_modules {
            println!("rank {rank}:");
        }
        print_summary(&summary);
    }
    Ok(())
}
