//! `saescope bench`: throughput measurements for the benchmark drivers under `eval/bench/`.

use clap::{Args, Subcommand};
use saescope::bench::{runtime_bench, RuntimeBenchConfig};

use super::ModelArgs;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Forward, early-stopping forward and generation throughput, with machine limits.
    Runtime(RuntimeArgs),
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
