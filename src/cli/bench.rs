//! `saescope bench`: throughput measurements for the benchmark drivers under `eval/bench/`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use saescope::bench::runtime::{runtime_bench, RuntimeBenchConfig};
use saescope::bench::steer::steer_bench;
use saescope::bench::train::{train_bench, TrainBenchConfig};

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
    /// Copies of the prompt generated together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    bench: TrainBenchConfig,
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
        BenchCommand::Train(args) => {
            set_threads(args.threads)?;
            print_report(&train_bench(&args.bench)?, args.json)
        }
        BenchCommand::Steer(args) => {
            let loaded = args.model.load()?;
            let report = steer_bench(
                &loaded,
                &args.steer,
                (&args.prompt, args.batch),
                args.new_tokens,
                args.rounds,
            )?;
            print_report(&report, args.json)
        }
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
            print_report(&serde_json::to_value(&report)?, args.json)
        }
    }
}

/// Prints a report with the machine's record (`saescope info --json`) added:
/// one JSON line with `--json`, else pretty-printed.
fn print_report(report: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    let mut report = report.clone();
    if let Some(fields) = report.as_object_mut() {
        fields.insert(
            "machine".into(),
            serde_json::to_value(saescope::machine::MachineInfo::collect())?,
        );
    }
    if json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
