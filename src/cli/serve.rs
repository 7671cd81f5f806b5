//! `saescope serve`: the OpenAI-compatible server with per-request steering.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use saescope::model::load_model;
use saescope::serve::{serve, ServeConfig};

use super::{choose_dtype, set_threads, ModelArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model name clients send (default: --model).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* (or set SAESCOPE_API_KEY).
    #[arg(long, env = "SAESCOPE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// An intervention file (from `saescope steer`) that requests can name:
    /// NAME=FILE, repeatable.
    #[arg(long = "steer", value_parser = named_path)]
    steers: Vec<(String, PathBuf)>,
    /// An SAE folder whose features requests can edit inline: NAME=DIR.
    #[arg(long = "sae", value_parser = named_path)]
    saes: Vec<(String, PathBuf)>,
    /// A loaded steer that every request gets unless it sends
    /// `"default_steer": false`: NAME or NAME:SCALE, repeatable.
    #[arg(long = "default-steer", value_parser = named_scale)]
    default_steers: Vec<(String, f64)>,
    /// Sequences decoded together in the running batch.
    #[arg(long, default_value_t = 8)]
    max_concurrent: usize,
    /// Requests waiting for a place in the batch; beyond, 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    #[arg(long, default_value_t = 1024)]
    max_prompt_tokens: usize,
    /// Most new tokens per request (and the chat default).
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds SIGTERM waits for requests in flight before cancelling them.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
}

fn named_path(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("`{text}`: expected NAME=PATH")),
    }
}

fn named_scale(text: &str) -> Result<(String, f64), String> {
    match text.split_once(':') {
        None => Ok((text.to_string(), 1.0)),
        Some((name, scale)) => scale
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite())
            .map(|s| (name.to_string(), s))
            .ok_or_else(|| format!("`{text}`: expected NAME or NAME:SCALE")),
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.max_concurrent > 0,
        "--max-concurrent must be at least 1"
    );
    anyhow::ensure!(
        args.shutdown_timeout.is_finite() && args.shutdown_timeout >= 0.0,
        "--shutdown-timeout must be a number of seconds"
    );
    set_threads(args.model.threads)?;
    let device = args.model.device.resolve()?;
    let kind = choose_dtype(args.model.dtype, device).kind();
    let config = ServeConfig {
        host: args.host,
        port: args.port,
        model_name: args
            .served_model_name
            .unwrap_or_else(|| args.model.model.clone()),
        api_key: args.api_key,
        max_concurrent: args.max_concurrent,
        max_queue: args.max_queue,
        max_prompt_tokens: args.max_prompt_tokens,
        max_tokens: args.max_tokens,
        max_body_bytes: args.max_body_bytes,
        shutdown_timeout: Duration::from_secs_f64(args.shutdown_timeout),
        steers: args.steers,
        saes: args.saes,
        default_steers: args.default_steers,
        step_pause: super::progress::test_pause(),
    };
    let model = args.model.model.clone();
    eprintln!("loading {model} ...");
    serve(
        config,
        move || load_model(&model, device, kind),
        |address| eprintln!("listening on http://{address}"),
    )?;
    eprintln!("stopped");
    Ok(())
}
