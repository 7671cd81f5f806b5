//! `saescope rsa`, `saescope attention-ratio` and `saescope probe` (prompt
//! sets with marked spans) and `saescope patch` (clean/corrupted pairs): the
//! analyses of `saescope::analysis`.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use saescope::analysis::attention_ratio::{attention_ratio, RatioSpans};
use saescope::analysis::patch_sweeps::{run_sweeps, Method, Sweep};
use saescope::analysis::patching::{Direction, PatchTask};
use saescope::analysis::probe::{run_probes, ProbeConfig, ProbeRequest, ProbeTarget};
use saescope::analysis::prompts::PromptSet;
use saescope::analysis::rsa::{run_rsa, Dissimilarity, HypothesisSource, RsaConfig, RsaRequest};
use saescope::analysis::runner::Pooling;
use saescope::analysis::stats::RankCorrelation;
use saescope::hooks::HookPoint;
use saescope::model::LoadedModel;

use super::ModelArgs;

/// A prompt set, the model, and where to write.
#[derive(Args)]
pub struct PromptSetArgs {
    /// Prompt-set JSONL (text, spans, condition, group, label, value, target).
    #[arg(long)]
    prompts: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Output folder (JSON report and SVG figures).
    #[arg(long)]
    out: PathBuf,
}

/// Which activations are pooled.
#[derive(Args)]
pub struct PoolArgs {
    /// Hook points; `blocks.*.<site>` is the site in every block.
    #[arg(long = "hook", default_value = "blocks.*.hook_resid_post")]
    hooks: Vec<String>,
    /// The span whose tokens are pooled.
    #[arg(long, default_value = "query")]
    span: String,
    #[arg(long, value_enum, default_value = "mean")]
    pooling: Pooling,
    /// Only the prompts of this condition (default: all).
    #[arg(long)]
    condition: Option<String>,
}

#[derive(Args)]
pub struct RsaArgs {
    #[command(flatten)]
    set: PromptSetArgs,
    #[command(flatten)]
    pool: PoolArgs,
    /// `condition`, `label`, or a JSON n×n matrix file (repeat for several).
    #[arg(long = "hypothesis", default_value = "condition")]
    hypotheses: Vec<HypothesisSource>,
    #[arg(long, value_enum, default_value = "cosine")]
    dissimilarity: Dissimilarity,
    /// Z-score each dimension across the prompts first.
    #[arg(long)]
    zscore: bool,
    #[arg(long, value_enum, default_value = "spearman")]
    correlation: RankCorrelation,
    #[arg(long, default_value_t = 1000)]
    permutations: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct AttentionRatioArgs {
    #[command(flatten)]
    set: PromptSetArgs,
    #[arg(long, default_value = "query")]
    query: String,
    #[arg(long, default_value = "relevant")]
    relevant: String,
    #[arg(long, default_value = "irrelevant")]
    irrelevant: String,
    /// Attention per token of each span instead of its total.
    #[arg(long)]
    per_token: bool,
    /// Sign flips of the paired test between the first two conditions.
    #[arg(long, default_value_t = 10000)]
    permutations: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    set: PromptSetArgs,
    #[command(flatten)]
    pool: PoolArgs,
    /// What to decode: `label` (logistic, accuracy) or `value` (ridge, R²).
    #[arg(long, value_enum, default_value = "label")]
    target: ProbeTarget,
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// L2 weight on z-scored features.
    #[arg(long, default_value_t = 1.0)]
    l2: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A bar over prompts, with the condition being run as its message.
fn prompt_bar() -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template(
        "{elapsed_precise} {wide_bar} {pos}/{len} prompts  {per_sec}  {msg}",
    )?);
    Ok(bar)
}

impl PromptSetArgs {
    fn load(&self) -> anyhow::Result<(LoadedModel, PromptSet)> {
        let set = PromptSet::load(&self.prompts)?;
        Ok((self.model.load()?, set))
    }
}

fn hooks(names: &[String], model: &LoadedModel) -> anyhow::Result<Vec<HookPoint>> {
    let n_layers = model.model.config().n_layers;
    let mut out = Vec::new();
    for name in names {
        out.extend(HookPoint::expand(name, n_layers)?);
    }
    Ok(out)
}

fn report_paths(paths: &[PathBuf]) {
    for p in paths {
        println!("wrote {}", p.display());
    }
}

pub fn run_rsa_cmd(args: RsaArgs) -> anyhow::Result<()> {
    let (model, set) = args.set.load()?;
    let request = RsaRequest {
        hooks: hooks(&args.pool.hooks, &model)?,
        span: args.pool.span,
        pooling: args.pool.pooling,
        condition: args.pool.condition,
        hypotheses: args.hypotheses,
        cfg: RsaConfig {
            dissimilarity: args.dissimilarity,
            zscore: args.zscore,
            correlation: args.correlation,
            permutations: args.permutations,
            seed: args.seed,
        },
    };
    let bar = prompt_bar()?;
    let report = run_rsa(&model, &set, &request, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    for h in &report.hooks {
        let fits: Vec<String> = h
            .fits
            .iter()
            .map(|f| {
                format!(
                    "{} {:+.3} (p {:.4})",
                    f.hypothesis, f.correlation, f.p_value
                )
            })
            .collect();
        println!("{:<32} {}", h.hook, fits.join("  "));
    }
    if let Some(a) = report.accuracy {
        println!("accuracy on the targets: {:.1}%", 100.0 * a);
    }
    report_paths(&report.save(&args.set.out)?);
    Ok(())
}

pub fn run_attention_ratio_cmd(args: AttentionRatioArgs) -> anyhow::Result<()> {
    let (model, set) = args.set.load()?;
    let spans = RatioSpans {
        query: args.query,
        relevant: args.relevant,
        irrelevant: args.irrelevant,
        per_token: args.per_token,
    };
    let bar = prompt_bar()?;
    let report = attention_ratio(
        &model,
        &set,
        &spans,
        args.permutations,
        args.seed,
        &mut |c, done, total| {
            bar.set_message(c.to_string());
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    for c in &report.conditions {
        let acc = c
            .accuracy
            .map_or("-".into(), |a| format!("{:.1}%", 100.0 * a));
        println!(
            "{:<16} {} prompts  mean ratio {:.3}  accuracy {acc}",
            c.condition, c.prompts, c.mean
        );
    }
    if let Some(p) = &report.paired {
        println!(
            "{} → {}: mean Δ log ratio {:+.3} over {} groups (t {:.2}, p {:.4})",
            p.before, p.after, p.overall.mean_difference, p.overall.n, p.overall.t, p.overall.p
        );
    }
    report_paths(&report.save(&args.set.out)?);
    Ok(())
}

pub fn run_probe_cmd(args: ProbeArgs) -> anyhow::Result<()> {
    let (model, set) = args.set.load()?;
    let request = ProbeRequest {
        hooks: hooks(&args.pool.hooks, &model)?,
        span: args.pool.span,
        pooling: args.pool.pooling,
        condition: args.pool.condition,
        target: args.target,
        cfg: ProbeConfig {
            folds: args.folds,
            l2: args.l2,
            seed: args.seed,
        },
    };
    let bar = prompt_bar()?;
    let report = run_probes(&model, &set, &request, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    for h in &report.hooks {
        println!(
            "{:<32} {} {:.3}  control {:.3}  selectivity {:+.3}",
            h.hook, report.metric, h.score.score, h.score.control, h.score.selectivity
        );
    }
    report_paths(&report.save(&args.set.out)?);
    Ok(())
}

#[derive(Args)]
pub struct PatchArgs {
    /// Task JSONL: `clean`, `corrupted` (same token length), `answer`, `wrong`.
    #[arg(long)]
    task: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Sweeps to run (repeat): resid_pre, attn_out, mlp_out, attn_out_layer,
    /// mlp_out_layer, heads.
    #[arg(long = "sweep", value_enum, default_values = ["resid_pre", "attn_out_layer", "mlp_out_layer", "heads"])]
    sweeps: Vec<Sweep>,
    #[arg(long, value_enum, default_value = "denoise")]
    direction: Direction,
    #[arg(long, value_enum, default_value = "both")]
    method: Method,
    #[arg(long)]
    out: PathBuf,
}

pub fn run_patch_cmd(args: PatchArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let task = PatchTask::load(&args.task, &model.tokenizer)?;
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template(
        "{elapsed_precise} {wide_bar} {pos}/{len} cells  {per_sec}  {msg}",
    )?);
    let name = args.task.display().to_string();
    let report = run_sweeps(
        &model,
        &task,
        &name,
        &args.sweeps,
        args.direction,
        args.method,
        &mut |sweep, done, total| {
            bar.set_message(format!("{sweep:?}"));
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    if let Some(b) = report.baselines {
        println!(
            "{} pairs: mean logit difference clean {:+.3}, corrupted {:+.3}",
            report.pairs, b.clean, b.corrupted
        );
    }
    for s in &report.sweeps {
        let time = |t: Option<f64>| t.map_or("-".into(), |t| format!("{t:.1} s"));
        let corr = s.correlation.map_or("-".into(), |r| format!("{r:.3}"));
        println!(
            "{:<14} exact {:>8}  attribution {:>8}  correlation {corr}",
            format!("{:?}", s.sweep),
            time(s.exact_seconds),
            time(s.attribution_seconds)
        );
    }
    report_paths(&report.save(&args.out)?);
    Ok(())
}
