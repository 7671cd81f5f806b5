//! `saescope steer`: learn an intervention on a task, or write an SAE-feature
//! intervention file; `eval steer` lives in `eval.rs`, steered generation in
//! `generate.rs`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use saescope::hooks::HookPoint;
use saescope::plots::heatmap_svg;
use saescope::sae::load_sae;
use saescope::steer::dyn_scalar::DynScalar;
use saescope::steer::learn::EpochRecord;
use saescope::steer::objective::{Effect, ObjectiveWeights};
use saescope::steer::sae_features::{FeatureEdit, FeatureOp, SaeFeatureSteer};
use saescope::steer::sae_runtime::{Condition, SaeRuntimeSteer, Strategy};
use saescope::steer::scaling::{default_sites, ActivationScaling, Granularity};
use saescope::steer::vector::{difference_of_means, SteeringVector};
use saescope::steer::{learn, save_steers, LearnConfig, Steer, Task};

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

#[derive(Clone, Copy, ValueEnum)]
pub enum Method {
    ActivationScaling,
    DynScalar,
    SteeringVector,
    MeanDifference,
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
    granularity: GranularityArg,
    /// One scalar per prompt position (activation scaling; prompts must share a length).
    #[arg(long)]
    per_position: bool,
    #[arg(long, default_value_t = 1.0)]
    lambda_faith: f64,
    #[arg(long, default_value_t = 0.01)]
    lambda_min: f64,
    #[arg(long, value_enum, default_value = "logit")]
    effect: EffectArg,
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

#[derive(Clone, Copy, ValueEnum)]
pub enum GranularityArg {
    Site,
    Head,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum EffectArg {
    Logit,
    Prob,
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
    edits: Vec<String>,
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
    strategy: StrategyArg,
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

#[derive(Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    Amplify,
    Calibrate,
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

fn parse_edit(text: &str) -> anyhow::Result<FeatureEdit> {
    let parts: Vec<&str> = text.split(':').collect();
    let feature: usize = parts[0]
        .parse()
        .map_err(|_| anyhow::anyhow!("--edit {text}: the feature index must be a number"))?;
    let number = |i: usize| -> anyhow::Result<f64> {
        parts
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--edit {text}: needs a number after the operation"))
    };
    let op = match parts.get(1).copied() {
        Some("add") => FeatureOp::Add { alpha: number(2)? },
        Some("clamp") => FeatureOp::Clamp { value: number(2)? },
        Some("ablate") => FeatureOp::Ablate,
        _ => anyhow::bail!(
            "--edit {text}: use FEATURE:add:ALPHA, FEATURE:clamp:VALUE or FEATURE:ablate"
        ),
    };
    Ok(FeatureEdit { feature, op })
}

fn sae_features_cmd(args: SaeFeatureArgs) -> anyhow::Result<()> {
    let (sae, path, hook) = sae_and_hook(&args.sae, &args.hook)?;
    let mut edits = args
        .edits
        .iter()
        .map(|e| parse_edit(e))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(task_path) = &args.select_from {
        let model = args.model.load()?;
        let task = Task::load(task_path, &model.tokenizer)?;
        let point = HookPoint::parse_for(&hook, model.model.config().n_layers)?;
        let sae_on = sae.to_device(model.model.device())?;
        let ranked = saescope::steer::sae_select::rank_features(&model, &task, &sae_on, point)?;
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
    let strategy = match args.strategy {
        StrategyArg::Amplify => Strategy::Amplify,
        StrategyArg::Calibrate => Strategy::Calibrate,
    };
    let condition = (!args.condition.is_empty()).then(|| Condition {
        features: args.condition.clone(),
        threshold: args.threshold,
    });
    let steer = SaeRuntimeSteer::new(
        sae,
        path,
        hook.parse()?,
        strategy,
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
    let cfg = model.model.config();
    let task = Task::load(&args.task, &model.tokenizer)?;
    let device = model.model.device();
    let granularity = match args.granularity {
        GranularityArg::Site => Granularity::Site,
        GranularityArg::Head => Granularity::Head,
    };
    let sites: Vec<HookPoint> = if args.sites.is_empty() {
        default_sites(cfg.n_layers, granularity)
    } else {
        args.sites
            .iter()
            .map(|s| HookPoint::parse_for(s, cfg.n_layers))
            .collect::<saescope::Result<_>>()?
    };
    let weights = ObjectiveWeights {
        effect: match args.effect {
            EffectArg::Logit => Effect::LogitDiff,
            EffectArg::Prob => Effect::ProbDiff,
        },
        margin: (args.margin > 0.0).then_some(args.margin),
        lambda_faith: args.lambda_faith,
        lambda_min: args.lambda_min,
    };
    let learn_cfg = LearnConfig {
        weights,
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
    let d = cfg.d_model as usize;
    let mut steer: Box<dyn Steer> = match args.method {
        Method::ActivationScaling => {
            let positions = if args.per_position {
                Some(task.common_length().ok_or_else(|| {
                    anyhow::anyhow!("--per-position needs prompts of one token length")
                })?)
            } else {
                None
            };
            Box::new(ActivationScaling::identity(
                sites,
                granularity,
                cfg.n_heads as usize,
                positions,
                device,
            )?)
        }
        Method::DynScalar => Box::new(DynScalar::identity(sites, d, device)?),
        Method::SteeringVector => Box::new(SteeringVector::zeros(sites, d, device)?),
        Method::MeanDifference => {
            let vectors = sites
                .iter()
                .map(|&s| difference_of_means(&model, &task, s, args.mean_centre))
                .collect::<saescope::Result<Vec<_>>>()?;
            Box::new(SteeringVector::new(
                sites,
                tch::Tensor::stack(&vectors, 0),
                args.scale,
            )?)
        }
    };
    if !matches!(args.method, Method::MeanDifference) {
        learn(&model, &task, steer.as_mut(), &learn_cfg, &mut report)?;
    }
    save_steers(&args.out, Some(&model.spec), &[steer.as_ref()])?;
    println!("wrote {}", args.out.display());
    if let Some(ActivationScalingView { rows, cols, values }) =
        scaling_view(steer.as_ref(), cfg.n_layers)?
    {
        let svg = heatmap_svg(&values, &rows, &cols, "learned scalars (1 = unchanged)")?;
        let path = args.out.with_extension("svg");
        saescope::atomic::write_atomic(&path, svg.as_bytes())?;
        println!("heatmap of the scalars: {}", path.display());
    }
    Ok(())
}

struct ActivationScalingView {
    rows: Vec<String>,
    cols: Vec<String>,
    values: Vec<Vec<f64>>,
}

/// Activation-scaling scalars as a layer × (site or head, position) grid.
fn scaling_view(
    steer: &dyn Steer,
    n_layers: usize,
) -> anyhow::Result<Option<ActivationScalingView>> {
    let (spec, tensors) = steer.to_spec()?;
    let saescope::steer::SteerSpec::ActivationScaling { sites, .. } = spec else {
        return Ok(None);
    };
    let scalars = &tensors[0].1; // [n_sites, heads, positions]
    let size = scalars.size();
    let flat: Vec<f32> = Vec::try_from(&scalars.to_kind(tch::Kind::Float).reshape([-1]))?;
    let mut rows: Vec<String> = Vec::new();
    let mut cols: Vec<String> = Vec::new();
    let mut grid: std::collections::BTreeMap<(usize, String), Vec<f64>> = Default::default();
    for (i, site) in sites.iter().enumerate() {
        let hook: HookPoint = site.parse()?;
        let layer = hook.layer().unwrap_or(0);
        let kind = site.split('.').skip(2).collect::<Vec<_>>().join(".");
        for h in 0..size[1] {
            for p in 0..size[2] {
                let col = match (size[1] > 1, size[2] > 1) {
                    (true, true) => format!("{kind} h{h} p{p}"),
                    (true, false) => format!("{kind} h{h}"),
                    (false, true) => format!("{kind} p{p}"),
                    (false, false) => kind.clone(),
                };
                if !cols.contains(&col) {
                    cols.push(col.clone());
                }
                let v = flat[(i as i64 * size[1] * size[2] + h * size[2] + p) as usize] as f64;
                grid.entry((layer, col)).or_default().push(v);
            }
        }
    }
    let mut values = Vec::new();
    for layer in 0..n_layers {
        rows.push(format!("L{layer}"));
        values.push(
            cols.iter()
                .map(|c| {
                    grid.get(&(layer, c.clone()))
                        .and_then(|v| v.first().copied())
                        .unwrap_or(1.0)
                })
                .collect(),
        );
    }
    Ok(Some(ActivationScalingView { rows, cols, values }))
}
