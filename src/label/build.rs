//! Builds a feature dictionary: MI explanations over the vocabulary, the
//! frequency-biased baselines, the logit lens, one streaming corpus (or
//! store) pass for contexts and densities, optional model-written labels,
//! and the diversity of each kind of explanation.

use std::collections::HashMap;
use std::time::Instant;

use tch::{Kind, Tensor};

use super::checkpoint::{self, CheckpointConfig};
use super::llm::{clean_label, label_prompt, LabelFn};
use super::stats::{
    hist_bin_centre, quantile_bands, FeatureStats, FeatureStatsAccumulator, RawExample, StatsConfig,
};
use super::vocabulary::{normalise, Vocabulary};
use crate::data::{Corpus, Store, StreamingSource};
use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::label::export::dictionary::{
    ActivationExample, DictionaryMeta, ExplanationWord, FeatureEntry, QuantileExamples,
};
use crate::label::stats::diversity::diversity;
use crate::label::stats::logit_lens::{logit_lens, LogitLens};
use crate::label::stats::mi::{explain, explain_bytes, feature_directions, Directions, MiConfig};
use crate::model::LoadedModel;
use crate::sae::Sae;

/// Feature activations encoded at once: `[rows, d_sae]` f32 stays under
/// glibc's 32 MB mmap threshold.
const ENCODE_ELEMENTS: usize = 7 << 20;

/// Where the activations of the corpus pass come from.
pub enum ActivationInput<'a> {
    /// Run the model over a corpus, `windows_per_batch` windows of `context` tokens at a time.
    Corpus {
        corpus: &'a Corpus,
        context: usize,
        windows_per_batch: usize,
    },
    /// A harvested store of the SAE's hook (its shards hold token ids).
    Store(&'a Store),
}

/// Everything that shapes a dictionary.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelConfig {
    pub mi: MiConfig,
    pub directions: Directions,
    pub stats: StatsConfig,
    /// Logit-lens tokens kept each way.
    pub logit_lens_tokens: usize,
    /// Stop the corpus pass after about this many tokens.
    pub max_tokens: u64,
    /// Quantile bands of the sampled activations, and examples per band.
    pub quantile_bands: usize,
    pub examples_per_band: usize,
    /// Features labelled by a language model (the first ones), when a labeller is given.
    pub label_limit: usize,
    /// Checkpoint the corpus pass (and resume from a checkpoint).
    pub checkpoint: Option<CheckpointConfig>,
}

impl Default for LabelConfig {
    fn default() -> Self {
        LabelConfig {
            mi: MiConfig::default(),
            directions: Directions::Decoder,
            stats: StatsConfig::default(),
            logit_lens_tokens: 10,
            max_tokens: 1_000_000,
            quantile_bands: 4,
            examples_per_band: 3,
            label_limit: usize::MAX,
            checkpoint: None,
        }
    }
}

/// Progress reports.
pub enum LabelProgress {
    Stage(&'static str),
    /// Corpus tokens processed so far, of at most `total`.
    Tokens {
        done: u64,
        total: u64,
    },
    Labelled {
        done: usize,
        total: usize,
    },
}

/// A built dictionary, ready to write.
pub struct BuiltDictionary {
    pub entries: Vec<FeatureEntry>,
    pub meta: DictionaryMeta,
}

/// What a dictionary is built from.
pub struct LabelInputs<'a> {
    pub model: &'a LoadedModel,
    pub sae: &'a Sae,
    /// How the SAE is named in the dictionary (its folder).
    pub sae_name: String,
    pub hook: HookPoint,
    pub vocabulary: &'a Vocabulary,
    pub activations: ActivationInput<'a>,
}

/// Builds the dictionary of an SAE on a hook of a model.
pub fn build_dictionary(
    inputs: LabelInputs,
    cfg: &LabelConfig,
    mut labeller: Option<&mut LabelFn>,
    progress: &mut dyn FnMut(LabelProgress),
) -> Result<BuiltDictionary> {
    let LabelInputs {
        model,
        sae,
        sae_name,
        hook,
        vocabulary,
        activations: input,
    } = inputs;
    let started = Instant::now();
    let width = model.model.config().hook_width(hook)?;
    if width != sae.cfg.d_in {
        return Err(Error::InvalidArgument(format!(
            "the SAE reads {}-wide activations but {hook} of {} is {width} wide",
            sae.cfg.d_in, model.spec
        )));
    }
    let d_sae = sae.cfg.d_sae;
    // Known before any work: the vocabulary × features of the explanations.
    crate::machine::memory::ensure_fits(
        explain_bytes(
            d_sae,
            vocabulary.len(),
            model.model.config().d_model as usize,
        ),
        || {
            format!(
                "explaining {d_sae} features over a vocabulary of {} words",
                vocabulary.len()
            )
        },
    )?;

    progress(LabelProgress::Stage("MI explanations"));
    let words = vocabulary.embed(model)?;
    let features = feature_directions(sae, model, cfg.directions)?;
    let explanations = explain(&features, &words, &vocabulary.words, cfg.mi)?;

    progress(LabelProgress::Stage("logit lens"));
    // The baseline's words come from the same ranking, deep enough to give
    // as many distinct words as the MI explanations have.
    let lens = logit_lens(
        &sae.weights.w_dec,
        model.model.unembed_weight(),
        cfg.logit_lens_tokens.max(2 * cfg.mi.top_words),
    )?;

    let source_name = input_name(&input);
    // What must match for a checkpoint to be resumed.
    let fingerprint = format!(
        "sae {sae_name}, hook {hook}, input {source_name} {}, {:?}, max tokens {}",
        match &input {
            ActivationInput::Corpus {
                context,
                windows_per_batch,
                ..
            } => format!("context {context} batch {windows_per_batch}"),
            ActivationInput::Store(_) => String::new(),
        },
        cfg.stats,
        cfg.max_tokens
    );
    let (stats, tokens) = corpus_pass(model, sae, hook, input, cfg, &fingerprint, progress)?;

    let mut texts = TokenTexts::new(model);
    let mut entries: Vec<FeatureEntry> = Vec::with_capacity(d_sae);
    for (index, ((explanation, lens), stats)) in
        explanations.into_iter().zip(lens).zip(stats).enumerate()
    {
        entries.push(entry(
            index,
            model,
            hook,
            explanation,
            lens,
            stats,
            tokens,
            cfg,
            &mut texts,
        ));
    }

    if let Some(labeller) = labeller.as_mut() {
        let total = cfg.label_limit.min(entries.len());
        for (done, entry) in entries.iter_mut().take(total).enumerate() {
            let words: Vec<&str> = entry
                .explanation
                .iter()
                .take(10)
                .map(|w| w.word.as_str())
                .collect();
            entry.label = clean_label(&labeller(&label_prompt(&words))?);
            progress(LabelProgress::Labelled {
                done: done + 1,
                total,
            });
        }
    }

    let word_lists =
        |f: fn(&FeatureEntry) -> Vec<String>| entries.iter().map(f).collect::<Vec<_>>();
    let mi_words = word_lists(|e| e.explanation.iter().map(|w| w.word.clone()).collect());
    let lens_words = word_lists(|e| e.baseline_logit_lens.clone());
    let top_words = word_lists(|e| e.baseline_top_tokens.clone());
    let meta = DictionaryMeta {
        model: model.spec.clone(),
        hook: hook.to_string(),
        sae: sae_name,
        d_sae,
        corpus: source_name,
        tokens,
        directions: cfg.directions.name().to_string(),
        alpha: cfg.mi.alpha,
        beta: cfg.mi.beta,
        diversity_mi: diversity(vocabulary, mi_words.iter().map(Vec::as_slice)),
        diversity_logit_lens: diversity(vocabulary, lens_words.iter().map(Vec::as_slice)),
        diversity_top_tokens: diversity(vocabulary, top_words.iter().map(Vec::as_slice)),
        seconds: started.elapsed().as_secs_f64(),
        hardware: hardware(model),
    };
    Ok(BuiltDictionary { entries, meta })
}

fn input_name(input: &ActivationInput) -> String {
    match input {
        ActivationInput::Corpus { corpus, .. } => corpus.spec.clone(),
        ActivationInput::Store(store) => format!("store {}", store.dir().display()),
    }
}

/// One pass over the activations; returns each feature's statistics and
/// the number of tokens seen.
fn corpus_pass(
    model: &LoadedModel,
    sae: &Sae,
    hook: HookPoint,
    input: ActivationInput,
    cfg: &LabelConfig,
    fingerprint: &str,
    progress: &mut dyn FnMut(LabelProgress),
) -> Result<(Vec<FeatureStats>, u64)> {
    progress(LabelProgress::Stage("corpus pass"));
    let d_sae = sae.cfg.d_sae;
    let mut acc = match &cfg.checkpoint {
        Some(c) if c.resume => FeatureStatsAccumulator::from_state(
            d_sae,
            cfg.stats,
            checkpoint::load(&c.dir, fingerprint)?,
        )?,
        _ => FeatureStatsAccumulator::new(d_sae, cfg.stats),
    };
    // Batches hold whole windows, so a checkpoint falls on a window boundary.
    let resume_rows = acc.rows_seen();
    let mut saved_at = resume_rows;
    let sae_device = sae.device();
    // Rows of `acts` are whole windows of `per_window` rows. They are encoded
    // a few windows at a time: a `[rows, d_sae]` block under glibc's 32 MB
    // mmap threshold is reused from the heap instead of being page-faulted
    // in afresh for every batch.
    let mut add = |acc: &mut FeatureStatsAccumulator,
                   acts: &Tensor,
                   tokens: &[i32],
                   per_window: usize|
     -> Result<bool> {
        let rows_per_group = (ENCODE_ELEMENTS / d_sae / per_window).max(1) * per_window;
        for first in (0..tokens.len()).step_by(rows_per_group) {
            let len = rows_per_group.min(tokens.len() - first);
            let group = acts
                .f_narrow(0, first as i64, len as i64)?
                .f_to_device(sae_device)?
                .f_to_kind(Kind::Float)?;
            let feature_acts = tch::no_grad(|| sae.encode(&group))?;
            let starts: Vec<usize> = (0..len).step_by(per_window).collect();
            acc.add(&feature_acts, &tokens[first..first + len], &starts)?;
        }
        let done = acc.rows_seen();
        if let Some(c) = &cfg.checkpoint {
            if done - saved_at >= c.every_tokens && done < cfg.max_tokens {
                checkpoint::save(&c.dir, &acc.state(), fingerprint)?;
                saved_at = done;
            }
        }
        progress(LabelProgress::Tokens {
            done,
            total: cfg.max_tokens,
        });
        Ok(done < cfg.max_tokens)
    };
    match input {
        ActivationInput::Corpus {
            corpus,
            context,
            windows_per_batch,
        } => {
            let mut source =
                StreamingSource::new(model, corpus, hook, context, windows_per_batch, true, true)?;
            let per_window = source.rows_per_window();
            source.skip_windows(resume_rows / per_window as u64)?;
            while let Some(rows) = source.next_rows()? {
                let tokens = rows
                    .tokens
                    .ok_or_else(|| Error::InvalidArgument("stream gave no token ids".into()))?;
                let tokens: Vec<i32> = Vec::<i64>::try_from(tokens.f_to_device(tch::Device::Cpu)?)?
                    .into_iter()
                    .map(|t| t as i32)
                    .collect();
                if !add(&mut acc, &rows.acts[0], &tokens, per_window)? {
                    break;
                }
            }
        }
        ActivationInput::Store(store) => {
            let manifest = store.manifest();
            if manifest.hook != hook.to_string() || manifest.d != sae.cfg.d_in {
                return Err(Error::store(
                    store.dir(),
                    format!(
                        "holds {}-wide rows of {}, but the SAE reads {}-wide rows of {hook}",
                        manifest.d, manifest.hook, sae.cfg.d_in
                    ),
                ));
            }
            let per_window = manifest.rows_per_window() as usize;
            // Whole windows, up to ~4096 rows per step.
            let windows_per_chunk = (4096 / per_window).max(1);
            let mut skip = resume_rows as usize;
            'shards: for (index, entry) in manifest.shards.iter().enumerate() {
                if skip >= entry.rows as usize {
                    skip -= entry.rows as usize;
                    continue;
                }
                let shard = store.load_shard(index)?;
                let tokens: Vec<i32> = Vec::<i32>::try_from(&shard.tokens)?;
                let rows = tokens.len();
                let chunk = windows_per_chunk * per_window;
                let start = std::mem::take(&mut skip);
                for first in (start..rows).step_by(chunk) {
                    let len = chunk.min(rows - first);
                    let acts = shard.acts.f_narrow(0, first as i64, len as i64)?;
                    if !add(&mut acc, &acts, &tokens[first..first + len], per_window)? {
                        break 'shards;
                    }
                }
            }
        }
    }
    // The finished pass is checkpointed too, and the checkpoint stays until
    // the dictionary is written (see `checkpoint::remove`): a run that fails
    // later, on a full disk say, resumes without redoing the pass.
    if let Some(c) = &cfg.checkpoint {
        if acc.rows_seen() != saved_at {
            checkpoint::save(&c.dir, &acc.state(), fingerprint)?;
        }
    }
    let tokens = acc.rows_seen();
    if tokens == 0 {
        return Err(Error::InvalidArgument(
            "the corpus pass saw no tokens".into(),
        ));
    }
    Ok((acc.finish(), tokens))
}

/// Decoded token strings, cached per id.
struct TokenTexts<'a> {
    model: &'a LoadedModel,
    cache: HashMap<i64, String>,
}

impl<'a> TokenTexts<'a> {
    fn new(model: &'a LoadedModel) -> Self {
        TokenTexts {
            model,
            cache: HashMap::new(),
        }
    }

    fn text(&mut self, id: i64) -> String {
        self.cache
            .entry(id)
            .or_insert_with(|| self.model.tokenizer.token_text(id))
            .clone()
    }

    fn example(&mut self, raw: &RawExample) -> ActivationExample {
        ActivationExample {
            tokens: raw.tokens.iter().map(|&t| self.text(t as i64)).collect(),
            values: raw.values.clone(),
            max_value: raw.value,
            max_value_token_index: raw.centre,
        }
    }
}

/// Distinct normalised words of `tokens`, in order, at most `limit`.
fn distinct_words(tokens: impl IntoIterator<Item = String>, limit: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for token in tokens {
        let word = normalise(&token);
        if !word.is_empty() && !out.contains(&word) {
            out.push(word);
            if out.len() == limit {
                break;
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn entry(
    index: usize,
    model: &LoadedModel,
    hook: HookPoint,
    explanation: Vec<ExplanationWord>,
    lens: LogitLens,
    stats: FeatureStats,
    tokens: u64,
    cfg: &LabelConfig,
    texts: &mut TokenTexts,
) -> FeatureEntry {
    let top_words = cfg.mi.top_words;
    let shown = cfg.logit_lens_tokens;
    let lens_words = distinct_words(lens.top.iter().map(|&(id, _)| texts.text(id)), top_words);
    let top = &lens.top[..shown.min(lens.top.len())];
    let bottom = &lens.bottom[..shown.min(lens.bottom.len())];
    let pos_str: Vec<String> = top.iter().map(|&(id, _)| texts.text(id)).collect();
    let neg_str: Vec<String> = bottom.iter().map(|&(id, _)| texts.text(id)).collect();
    let activations: Vec<ActivationExample> = stats.top.iter().map(|e| texts.example(e)).collect();
    let centre_tokens = activations
        .iter()
        .map(|e| e.tokens[e.max_value_token_index].clone())
        .collect::<Vec<_>>();
    let quantile_examples =
        quantile_bands(&stats.sample, cfg.quantile_bands, cfg.examples_per_band)
            .into_iter()
            .map(|band| QuantileExamples {
                quantile: band.quantile,
                lower: band.lower,
                upper: band.upper,
                examples: band.picks.into_iter().map(|e| texts.example(e)).collect(),
            })
            .collect();
    let (bar_values, bar_heights): (Vec<f32>, Vec<u64>) = stats
        .histogram
        .iter()
        .enumerate()
        .filter(|(_, &h)| h > 0)
        .map(|(i, &h)| (hist_bin_centre(i), h))
        .unzip();
    FeatureEntry {
        index,
        model: model.spec.clone(),
        hook: hook.to_string(),
        label: None,
        explanation,
        baseline_logit_lens: lens_words,
        baseline_top_tokens: distinct_words(centre_tokens, top_words),
        pos_values: top.iter().map(|&(_, v)| v as f64).collect(),
        pos_str,
        neg_values: bottom.iter().map(|&(_, v)| v as f64).collect(),
        neg_str,
        frac_nonzero: stats.nonzero as f64 / tokens as f64,
        max_act: stats.max,
        activations,
        quantile_examples,
        freq_hist_data_bar_values: bar_values,
        freq_hist_data_bar_heights: bar_heights,
    }
}

/// "CPU model (N threads)" or the CUDA device.
fn hardware(model: &LoadedModel) -> String {
    match model.model.device() {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        _ => {
            let cpu = std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|info| {
                    info.lines()
                        .find(|l| l.starts_with("model name"))
                        .and_then(|l| l.split(':').nth(1))
                        .map(|s| s.trim().to_string())
                })
                .unwrap_or_else(|| "CPU".into());
            format!("{cpu} ({} threads)", tch::get_num_threads())
        }
    }
}
