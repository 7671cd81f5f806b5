//! The feature dictionary on disk: a folder holding `features.jsonl` (one
//! [`FeatureEntry`] per line, fields modelled on Neuronpedia's feature pages),
//! `dictionary.json` ([`DictionaryMeta`]: model, hook, settings, summary
//! figures), `vocabulary.json` (the fixed vocabulary the explanations use) and
//! the static browser (`index.html` + `features.js`). Reading it back serves
//! `features search` and `features show`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::label::vocabulary::Vocabulary;

pub const FEATURES_FILE: &str = "features.jsonl";
pub const META_FILE: &str = "dictionary.json";
pub const VOCABULARY_FILE: &str = "vocabulary.json";
pub const DENSITY_PLOT_FILE: &str = "feature_density.svg";

/// One explanation word of a feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplanationWord {
    pub word: String,
    /// The paper's per-pair term `p(w|c) · log p(c|w)` (≤ 0).
    pub score: f64,
    /// The word's share of the mutual information,
    /// `p(w|c) · (log p(c|w) − log p(c))` with `p(c) = 1/d_sae`; words are
    /// ranked by it (see `mi.rs` for why).
    pub mi: f64,
}

/// A token with a value (logit-lens weight, activation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenValue {
    pub token: String,
    pub value: f64,
}

/// A window of text around one activation, with the feature's value at
/// every token (Neuronpedia's `activations` entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationExample {
    pub tokens: Vec<String>,
    pub values: Vec<f32>,
    pub max_value: f32,
    /// Position of the activation this example was chosen for, in `tokens`.
    pub max_value_token_index: usize,
}

/// Examples drawn from one band of a feature's activation distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileExamples {
    /// Quantile range of the band, e.g. `[0.0, 0.2]`.
    pub quantile: [f64; 2],
    /// Activation range of the band.
    pub lower: f32,
    pub upper: f32,
    pub examples: Vec<ActivationExample>,
}

/// One line of `features.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureEntry {
    pub index: usize,
    pub model: String,
    pub hook: String,
    /// A one-line label written by a language model, when asked for.
    pub label: Option<String>,
    /// Mutual-information explanation words, best first.
    pub explanation: Vec<ExplanationWord>,
    /// Frequency-biased baseline: the top logit-lens tokens as words.
    pub baseline_logit_lens: Vec<String>,
    /// Frequency-biased baseline: the tokens of the top activations, distinct.
    pub baseline_top_tokens: Vec<String>,
    /// Logit lens `W_dec · W_Uᵀ`: most promoted tokens and their values.
    pub pos_str: Vec<String>,
    pub pos_values: Vec<f64>,
    /// Logit lens: most suppressed tokens and their values.
    pub neg_str: Vec<String>,
    pub neg_values: Vec<f64>,
    /// Fraction of tokens on which the feature is non-zero.
    pub frac_nonzero: f64,
    /// Largest activation seen.
    pub max_act: f32,
    /// Top-activating examples, largest first.
    pub activations: Vec<ActivationExample>,
    /// Samples from lower bands of the activation distribution.
    pub quantile_examples: Vec<QuantileExamples>,
    /// Histogram of non-zero activations: bin centres and counts.
    pub freq_hist_data_bar_values: Vec<f32>,
    pub freq_hist_data_bar_heights: Vec<u64>,
}

/// The explanation measure of the paper over a set of explanations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Diversity {
    /// Distinct non-superficial words used / non-superficial vocabulary size.
    pub diversity: f64,
    /// Distinct superficial words used / superficial vocabulary size.
    pub lexical: f64,
    pub distinct_words: usize,
}

/// `dictionary.json`: what the dictionary was built from and summary figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DictionaryMeta {
    pub model: String,
    pub hook: String,
    pub sae: String,
    pub d_sae: usize,
    pub corpus: String,
    pub tokens: u64,
    /// `encoder` or `decoder`.
    pub directions: String,
    pub alpha: f64,
    pub beta: f64,
    pub diversity_mi: Diversity,
    pub diversity_logit_lens: Diversity,
    pub diversity_top_tokens: Diversity,
    pub seconds: f64,
    pub hardware: String,
}

/// Writes `features.jsonl` and `dictionary.json` atomically into `dir`.
pub fn write_dictionary(dir: &Path, entries: &[FeatureEntry], meta: &DictionaryMeta) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|cause| Error::Io {
        path: dir.to_path_buf(),
        cause,
    })?;
    let mut lines = Vec::new();
    for entry in entries {
        serde_json::to_writer(&mut lines, entry)?;
        lines.push(b'\n');
    }
    write_atomic(&dir.join(FEATURES_FILE), &lines)?;
    write_atomic(&dir.join(META_FILE), &serde_json::to_vec_pretty(meta)?)
}

/// A dictionary read back from its folder.
pub struct Dictionary {
    pub dir: PathBuf,
    pub meta: DictionaryMeta,
    pub entries: Vec<FeatureEntry>,
    pub vocabulary: Vocabulary,
}

impl Dictionary {
    pub fn open(dir: &Path) -> Result<Dictionary> {
        if !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a feature dictionary folder (made by `saescope label`)",
                dir.display()
            )));
        }
        let meta_path = dir.join(META_FILE);
        let meta_bytes = read(&meta_path)?;
        let meta: DictionaryMeta = serde_json::from_slice(&meta_bytes)
            .map_err(|e| Error::malformed(&meta_path, e.to_string()))?;
        let vocabulary = Vocabulary::load(&dir.join(VOCABULARY_FILE))?;
        let path = dir.join(FEATURES_FILE);
        let file = std::fs::File::open(&path).map_err(|cause| Error::Io {
            path: path.clone(),
            cause,
        })?;
        let mut entries = Vec::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|cause| Error::Io {
                path: path.clone(),
                cause,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let entry: FeatureEntry = serde_json::from_str(&line)
                .map_err(|e| Error::malformed(&path, format!("line {}: {e}", n + 1)))?;
            entries.push(entry);
        }
        Ok(Dictionary {
            dir: dir.to_path_buf(),
            meta,
            entries,
            vocabulary,
        })
    }

    /// The entry of feature `index`, or a clear error naming the valid range.
    pub fn feature(&self, index: usize) -> Result<&FeatureEntry> {
        self.entries
            .iter()
            .find(|e| e.index == index)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "feature {index} is out of range: this dictionary has features 0..{} ({} entries)",
                    self.meta.d_sae,
                    self.entries.len()
                ))
            })
    }

    /// Features whose explanation words or label contain `query`
    /// (case-insensitive), best match first: an exact explanation word ranks
    /// by its position among the feature's words.
    pub fn search(&self, query: &str) -> Vec<(&FeatureEntry, usize)> {
        let q = query.trim().to_lowercase();
        let mut hits: Vec<(&FeatureEntry, usize)> = self
            .entries
            .iter()
            .filter_map(|e| {
                let exact = e.explanation.iter().position(|w| w.word == q);
                let partial = e.explanation.iter().position(|w| w.word.contains(&q));
                let in_label = e
                    .label
                    .as_deref()
                    .is_some_and(|l| l.to_lowercase().contains(&q));
                match (exact, partial, in_label) {
                    (Some(rank), _, _) => Some((e, rank)),
                    (None, Some(rank), _) => Some((e, 1000 + rank)),
                    (None, None, true) => Some((e, 2000)),
                    _ => None,
                }
            })
            .collect();
        hits.sort_by_key(|&(e, rank)| (rank, e.index));
        hits
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    })
}
