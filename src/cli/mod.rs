//! Subcommands and the option groups they share.

mod analysis;
mod bench;
mod dist;
mod eval;
mod features;
mod generate;
mod harvest;
mod info;
mod label;
mod launch;
mod logits;
mod progress;
mod serve;
mod steer;
mod store;
mod train;

use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;
use saescope::hooks::HookPoint;
use saescope::model::{load_model, DeviceSpec, Dtype, LoadedModel, ModelDtype};

#[derive(Parser)]
#[command(
    name = "saescope",
    version,
    about = "Sparse autoencoders and interventions on language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The machine: CPU tiers, libtorch's capability, CUDA devices.
    Info(info::InfoArgs),
    /// Print the token ids of a prompt and the top next tokens with log-probs.
    Logits(logits::LogitsArgs),
    /// Generate text, streaming tokens to stdout.
    Generate(generate::GenerateArgs),
    /// Start this node's ranks of a multi-process job (torchrun's variables).
    Launch(launch::LaunchArgs),
    /// An OpenAI-compatible server with per-request steering.
    Serve(Box<serve::ServeArgs>),
    /// Benchmarks (machine-readable with --json).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Harvest hook-point activations over a corpus into a resumable store.
    Harvest(harvest::HarvestArgs),
    /// Inspect and verify activation stores.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Train one or more SAEs from a store or straight from the model.
    Train(Box<train::TrainArgs>),
    /// Evaluate SAEs and interventions.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Learn or write steering interventions.
    #[command(subcommand)]
    Steer(steer::SteerCommand),
    /// Build a feature dictionary: MI explanations, contexts, densities, browser.
    Label(Box<label::LabelArgs>),
    /// Search and show the features of a dictionary.
    #[command(subcommand)]
    Features(features::FeaturesCommand),
    /// Representational similarity of prompts' activations against hypotheses.
    Rsa(Box<analysis::RsaArgs>),
    /// Attention from query tokens to relevant against irrelevant spans.
    AttentionRatio(Box<analysis::AttentionRatioArgs>),
    /// Cross-validated linear probes of a label or value, layer by layer.
    Probe(Box<analysis::ProbeArgs>),
    /// Activation and attribution patching sweeps over clean/corrupted pairs.
    Patch(Box<analysis::PatchArgs>),
    /// Patchscopes: decode a hidden state by patching it into a target prompt.
    #[command(subcommand)]
    Patchscope(analysis::PatchscopeCommand),
}

/// Which model, where, in what precision.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face model folder, a hub id, or `smollm2-135m`.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// auto (bf16 where the device has native bf16 arithmetic, else f32),
    /// f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: ModelDtype,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        set_threads(self.threads)?;
        let device = self.device.resolve()?;
        let dtype = choose_dtype(self.dtype, device);
        Ok(load_model(&self.model, device, dtype.kind())?)
    }
}

/// The dtype `requested` resolves to on `device`, after printing the warning
/// when it will be slow there.
pub fn choose_dtype(requested: ModelDtype, device: tch::Device) -> Dtype {
    let chosen = requested.choose(device);
    if let Some(warning) = &chosen.slow_warning {
        eprintln!("warning: {warning}");
    }
    chosen.dtype
}

/// Sets the CPU threads of libtorch (which the fused kernels and decode step
/// share) and of rayon (tokenization, labelling statistics) to `--threads`,
/// when given.
pub fn set_threads(threads: Option<i32>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be positive");
        tch::set_num_threads(n);
        // Fails only when the pool already exists, which keeps its size.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global();
    }
    Ok(())
}

/// The hook an SAE works on: `--hook` when given, else the one in its metadata.
pub fn sae_hook_name(
    explicit: &Option<String>,
    sae: &saescope::sae::Sae,
) -> anyhow::Result<String> {
    match (explicit, sae.hook_name()) {
        (Some(h), _) => Ok(h.clone()),
        (None, Some(h)) => Ok(h.to_string()),
        (None, None) => anyhow::bail!("the SAE's metadata names no hook point; pass --hook"),
    }
}

/// An SAE, the model it reads, and the text to run them on.
#[derive(Args)]
pub struct SaeOnCorpusArgs {
    /// SAE folder (SAELens or sparsify layout).
    #[arg(long)]
    pub sae: std::path::PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = saescope::data::DEFAULT_CORPUS)]
    pub corpus: String,
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Hook point (default: the one in the SAE's metadata).
    #[arg(long)]
    pub hook: Option<String>,
}

impl SaeOnCorpusArgs {
    /// The model, the SAE on the model's device, and the SAE's hook point.
    pub fn load(&self) -> anyhow::Result<(LoadedModel, saescope::sae::Sae, HookPoint)> {
        let sae = saescope::sae::load_sae(&self.sae)?;
        let hook_name = sae_hook_name(&self.hook, &sae)?;
        let model = self.model.load()?;
        let sae = sae.to_device(model.model.device())?;
        let hook = HookPoint::parse_for(&hook_name, model.model.config().n_layers)?;
        Ok((model, sae, hook))
    }
}

/// A progress bar counting tokens with their rate, hidden when `hidden`
/// (e.g. with `--json`), followed by `extra` (a template fragment); periodic
/// lines instead when stderr is not a terminal.
pub fn token_bar(hidden: bool, extra: &str) -> anyhow::Result<ProgressBar> {
    progress::bar(
        hidden,
        &format!(
            "{{elapsed_precise}} {{wide_bar}} {{human_pos}}/{{human_len}} tokens  {{per_sec}}  ETA {{eta}}{extra}"
        ),
        &format!(
            "[{{elapsed_precise}}] {{human_pos}}/{{human_len}} tokens ({{percent}}%)  {{per_sec}}  ETA {{eta}}{extra}"
        ),
    )
}

/// Rejects a misspelt `SAESCOPE_CPU` and notes one above the CPU's tier.
fn check_cpu_tier() -> anyhow::Result<()> {
    if let Some(note) = saescope::machine::cpu::check_environment()? {
        eprintln!("note: {note}");
    }
    Ok(())
}

pub fn main() -> std::process::ExitCode {
    // Printing into a closed pipe (`saescope features show ... | head`) ends
    // the process quietly, as other Unix tools do, instead of panicking.
    // Not in a job, though: Gloo writes its sockets with `writev`, which
    // raises SIGPIPE when a peer has exited, and that would kill this rank
    // silently instead of letting it report which rank is gone.
    if std::env::var_os("WORLD_SIZE").is_none() {
        // SAFETY: setting a signal disposition at start-up, before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    saescope::model::cpu::alloc::keep_freed_memory_mapped();
    let cli = Cli::parse();
    let result = check_cpu_tier().and_then(|()| match cli.command {
        Command::Info(args) => info::run(args),
        Command::Logits(args) => logits::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Launch(args) => launch::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Harvest(args) => harvest::run(args),
        Command::Store(cmd) => store::run(cmd),
        Command::Train(args) => train::run(*args),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Steer(cmd) => steer::run(cmd),
        Command::Label(args) => label::run(*args),
        Command::Features(cmd) => features::run(cmd),
        Command::Rsa(args) => analysis::run_rsa_cmd(*args),
        Command::AttentionRatio(args) => analysis::run_attention_ratio_cmd(*args),
        Command::Probe(args) => analysis::run_probe_cmd(*args),
        Command::Patch(args) => analysis::run_patch_cmd(*args),
        Command::Patchscope(cmd) => analysis::run_patchscope_cmd(cmd),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
