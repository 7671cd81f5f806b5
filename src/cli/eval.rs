//! `saescope eval sae`: an SAE's reconstruction, sparsity and loss recovered
//! on held-out text, as a JSON report, a table and a density histogram.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use saescope::data::corpus::Corpus;
use saescope::eval::{evaluate_sae, EvalObserver, SaeEvalConfig, SaeEvalReport};
use saescope::io::atomic::write_atomic;

use super::{ModelArgs, SaeOnCorpusArgs};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Reconstruction, sparsity and CE loss recovered of an SAE spliced into the model.
    Sae(EvalSaeArgs),
    /// Effectiveness, faithfulness and minimality of interventions on a task.
    Steer(EvalSteerArgs),
}

#[derive(Args)]
pub struct EvalSteerArgs {
    /// Intervention file(s), applied together in order.
    #[arg(long = "intervention", required = true)]
    interventions: Vec<PathBuf>,
    /// Task JSONL (prompt, target, foil), e.g. eval/tasks/country_capital/test.jsonl.
    #[arg(long)]
    task: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// A component counts as touched when |θ − identity| exceeds this.
    #[arg(long, default_value_t = 1e-2)]
    eps: f64,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct EvalSaeArgs {
    #[command(flatten)]
    target: SaeOnCorpusArgs,
    /// Tokens to evaluate on.
    #[arg(long, default_value_t = 16384)]
    tokens: u64,
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Corpus windows to skip first (e.g. the ones the SAE was trained on).
    #[arg(long, default_value_t = 0)]
    skip_windows: u64,
    /// Write the JSON report here (and the density histogram beside it as .svg).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

struct Bar(ProgressBar);

impl EvalObserver for Bar {
    fn on_batch(&mut self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Sae(args) => eval_sae(args),
        EvalCommand::Steer(args) => eval_steer(args),
    }
}

pub fn print_table(r: &SaeEvalReport) {
    let m = &r.reconstruction;
    let rows: [(&str, String); 13] = [
        ("tokens", format!("{}", m.tokens)),
        ("FVU", format!("{:.4}", m.fvu)),
        ("explained variance", format!("{:.4}", m.explained_variance)),
        ("MSE", format!("{:.5}", m.mse)),
        ("L0", format!("{:.2}", m.l0)),
        ("cosine similarity", format!("{:.4}", m.cosine_similarity)),
        ("dead fraction", format!("{:.2}%", 100.0 * m.dead_fraction)),
        (
            "dense fraction (>10%)",
            format!("{:.2}%", 100.0 * m.dense_fraction),
        ),
        ("CE loss, clean", format!("{:.4}", r.ce_loss_clean)),
        ("CE loss, SAE spliced", format!("{:.4}", r.ce_loss_with_sae)),
        (
            "CE loss, zero ablation",
            format!("{:.4}", r.ce_loss_with_ablation),
        ),
        ("ce_loss_score", format!("{:.4}", r.ce_loss_score)),
        (
            "KL to clean, SAE spliced",
            format!("{:.4}", r.kl_div_with_sae),
        ),
    ];
    println!(
        "SAE {} ({} → {}) at {} of {}",
        r.architecture, r.d_in, r.d_sae, r.hook, r.model
    );
    for (name, value) in rows {
        println!("  {name:<26} {value:>12}");
    }
}

fn eval_sae(args: EvalSaeArgs) -> anyhow::Result<()> {
    let (model, sae, hook) = args.target.load()?;
    let corpus = Corpus::open(&args.target.corpus, &args.target.text_field)?;
    let cfg = SaeEvalConfig {
        tokens: args.tokens,
        context: args.context,
        batch: args.batch,
        skip_windows: args.skip_windows,
    };
    let bar = super::token_bar(args.json, "")?;
    let mut observer = Bar(bar);
    let report = evaluate_sae(&model, &sae, hook, &corpus, &cfg, &mut observer)?;
    observer.0.finish_and_clear();
    if let Some(out) = &args.out {
        report.save(out)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
        if let Some(out) = &args.out {
            println!(
                "report: {}  density histogram: {}",
                out.display(),
                out.with_extension("svg").display()
            );
        }
    }
    Ok(())
}

fn eval_steer(args: EvalSteerArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let task = saescope::steer::Task::load(&args.task, &model.tokenizer)?;
    let n_layers = model.model.config().n_layers;
    let mut steers =
        saescope::steer::load_steer_files(&args.interventions, n_layers, model.model.device())?;
    let r = saescope::steer::evaluate_steers(&model, &task, &mut steers, args.eps)?;
    if let Some(out) = &args.out {
        write_atomic(out, serde_json::to_string_pretty(&r)?.as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!("{} prompts of {}", r.prompts, args.task.display());
    let rows = [
        (
            "effectiveness: flipped to target",
            format!(
                "{:.1}% (clean {:.1}%)",
                100.0 * r.flipped_fraction,
                100.0 * r.clean_target_fraction
            ),
        ),
        (
            "  mean logit diff target-foil",
            format!(
                "{:+.3} (clean {:+.3})",
                r.mean_logit_diff, r.mean_logit_diff_clean
            ),
        ),
        (
            "  mean prob diff target-foil",
            format!(
                "{:+.4} (clean {:+.4})",
                r.mean_prob_diff, r.mean_prob_diff_clean
            ),
        ),
        ("faithfulness: KL, other tokens", format!("{:.4}", r.kl)),
        ("  probability mass moved", format!("{:.4}", r.mass_moved)),
        ("minimality: L1 from identity", format!("{:.3}", r.l1)),
        (
            "  components touched",
            format!(
                "{} of {} ({:.1}%, |θ−id| > {})",
                r.components_changed,
                r.components_total,
                100.0 * r.fraction_changed,
                r.eps
            ),
        ),
    ];
    for (name, value) in rows {
        println!("  {name:<34} {value}");
    }
    Ok(())
}
