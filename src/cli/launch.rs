//! `saescope launch`: this node's ranks of a multi-process job.

use std::time::Duration;

use clap::Args;
use saescope::dist::launcher::{launch, LaunchPlan};

#[derive(Args)]
pub struct LaunchArgs {
    /// Ranks on this node.
    #[arg(long)]
    nproc: usize,
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    #[arg(long, default_value_t = 29500)]
    master_port: u16,
    /// Seconds ranks get to stop after SIGTERM (when another failed, or the
    /// launcher was told to stop) before they are killed.
    #[arg(long, default_value_t = 30.0)]
    grace_seconds: f64,
    /// The saescope command each rank runs, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(args: LaunchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.grace_seconds.is_finite() && args.grace_seconds >= 0.0,
        "--grace-seconds must be a number of seconds"
    );
    let plan = LaunchPlan {
        nproc: args.nproc,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr,
        master_port: args.master_port,
        grace: Duration::from_secs_f64(args.grace_seconds),
    };
    let program = std::env::current_exe()?;
    launch(&program, &args.command, &plan)?;
    Ok(())
}
