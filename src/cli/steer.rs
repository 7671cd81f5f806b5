//! `saescope steer`: learn an intervention on a task, or write an SAE-feature
//! intervention file; `eval steer` lives in `eval.rs`, steered generation in
//! `generate.rs`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use saescope::hooks::HookPoint;
use saescope::plots::heatmap_svg;
use saescope::sae::load_sae;
use saescope::steer::kinds::sae_features::{FeatureEdit, FeatureOp, SaeFeatureSteer};
use saescope::steer::kinds::sae_runtime::{Condition, SaeRuntimeSteer, Strategy};
use saescope::steer::kinds::scaling::Granularity;
use saescope::steer::learn::method::{make_steer, Method, MethodConfig};
use saescope::steer::learn::objective::{Effect, ObjectiveWeights};
use saescope::steer::learn::EpochRecord;
use saescope::steer::{save_steers, LearnConfig, Task};

use super::ModelArgs;

#[derive(Subcommand)]
pub enum SteerCommand {
    /// Learn an intervention on a task's training prompts (or compute a difference of means).
    Learn(LearnArgs),
    /// Write an intervention file that edits SAE features (add, clamp, ablate).
    SaeFeatures(SaeFeatureArgs),
    /// Write an intervention file with Wu et al.'s runtime strategies.
    SaeRuntime(SaeRuntimeArgs),
}

#[derive(Args)]
pub struct LearnArgs {
    #[arg(long, value_enum)]
    method: Method,
    /// Task JSONL (prompt, target, foil), e.g. eval/tasks/country_capital/train.jsonl.
    #[arg(long)]
    task: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Hook points to intervene at (default: every layer's attn and MLP outputs,
    /// or every layer's attn.hook_z with --granularity head).
    #[arg(long, value_delimiter = ',')]
    sites: Vec<String>,
    #[arg(long, value_enum, default_value = "site")]
    granularity: Granularity,
    /// One scalar per prompt position (activation scaling; prompts must share a length).
    #[arg(long)]
    per_position: bool,
    #[arg(long, default_value_t = 1.0)]
    lambda_faith: f64,
    #[arg(long, default_value_t = 0.01)]
    lambda_min: f64,
    #[arg(long, value_enum, default_value = "logit")]
    effect: Effect,
    /// Cap on the logit difference each prompt contributes (0: none).
    #[arg(long, default_value_t = 2.0)]
    margin: f64,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 0.02)]
    lr: f64,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Mean difference: subtract the dataset mean instead of the foil mean.
    #[arg(long)]
    mean_centre: bool,
    /// Mean difference: scale of the vector when applied.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Where to write the intervention (JSON; tensors beside it as .safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct SaeFeatureArgs {
    #[arg(long)]
    sae: PathBuf,
    /// Hook point (default: the SAE's).
    #[arg(long)]
    hook: Option<String>,
    /// FEATURE:add:ALPHA, FEATURE:clamp:VALUE or FEATURE:ablate (repeat).
    #[arg(long = "edit")]
    edits: Vec<FeatureEdit>,
    /// Instead of --edit: add the --top features whose decoder rows most raise
    /// logit(target) − logit(foil) on this task (first-order attribution), each
    /// with --alpha.
    #[arg(long)]
    select_from: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    top: usize,
    #[arg(long, default_value_t = 10.0)]
    alpha: f64,
    /// Model for --select-from.
    #[command(flatten)]
    model: ModelArgs,
    /// Clamp without the SAE's error term (the edited reconstruction replaces the activation).
    #[arg(long)]
    no_error_term: bool,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct SaeRuntimeArgs {
    #[arg(long)]
    sae: PathBuf,
    #[arg(long)]
    hook: Option<String>,
    #[arg(long, value_enum, default_value = "amplify")]
    strategy: Strategy,
    #[arg(long, value_delimiter = ',', required = true)]
    features: Vec<usize>,
    /// Target magnitude (2.5 in Wu et al.'s code).
    #[arg(long, default_value_t = 2.5)]
    magnitude: f64,
    /// Apply only while these features are active...
    #[arg(long, value_delimiter = ',')]
    condition: Vec<usize>,
    /// ...with a mean positive activation of at least this.
    #[arg(long, default_value_t = 0.1)]
    threshold: f64,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: SteerCommand) -> anyhow::Result<()> {
    match cmd {
        SteerCommand::Learn(args) => learn_cmd(args),
        SteerCommand::SaeFeatures(args) => sae_features_cmd(args),
        SteerCommand::SaeRuntime(args) => sae_runtime_cmd(args),
    }
}

/// An SAE folder, absolute so the intervention file works from anywhere.
fn sae_and_hook(
    dir: &std::path::Path,
    hook: &Option<String>,
) -> anyhow::Result<(saescope::sae::Sae, String, String)> {
    let sae = load_sae(dir)?;
    let hook = super::sae_hook_name(hook, &sae)?;
    let path = std::fs::canonicalize(dir)?.display().to_string();
    Ok((sae, path, hook))
}

fn sae_features_cmd(args: SaeFeatureArgs) -> anyhow::Result<()> {
    let (sae, path, hook) = sae_and_hook(&args.sae, &args.hook)?;
    let mut edits = args.edits;
    if let Some(task_path) = &args.select_from {
        let model = args.model.load()?;
        let task = Task::load(task_path, &model.tokenizer)?;
        let point = HookPoint::parse_for(&hook, model.model.config().n_layers)?;
        let sae_on = sae.to_device(model.model.device())?;
        let ranked = saescope::steer::learn::select::rank_features(&model, &task, &sae_on, point)?;
        for &(feature, score) in ranked.iter().take(args.top) {
            println!("feature {feature}: d(logit diff)/d(activation) = {score:+.4}");
            edits.push(FeatureEdit {
                feature,
                op: FeatureOp::Add { alpha: args.alpha },
            });
        }
    }
    let hook_point: HookPoint = hook.parse()?;
    let steer = SaeFeatureSteer::new(sae, path, hook_point, edits, !args.no_error_term)?;
    save_steers(&args.out, None, &[&steer])?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn sae_runtime_cmd(args: SaeRuntimeArgs) -> anyhow::Result<()> {
    let (sae, path, hook) = sae_and_hook(&args.sae, &args.hook)?;
    let condition = (!args.condition.is_empty()).then(|| Condition {
        features: args.condition.clone(),
        threshold: args.threshold,
    });
    let steer = SaeRuntimeSteer::new(
        sae,
        path,
        hook.parse()?,
        args.strategy,
        args.features,
        args.magnitude,
        condition,
    )?;
    save_steers(&args.out, None, &[&steer])?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn learn_cmd(args: LearnArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let task = Task::load(&args.task, &model.tokenizer)?;
    let method = MethodConfig {
        method: args.method,
        sites: args.sites,
        granularity: args.granularity,
        per_position: args.per_position,
        mean_centre: args.mean_centre,
        scale: args.scale,
    };
    let learn_cfg = LearnConfig {
        weights: ObjectiveWeights {
            effect: args.effect,
            margin: (args.margin > 0.0).then_some(args.margin),
            lambda_faith: args.lambda_faith,
            lambda_min: args.lambda_min,
        },
        epochs: args.epochs,
        lr: args.lr,
        batch: args.batch,
    };
    let mut report = |r: &EpochRecord| {
        eprintln!(
            "epoch {:>3}  loss {:>9.4}  effect {:>8.4}  KL {:>8.5}  L1 {:>9.3}",
            r.epoch, r.loss, r.effect, r.kl, r.l1
        );
    };
    let steer = make_steer(&model, &task, &method, &learn_cfg, &mut report)?;
    save_steers(&args.out, Some(&model.spec), &[steer.as_ref()])?;
    println!("wrote {}", args.out.display());
    if let Some(grid) = steer.grid(model.model.config().n_layers)? {
        let svg = heatmap_svg(&grid, "learned scalars (1 = unchanged)")?;
        let path = args.out.with_extension("svg");
        saescope::io::atomic::write_atomic(&path, svg.as_bytes())?;
        println!("heatmap of the scalars: {}", path.display());
    }
    Ok(())
}
