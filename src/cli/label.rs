//! `saescope label`: builds a feature dictionary (MI explanations, baselines,
//! contexts, densities, optional labels) and writes it with its browser.

use std::path::PathBuf;

use clap::Args;
use saescope::data::corpus::Corpus;
use saescope::data::Store;
use saescope::label::llm::{local_label, HttpLabeller, LabelFn};
use saescope::label::{
    build_dictionary, save_dictionary, ActivationInput, CheckpointConfig, Directions, LabelConfig,
    LabelInputs, LabelProgress, MiConfig, StatsConfig, Vocabulary, VocabularyConfig,
};

use super::{token_bar, SaeOnCorpusArgs};

#[derive(Args)]
pub struct LabelArgs {
    /// The corpus is read for the statistics pass (unless --store) and the
    /// vocabulary (unless one is given).
    #[command(flatten)]
    target: SaeOnCorpusArgs,
    /// Read activations and token ids from this harvested store instead of running the model.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Output folder of the dictionary.
    #[arg(long)]
    out: PathBuf,
    /// A saved vocabulary (vocabulary.json of an earlier dictionary).
    #[arg(long, conflicts_with = "vocab_list")]
    vocab: Option<PathBuf>,
    /// A word list (`word [count]` per line) to build the vocabulary from.
    #[arg(long)]
    vocab_list: Option<PathBuf>,
    /// Corpus to count words in (default: --corpus).
    #[arg(long)]
    vocab_from: Option<String>,
    #[arg(long, default_value_t = 5000)]
    vocab_size: usize,
    #[arg(long, default_value_t = 5)]
    min_count: u64,
    /// Keep plural forms apart instead of folding them into the singular.
    #[arg(long)]
    no_stem: bool,
    /// Temperature of p(w|c).
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Temperature of p(c|w).
    #[arg(long, default_value_t = 1.0)]
    beta: f64,
    /// Explanation words per feature.
    #[arg(long, default_value_t = 20)]
    top_words: usize,
    /// Feature directions: decoder or encoder.
    #[arg(long, default_value = "decoder")]
    directions: String,
    /// Tokens in the statistics pass.
    #[arg(long, default_value_t = 1_000_000)]
    tokens: u64,
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Top-activating contexts kept per feature.
    #[arg(long, default_value_t = 20)]
    top_examples: usize,
    /// Logit-lens tokens kept each way.
    #[arg(long, default_value_t = 10)]
    logit_lens_tokens: usize,
    /// One-line labels by a language model: `--labels` alone or `--labels local`
    /// uses the loaded model; `--labels URL` an OpenAI-compatible endpoint such
    /// as http://localhost:8000/v1.
    #[arg(long, num_args = 0..=1, default_missing_value = "local")]
    labels: Option<String>,
    /// Model name sent to the labelling endpoint.
    #[arg(long, default_value = "gpt-4o-mini")]
    label_model: String,
    /// Environment variable holding the endpoint's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// Label only the first N features.
    #[arg(long)]
    label_limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint the statistics pass every N tokens (into OUT/.checkpoint).
    #[arg(long, default_value_t = 250_000)]
    checkpoint_every: u64,
    /// Continue a killed run from its checkpoint (same settings).
    #[arg(long)]
    resume: bool,
}

pub fn run(args: LabelArgs) -> anyhow::Result<()> {
    let (model, sae, hook) = args.target.load()?;
    let target = &args.target;
    let vocab_config = VocabularyConfig {
        size: args.vocab_size,
        min_count: args.min_count,
        stem: !args.no_stem,
    };
    let vocabulary = match (&args.vocab, &args.vocab_list) {
        (Some(path), _) => Vocabulary::load(path)?,
        (None, Some(list)) => Vocabulary::from_word_list(list, vocab_config)?,
        (None, None) => {
            let spec = args.vocab_from.as_deref().unwrap_or(&target.corpus);
            eprintln!("counting words in {spec}");
            Vocabulary::from_corpus(&Corpus::open(spec, &target.text_field)?, vocab_config)?
        }
    };
    eprintln!(
        "vocabulary: {} words from {}",
        vocabulary.len(),
        vocabulary.source
    );
    let cfg = LabelConfig {
        mi: MiConfig {
            alpha: args.alpha,
            beta: args.beta,
            top_words: args.top_words,
        },
        directions: Directions::parse(&args.directions)?,
        stats: StatsConfig {
            top_examples: args.top_examples,
            seed: args.seed,
            ..StatsConfig::default()
        },
        logit_lens_tokens: args.logit_lens_tokens,
        max_tokens: args.tokens,
        label_limit: args.label_limit.unwrap_or(usize::MAX),
        checkpoint: Some(CheckpointConfig {
            dir: args.out.join(".checkpoint"),
            every_tokens: args.checkpoint_every.max(1),
            resume: args.resume,
        }),
        ..LabelConfig::default()
    };
    let corpus;
    let store;
    let input = match &args.store {
        Some(dir) => {
            store = Store::open(dir)?;
            ActivationInput::Store(&store)
        }
        None => {
            corpus = Corpus::open(&target.corpus, &target.text_field)?;
            ActivationInput::Corpus {
                corpus: &corpus,
                context: args.context,
                windows_per_batch: args.batch,
            }
        }
    };
    let http;
    let mut local = |prompt: &str| local_label(&model, prompt);
    let mut remote;
    let labeller: Option<&mut LabelFn> = match args.labels.as_deref() {
        None => None,
        Some("local") => Some(&mut local),
        Some(url) => {
            http = HttpLabeller {
                url: url.to_string(),
                model: args.label_model.clone(),
                api_key: std::env::var(&args.api_key_env).ok(),
                timeout: std::time::Duration::from_secs(60),
            };
            remote = |prompt: &str| http.complete(prompt);
            Some(&mut remote)
        }
    };

    let bar = token_bar(false, "  {msg}")?;
    let pause = super::progress::test_pause();
    let mut progress = |p: LabelProgress| match p {
        LabelProgress::Stage(name) => bar.set_message(name),
        LabelProgress::Tokens { done, total } => {
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
            bar.set_length(total);
            bar.set_position(done.min(total));
        }
        LabelProgress::Labelled { done, total } => {
            bar.set_message(format!("labelled {done}/{total} features"));
        }
    };
    let inputs = LabelInputs {
        model: &model,
        sae: &sae,
        sae_name: target.sae.display().to_string(),
        hook,
        vocabulary: &vocabulary,
        activations: input,
    };
    let built = build_dictionary(inputs, &cfg, labeller, &mut progress)?;
    bar.finish_and_clear();
    save_dictionary(&args.out, &built.entries, &built.meta, &vocabulary)?;
    if let Some(c) = &cfg.checkpoint {
        saescope::label::checkpoint::remove(&c.dir)?;
    }
    let m = &built.meta;
    println!(
        "{} features of {} at {} labelled from {} tokens in {:.1} s on {}",
        m.d_sae, m.model, m.hook, m.tokens, m.seconds, m.hardware
    );
    println!(
        "diversity: MI {:.4} · logit-lens baseline {:.4} · top-token baseline {:.4}",
        m.diversity_mi.diversity,
        m.diversity_logit_lens.diversity,
        m.diversity_top_tokens.diversity
    );
    println!(
        "wrote {}/features.jsonl, dictionary.json, vocabulary.json, feature_density.svg and index.html",
        args.out.display()
    );
    Ok(())
}
