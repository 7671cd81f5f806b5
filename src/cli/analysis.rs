//! `saescope rsa`, `saescope attention-ratio` and `saescope probe` (prompt
//! sets with marked spans) and `saescope patch` (clean/corrupted pairs): the
//! analyses of `saescope::analysis`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use saescope::analysis::attention_ratio::{attention_ratio, RatioSpans};
use saescope::analysis::patch_sweeps::{run_sweeps, Method, Sweep};
use saescope::analysis::patching::{Direction, PatchTask};
use saescope::analysis::patchscope::{fit_map_on_corpus, Mapping, Target, TOKEN_IDENTITY_PROMPT};
use saescope::analysis::patchscope_eval::{evaluate_next_token, NextTokenEvalConfig};
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
    super::progress::bar(
        false,
        "{elapsed_precise} {wide_bar} {pos}/{len} prompts  {per_sec}  {msg}",
        "[{elapsed_precise}] {pos}/{len} prompts  {per_sec}  ETA {eta}  {msg}",
    )
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
    /// Patch heads only at these positions (e.g. `7,20`; default: all).
    #[arg(long, value_delimiter = ',')]
    head_positions: Vec<usize>,
    #[arg(long)]
    out: PathBuf,
}

pub fn run_patch_cmd(args: PatchArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let task = PatchTask::load(&args.task, &model.tokenizer)?;
    let bar = super::progress::bar(
        false,
        "{elapsed_precise} {wide_bar} {pos}/{len} cells  {per_sec}  {msg}",
        "[{elapsed_precise}] {pos}/{len} cells  {per_sec}  ETA {eta}  {msg}",
    )?;
    let name = args.task.display().to_string();
    let report = run_sweeps(
        &model,
        &task,
        &name,
        &args.sweeps,
        args.direction,
        args.method,
        (!args.head_positions.is_empty()).then_some(args.head_positions.as_slice()),
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

#[derive(Subcommand)]
pub enum PatchscopeCommand {
    /// Decode one hidden state: the patched target's top tokens, or a generation.
    Run(PatchscopeRunArgs),
    /// Next-token Precision@1 and surprisal by layer against the logit lens
    /// and an affine baseline, over held-out corpus positions.
    Eval(PatchscopeEvalArgs),
    /// Fit an affine map between two layers (of one model or two) by least
    /// squares on corpus positions, for `run --map`.
    FitMap(PatchscopeFitMapArgs),
}

#[derive(Args)]
pub struct PatchscopeFitMapArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The model mapped into (default: the source model).
    #[arg(long)]
    target_model: Option<String>,
    #[arg(long)]
    source_layer: usize,
    #[arg(long)]
    target_layer: usize,
    #[arg(long, default_value = saescope::data::DEFAULT_CORPUS)]
    corpus: String,
    #[arg(long, default_value = "text")]
    text_field: String,
    #[arg(long, default_value_t = 4000)]
    positions: usize,
    #[arg(long, default_value_t = 64)]
    context: usize,
    /// Where to write the map (safetensors `weight`, `bias`).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct PatchscopeRunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    source_prompt: String,
    /// Source layer ℓ (its `hook_resid_post`).
    #[arg(long)]
    source_layer: usize,
    /// Source position i (negative counts from the end; BOS is position 0).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    source_position: i64,
    /// Target prompt (default: the token-identity prompt).
    #[arg(long)]
    target_prompt: Option<String>,
    /// Target model M* (default: the source model).
    #[arg(long)]
    target_model: Option<String>,
    /// Target layer ℓ* (default: ℓ).
    #[arg(long)]
    target_layer: Option<usize>,
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    target_position: i64,
    /// An affine map f (safetensors `weight [d_target, d_source]`, `bias`).
    #[arg(long)]
    map: Option<PathBuf>,
    /// Generate this many tokens from the patched target instead of its top tokens.
    #[arg(long, default_value_t = 0)]
    generate: usize,
    #[arg(long, default_value_t = 5)]
    top: i64,
}

#[derive(Args)]
pub struct PatchscopeEvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = saescope::data::DEFAULT_CORPUS)]
    corpus: String,
    #[arg(long, default_value = "text")]
    text_field: String,
    #[arg(long, default_value_t = 1000)]
    positions: usize,
    #[arg(long, default_value_t = 4000)]
    train_positions: usize,
    #[arg(long, default_value_t = 64)]
    context: usize,
    /// Source layers (default: all).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    #[arg(long)]
    out: PathBuf,
}

pub fn run_patchscope_cmd(cmd: PatchscopeCommand) -> anyhow::Result<()> {
    match cmd {
        PatchscopeCommand::Run(args) => patchscope_run(args),
        PatchscopeCommand::Eval(args) => patchscope_eval(args),
        PatchscopeCommand::FitMap(args) => patchscope_fit_map(args),
    }
}

/// The model `spec` names, on the device and in the dtype of `like`.
fn other_model(like: &ModelArgs, spec: &Option<String>) -> anyhow::Result<Option<LoadedModel>> {
    spec.as_ref()
        .map(|spec| {
            ModelArgs {
                model: spec.clone(),
                ..like.clone()
            }
            .load()
        })
        .transpose()
}

/// `position` from the end when negative.
fn index(position: i64, len: usize) -> anyhow::Result<usize> {
    let i = if position < 0 {
        len as i64 + position
    } else {
        position
    };
    anyhow::ensure!(
        (0..len as i64).contains(&i),
        "position {position} is outside a prompt of {len} tokens"
    );
    Ok(i as usize)
}

fn patchscope_run(args: PatchscopeRunArgs) -> anyhow::Result<()> {
    let source = args.model.load()?;
    let target_model = other_model(&args.model, &args.target_model)?;
    let target_model = target_model.as_ref().unwrap_or(&source);
    let src_ids = source.tokenizer.encode(&args.source_prompt, true)?;
    let i = index(args.source_position, src_ids.len())?;
    let n_layers = source.model.config().n_layers;
    anyhow::ensure!(
        args.source_layer < n_layers,
        "--source-layer must be below {n_layers}"
    );
    let hook = HookPoint::resid_post(args.source_layer);
    let tokens = tch::Tensor::from_slice(&src_ids)
        .view([1, -1])
        .to_device(source.model.device());
    let h = source
        .model
        .run_with_cache(
            &saescope::model::ForwardInput::tokens(&tokens),
            &[hook],
            None,
        )?
        .take(hook)?
        .select(0, 0)
        .select(0, i as i64)
        .unsqueeze(0);
    let mapping = match &args.map {
        Some(path) => Mapping::load(path)?,
        None => Mapping::Identity,
    };
    let h = mapping.apply(&h)?;
    let prompt = args
        .target_prompt
        .as_deref()
        .unwrap_or(TOKEN_IDENTITY_PROMPT);
    let ids = target_model.tokenizer.encode(prompt, true)?;
    let target = Target {
        model: target_model,
        position: index(args.target_position, ids.len())?,
        ids,
        layer: args.target_layer.unwrap_or(args.source_layer),
    };
    println!(
        "source {:?} at layer {}, position {i} ({:?})",
        args.source_prompt,
        args.source_layer,
        source.tokenizer.token_text(src_ids[i])
    );
    if args.generate > 0 {
        let out = target.generate_patched(&h.squeeze_dim(0), args.generate)?;
        println!("{}", target_model.tokenizer.decode(&out)?);
        return Ok(());
    }
    let probs = target.patched_logits(&h, 1)?.softmax(-1, tch::Kind::Float);
    let (p, idx) = probs.select(0, 0).topk(args.top, 0, true, true);
    for k in 0..p.size()[0] {
        let id = idx.int64_value(&[k]);
        println!(
            "{:>8.4}  {:?}",
            p.double_value(&[k]),
            target_model.tokenizer.token_text(id)
        );
    }
    Ok(())
}

fn patchscope_fit_map(args: PatchscopeFitMapArgs) -> anyhow::Result<()> {
    let source = args.model.load()?;
    let target = other_model(&args.model, &args.target_model)?;
    let corpus = saescope::data::Corpus::open(&args.corpus, &args.text_field)?;
    let map = fit_map_on_corpus(
        &source,
        target.as_ref().unwrap_or(&source),
        (args.source_layer, args.target_layer),
        &corpus,
        args.positions,
        args.context,
    )?;
    map.save(&args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn patchscope_eval(args: PatchscopeEvalArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let corpus = saescope::data::Corpus::open(&args.corpus, &args.text_field)?;
    let n_layers = model.model.config().n_layers;
    let cfg = NextTokenEvalConfig {
        positions: args.positions,
        train_positions: args.train_positions,
        context: args.context,
        layers: if args.layers.is_empty() {
            (0..n_layers).collect()
        } else {
            args.layers
        },
        chunk: 128,
    };
    let bar = prompt_bar()?;
    bar.set_message("layers");
    let report = evaluate_next_token(&model, &corpus, &args.corpus, &cfg, &mut |d, t| {
        bar.set_length(t as u64);
        bar.set_position(d as u64);
    })?;
    bar.finish_and_clear();
    println!("layer  patchscope P@1 / surprisal   logit lens          affine");
    for l in &report.layers {
        println!(
            "{:>5}  {:>6.3} / {:>6.2}            {:>6.3} / {:>6.2}     {:>6.3} / {:>6.2}",
            l.layer,
            l.patchscope.precision_at_1,
            l.patchscope.surprisal,
            l.logit_lens.precision_at_1,
            l.logit_lens.surprisal,
            l.affine.precision_at_1,
            l.affine.surprisal
        );
    }
    report_paths(&report.save(&args.out)?);
    Ok(())
}
