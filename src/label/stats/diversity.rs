//! The diversity measure of Wu et al. 2025 over a set of explanations: how
//! much of the vocabulary's non-superficial part the explanations use.
//! Superficial words are the 250 most frequent and those shorter than four
//! letters; words outside the vocabulary (baseline tokens such as `ing`)
//! are not counted.

use std::collections::HashSet;

use crate::label::export::dictionary::Diversity;
use crate::label::vocabulary::{normalise, Vocabulary};

/// Diversity and lexical coverage of `explanations` (each a list of words).
pub fn diversity<'a, I, S>(vocab: &Vocabulary, explanations: I) -> Diversity
where
    I: IntoIterator<Item = &'a [S]>,
    S: AsRef<str> + 'a,
{
    let superficial = vocab.superficial();
    let index: std::collections::HashMap<&str, usize> = vocab
        .words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i))
        .collect();
    let mut used: HashSet<usize> = HashSet::new();
    for words in explanations {
        for w in words {
            if let Some(&i) = index.get(normalise(w.as_ref()).as_str()) {
                used.insert(i);
            }
        }
    }
    let n_sup = superficial.iter().filter(|&&s| s).count();
    let n_rest = vocab.len() - n_sup;
    let sup_used = used.iter().filter(|&&i| superficial[i]).count();
    let rest_used = used.len() - sup_used;
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Diversity {
        diversity: ratio(rest_used, n_rest),
        lexical: ratio(sup_used, n_sup),
        distinct_words: used.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::vocabulary::VocabularyConfig;

    #[test]
    fn counts_distinct_non_superficial_words() {
        // 250 frequent filler words, then "volcano", "lava", "cat" (short), "river".
        let mut counts = std::collections::HashMap::new();
        for i in 0..250u64 {
            let letter = |n: u64| char::from(b'a' + n as u8);
            counts.insert(
                format!("fill{}{}", letter(i / 26), letter(i % 26)),
                1000 + i,
            );
        }
        assert_eq!(counts.len(), 250);
        for (w, c) in [("volcano", 50), ("lava", 40), ("cat", 30), ("river", 20)] {
            counts.insert(w.to_string(), c);
        }
        let config = VocabularyConfig {
            size: 1000,
            min_count: 1,
            stem: false,
        };
        let vocab = Vocabulary::from_counts("t".into(), counts, config).unwrap();
        let first = vocab.words[0].clone();
        let explanations: Vec<Vec<String>> = vec![
            vec!["Volcano".into(), "lava".into(), first.clone()],
            vec!["volcano".into(), "ing".into(), "cat".into()],
        ];
        let d = diversity(&vocab, explanations.iter().map(|e| e.as_slice()));
        // Non-superficial: volcano, lava, river → 2 of 3 used.
        assert!((d.diversity - 2.0 / 3.0).abs() < 1e-12, "{d:?}");
        // Superficial: 250 frequent + "cat" → first and cat used.
        assert!((d.lexical - 2.0 / 251.0).abs() < 1e-12, "{d:?}");
        assert_eq!(d.distinct_words, 4);
    }
}
