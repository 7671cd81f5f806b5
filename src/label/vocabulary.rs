//! The fixed vocabulary that MI explanations choose words from (Wu et al.
//! 2025, §3): the `N` most frequent words of a corpus or a word list, after
//! lower-casing and a light stemming that folds plural forms into their
//! singular, each embedded as the mean of the model's unembedding rows for
//! the tokens of `" word"`.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::Corpus;
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::model::LoadedModel;

/// How a vocabulary is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocabularyConfig {
    /// Keep the `size` most frequent words.
    pub size: usize,
    /// Drop words seen fewer times than this.
    pub min_count: u64,
    /// Fold `-s` / `-es` plurals into a singular that is also present.
    pub stem: bool,
}

impl Default for VocabularyConfig {
    fn default() -> Self {
        VocabularyConfig {
            size: 5000,
            min_count: 5,
            stem: true,
        }
    }
}

/// Words, most frequent first, with their counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vocabulary {
    /// Where the counts came from (a corpus spec or a word-list path).
    pub source: String,
    pub config: VocabularyConfig,
    pub words: Vec<String>,
    pub counts: Vec<u64>,
}

impl Vocabulary {
    /// Counts the words of every document of `corpus`.
    pub fn from_corpus(corpus: &Corpus, config: VocabularyConfig) -> Result<Vocabulary> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut documents = corpus.documents();
        loop {
            let batch = documents.next_batch(4096)?;
            if batch.is_empty() {
                break;
            }
            let partial = batch
                .par_iter()
                .fold(HashMap::new, |mut acc: HashMap<String, u64>, doc| {
                    for word in words_of(&doc.text) {
                        *acc.entry(word).or_default() += 1;
                    }
                    acc
                })
                .reduce(HashMap::new, merge_counts);
            counts = merge_counts(counts, partial);
        }
        Self::from_counts(corpus.spec.clone(), counts, config)
    }

    /// Reads a word list: one word per line, optionally followed by a count
    /// (`word 1234`); a word without a count counts once per line.
    pub fn from_word_list(path: &Path, config: VocabularyConfig) -> Result<Vocabulary> {
        let text = std::fs::read_to_string(path).map_err(|cause| Error::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let mut fields = line.split_whitespace();
            let Some(word) = fields.next() else { continue };
            let count = match fields.next() {
                Some(c) => c.parse::<f64>().map_err(|_| {
                    Error::malformed(path, format!("line {}: count `{c}` is not a number", n + 1))
                })? as u64,
                None => 1,
            };
            let word = normalise(word);
            if !word.is_empty() {
                *counts.entry(word).or_default() += count;
            }
        }
        Self::from_counts(path.display().to_string(), counts, config)
    }

    /// Applies stemming, the minimum count and the size limit to raw counts.
    pub fn from_counts(
        source: String,
        mut counts: HashMap<String, u64>,
        config: VocabularyConfig,
    ) -> Result<Vocabulary> {
        if config.size == 0 {
            return Err(Error::InvalidArgument(
                "vocabulary size must be positive".into(),
            ));
        }
        if config.stem {
            counts = fold_plurals(counts);
        }
        let mut ranked: Vec<(String, u64)> = counts
            .into_iter()
            .filter(|(_, c)| *c >= config.min_count)
            .collect();
        // Most frequent first; ties alphabetically, so the result is deterministic.
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(config.size);
        if ranked.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{source}: no word occurs at least {} times, so the vocabulary is empty",
                config.min_count
            )));
        }
        let (words, counts) = ranked.into_iter().unzip();
        Ok(Vocabulary {
            source,
            config,
            words,
            counts,
        })
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }

    pub fn load(path: &Path) -> Result<Vocabulary> {
        let bytes = std::fs::read(path).map_err(|cause| {
            if cause.kind() == std::io::ErrorKind::NotFound {
                Error::InvalidArgument(format!(
                    "vocabulary file {} does not exist (build one with `saescope label --vocab-from CORPUS`)",
                    path.display()
                ))
            } else {
                Error::Io {
                    path: path.to_path_buf(),
                    cause,
                }
            }
        })?;
        let vocab: Vocabulary =
            serde_json::from_slice(&bytes).map_err(|e| Error::malformed(path, e.to_string()))?;
        if vocab.words.is_empty() || vocab.words.len() != vocab.counts.len() {
            return Err(Error::malformed(
                path,
                format!(
                    "{} words but {} counts; a vocabulary needs at least one word and a count for each",
                    vocab.words.len(),
                    vocab.counts.len()
                ),
            ));
        }
        Ok(vocab)
    }

    /// `[N, d_model]` f32: each word's mean unembedding row over the tokens
    /// of `" word"`. A lone leading-space token is dropped when the word
    /// itself follows as separate tokens, so that the space does not dilute
    /// every embedding alike.
    pub fn embed(&self, model: &LoadedModel) -> Result<Tensor> {
        let unembed = model
            .model
            .unembed_weight()
            .f_to_kind(Kind::Float)?
            .f_to_device(tch::Device::Cpu)?;
        let vocab_size = unembed.size()[0];
        let mut rows = Vec::with_capacity(self.words.len());
        for word in &self.words {
            let mut ids = model.tokenizer.encode(&format!(" {word}"), false)?;
            if ids.len() > 1 && model.tokenizer.token_text(ids[0]).trim().is_empty() {
                ids.remove(0);
            }
            if ids.is_empty() || ids.iter().any(|&i| i < 0 || i >= vocab_size) {
                return Err(Error::Tokenizer(format!(
                    "word `{word}` has no tokens inside the unembedding's {vocab_size} rows"
                )));
            }
            let index = Tensor::f_from_slice(&ids)?;
            rows.push(
                unembed
                    .f_index_select(0, &index)?
                    .f_mean_dim(0, false, Kind::Float)?,
            );
        }
        Ok(Tensor::f_stack(&rows, 0)?)
    }

    /// The paper's "superficial" words: the 250 most frequent and every word
    /// shorter than four letters.
    pub fn superficial(&self) -> Vec<bool> {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| i < 250 || w.chars().count() < 4)
            .collect()
    }
}

/// Lower-case alphabetic runs of `text`.
pub fn words_of(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

/// A word as the vocabulary stores it: lower case, letters only.
pub fn normalise(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_alphabetic())
        .flat_map(char::to_lowercase)
        .collect()
}

fn merge_counts(mut a: HashMap<String, u64>, b: HashMap<String, u64>) -> HashMap<String, u64> {
    if a.len() < b.len() {
        return merge_counts(b, a);
    }
    for (word, count) in b {
        *a.entry(word).or_default() += count;
    }
    a
}

/// Light stemming: `cats` → `cat`, `boxes` → `box`, but only when the
/// singular is itself a word of the corpus and not much rarer than the
/// plural (so `bus`, `this`, `analysis` stay, and `does` is not a `doe`).
fn fold_plurals(counts: HashMap<String, u64>) -> HashMap<String, u64> {
    let singular_of = |word: &str| -> Option<String> {
        let count = counts[word];
        if word.chars().count() < 4
            || !word.ends_with('s')
            || ["ss", "us", "is"].iter().any(|end| word.ends_with(end))
        {
            return None;
        }
        let plausible = |stem: &str| counts.get(stem).is_some_and(|&c| c * 4 >= count);
        let stem = &word[..word.len() - 1];
        if plausible(stem) {
            return Some(stem.to_string());
        }
        let stem = stem.strip_suffix('e')?;
        plausible(stem).then(|| stem.to_string())
    };
    let mut folded: HashMap<String, u64> = HashMap::with_capacity(counts.len());
    for (word, &count) in &counts {
        let key = singular_of(word).unwrap_or_else(|| word.clone());
        *folded.entry(key).or_default() += count;
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|&(w, c)| (w.to_string(), c)).collect()
    }

    #[test]
    fn words_are_lowercase_letter_runs() {
        let words: Vec<String> = words_of("The cat's 3 Boxes—naïve!").collect();
        assert_eq!(words, ["the", "cat", "s", "boxes", "naïve"]);
    }

    #[test]
    fn plurals_fold_only_into_present_singulars() {
        let folded = fold_plurals(counts(&[
            ("cat", 3),
            ("cats", 2),
            ("box", 1),
            ("boxes", 4),
            ("bus", 5),
            ("glass", 1),
            ("this", 7),
            ("thi", 1),
            ("does", 40),
            ("doe", 2),
        ]));
        assert_eq!(folded["cat"], 5);
        assert_eq!(folded["box"], 5);
        assert_eq!(folded["bus"], 5);
        assert_eq!(folded["glass"], 1);
        assert_eq!(folded["this"], 7);
        assert_eq!(folded["does"], 40);
        assert!(!folded.contains_key("cats"));
    }

    #[test]
    fn ranks_by_count_then_word_and_applies_limits() {
        let config = VocabularyConfig {
            size: 2,
            min_count: 2,
            stem: false,
        };
        let v = Vocabulary::from_counts(
            "test".into(),
            counts(&[("b", 5), ("a", 5), ("c", 9), ("rare", 1)]),
            config,
        )
        .unwrap();
        assert_eq!(v.words, ["c", "a"]);
        assert_eq!(v.counts, [9, 5]);
        let none = Vocabulary::from_counts(
            "test".into(),
            counts(&[("rare", 1)]),
            VocabularyConfig::default(),
        );
        assert!(none.unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn missing_and_corrupt_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Vocabulary::load(&dir.path().join("nope.json")).unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, b"{\"words\": [").unwrap();
        assert!(Vocabulary::load(&bad)
            .unwrap_err()
            .to_string()
            .contains("malformed"));
        let list = dir.path().join("list.txt");
        std::fs::write(&list, "Paris 10\nparis 5\nLondon x\n").unwrap();
        let err = Vocabulary::from_word_list(&list, VocabularyConfig::default()).unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.json");
        let list = dir.path().join("list.txt");
        std::fs::write(&list, "Paris 10\nparis 5\nlondon 7\n").unwrap();
        let v = Vocabulary::from_word_list(&list, VocabularyConfig::default()).unwrap();
        assert_eq!(v.words, ["paris", "london"]);
        assert_eq!(v.counts, [15, 7]);
        v.save(&path).unwrap();
        assert_eq!(Vocabulary::load(&path).unwrap(), v);
    }
}
