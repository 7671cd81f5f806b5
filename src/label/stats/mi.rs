//! Mutual-information explanations of SAE features over a fixed vocabulary
//! (Wu et al. 2025, "Interpreting and Steering LLMs with Mutual
//! Information-based Explanations on Sparse Autoencoders", §3.2; their
//! `MIExplainer.explain`).
//!
//! With `F [d_sae, d]` the feature directions passed through the model's
//! final norm and `V [N, d]` the word embeddings, `S = F·Vᵀ` and
//!
//! - `p(w|c) = softmax_w(S/α)` (each feature's distribution over words),
//! - `log p(c|w) = log_softmax_c(S/β)` (each word's distribution over features),
//! - `score(c, w) = p(w|c) · log p(c|w)`, the paper's term.
//!
//! The paper maximises `I(C; W) = H(C) − H(C|W)` and, with a uniform
//! `p(c) = 1/d_sae`, writes the objective as the sum of `score` terms. Ranked
//! word by word, though, that sum favours words with `p(w|c) ≈ 0` (their term
//! is ≈ 0, the largest a non-positive term can be), i.e. words unrelated to
//! the feature. Each word's share of the mutual information keeps the
//! `H(C)` part: `mi(c, w) = p(w|c) · (log p(c|w) − log p(c))`, which is zero
//! for a word equally close to every feature and large for a word close to
//! this feature only. Words are ranked by `mi`; both values are reported.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::label::export::dictionary::ExplanationWord;
use crate::model::LoadedModel;
use crate::sae::Sae;

/// Temperatures and how many words to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MiConfig {
    /// Temperature of `p(w|c)` (softmax over words).
    pub alpha: f64,
    /// Temperature of `p(c|w)` (softmax over features).
    pub beta: f64,
    /// Words kept per feature.
    pub top_words: usize,
}

impl Default for MiConfig {
    fn default() -> Self {
        MiConfig {
            alpha: 1.0,
            beta: 1.0,
            top_words: 20,
        }
    }
}

/// Which SAE matrix gives the feature directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directions {
    /// Rows of `W_dec` (what a feature writes).
    Decoder,
    /// Columns of `W_enc` (what a feature reads).
    Encoder,
}

impl Directions {
    pub fn name(self) -> &'static str {
        match self {
            Directions::Decoder => "decoder",
            Directions::Encoder => "encoder",
        }
    }
    pub fn parse(name: &str) -> Result<Directions> {
        match name {
            "decoder" => Ok(Directions::Decoder),
            "encoder" => Ok(Directions::Encoder),
            other => Err(Error::InvalidArgument(format!(
                "feature directions `{other}`: expected `decoder` or `encoder`"
            ))),
        }
    }
}

/// `[d_sae, d_model]` f32 on the CPU: the SAE's feature directions through
/// the model's final norm (with its gain), the `F` of the paper.
pub fn feature_directions(sae: &Sae, model: &LoadedModel, which: Directions) -> Result<Tensor> {
    let d_model = model.model.config().d_model;
    let rows = match which {
        Directions::Decoder => &sae.weights.w_dec,
        Directions::Encoder => &sae.weights.w_enc,
    };
    let d_in = rows.size()[1];
    if d_in != d_model {
        return Err(Error::InvalidArgument(format!(
            "the SAE reads {d_in}-wide activations but the model's residual stream is {d_model} wide; \
             MI explanations need an SAE on a residual hook of this model"
        )));
    }
    let rows = rows
        .f_to_device(model.model.device())?
        .f_to_kind(model.model.kind())?;
    let normed = tch::no_grad(|| model.model.final_norm(&rows));
    Ok(normed
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?)
}

/// Features explained per block (see [`explain`]).
const FEATURE_BLOCK: usize = 1024;

/// The bytes [`explain`] needs for `n_features` features of width `d`
/// against `n_words` words: the word embeddings twice (and transposed), and
/// half a dozen `[block, words]` f32 matrices per block of features.
pub fn explain_bytes(n_features: usize, n_words: usize, d: usize) -> u64 {
    use crate::machine::memory::bytes_of;
    let block = n_features.min(FEATURE_BLOCK) as u64;
    bytes_of(&[2, n_words as u64, d as u64, 4]).saturating_add(bytes_of(&[
        6,
        block,
        n_words as u64,
        4,
    ]))
}

/// The top `cfg.top_words` words of each feature, best first.
///
/// `features [n, d]` and `words [N, d]` are f32 CPU tensors; `vocab` names
/// the `N` rows of `words`. Work is done in blocks of features so memory
/// stays at a few `[block, N]` matrices beside `S`'s column statistics.
pub fn explain(
    features: &Tensor,
    words: &Tensor,
    vocab: &[String],
    cfg: MiConfig,
) -> Result<Vec<Vec<ExplanationWord>>> {
    let (n, d) = features.size2()?;
    let (n_words, d_words) = words.size2()?;
    if d != d_words || n_words as usize != vocab.len() {
        return Err(Error::InvalidArgument(format!(
            "features are {n}×{d}, word embeddings {n_words}×{d_words} for {} words",
            vocab.len()
        )));
    }
    if !(cfg.alpha > 0.0 && cfg.beta > 0.0) || cfg.top_words == 0 {
        return Err(Error::InvalidArgument(format!(
            "alpha ({}) and beta ({}) must be positive and top_words ({}) at least 1",
            cfg.alpha, cfg.beta, cfg.top_words
        )));
    }
    let k = cfg.top_words.min(vocab.len()) as i64;
    let block = FEATURE_BLOCK;
    tch::no_grad(|| {
        let words_t = words.f_t_copy()?;
        // log Σ_c exp(S[c, w]/β), per word, accumulated over blocks of features.
        let mut column_lse: Option<Tensor> = None;
        for start in (0..n).step_by(block) {
            let len = block.min((n - start) as usize) as i64;
            let s = features.f_narrow(0, start, len)?.f_matmul(&words_t)?;
            let lse = s.f_div_scalar(cfg.beta)?.f_logsumexp(&[0i64][..], false)?;
            column_lse = Some(match column_lse {
                None => lse,
                Some(acc) => Tensor::f_stack(&[acc, lse], 0)?.f_logsumexp(&[0i64][..], false)?,
            });
        }
        let column_lse = column_lse.ok_or_else(|| {
            Error::InvalidArgument("an SAE with no features has nothing to explain".into())
        })?;
        let log_prior = -(n as f64).ln();
        let mut out = Vec::with_capacity(n as usize);
        for start in (0..n).step_by(block) {
            let len = block.min((n - start) as usize) as i64;
            let s = features.f_narrow(0, start, len)?.f_matmul(&words_t)?;
            let p_word = s.f_div_scalar(cfg.alpha)?.f_softmax(1, Kind::Float)?;
            let log_p_feature = s.f_div_scalar(cfg.beta)?.f_sub(&column_lse)?;
            let score = p_word.f_mul(&log_p_feature)?;
            let mi = p_word.f_mul(&log_p_feature.f_sub_scalar(log_prior)?)?;
            let (top_mi, top_idx) = mi.f_topk(k, 1, true, true)?;
            let top_score = score.f_gather(1, &top_idx, false)?;
            let top_mi = Vec::<f32>::try_from(top_mi.f_flatten(0, -1)?)?;
            let top_score = Vec::<f32>::try_from(top_score.f_flatten(0, -1)?)?;
            let top_idx = Vec::<i64>::try_from(top_idx.f_flatten(0, -1)?)?;
            for row in 0..len as usize {
                let range = row * k as usize..(row + 1) * k as usize;
                out.push(
                    range
                        .map(|i| ExplanationWord {
                            word: vocab[top_idx[i] as usize].clone(),
                            score: top_score[i] as f64,
                            mi: top_mi[i] as f64,
                        })
                        .collect(),
                );
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f32]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("w{i}")).collect()
    }

    /// Two features, two words, S = [[1, 0], [0, 0]] (α = β = 1), by hand:
    /// p(w0|c0) = e/(e+1), p(w1|c0) = 1/(e+1), p(w|c1) = 1/2;
    /// log p(c0|w0) = 1 − ln(e+1), log p(c1|w0) = −ln(e+1),
    /// log p(c|w1) = −ln 2.
    #[test]
    fn scores_equal_hand_computed_values() {
        let features = t(&[&[1.0, 0.0], &[0.0, 0.0]]);
        let words = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let cfg = MiConfig {
            alpha: 1.0,
            beta: 1.0,
            top_words: 2,
        };
        let out = explain(&features, &words, &names(2), cfg).unwrap();
        let e = std::f64::consts::E;
        let ln2 = 2f64.ln();
        let p00 = e / (e + 1.0);
        let lp00 = 1.0 - (e + 1.0).ln();
        let want_c0 = [
            ("w0", p00 * lp00, p00 * (lp00 + ln2)),
            ("w1", (1.0 - p00) * -ln2, 0.0),
        ];
        for (got, (word, score, mi)) in out[0].iter().zip(want_c0) {
            assert_eq!(got.word, word);
            assert!((got.score - score).abs() < 1e-6, "{got:?} vs {score}");
            assert!((got.mi - mi).abs() < 1e-6, "{got:?} vs {mi}");
        }
        // Feature 1: w1 contributes 0.5·(−ln2 + ln2) = 0; w0 is negative.
        assert_eq!(out[1][0].word, "w1");
        assert!(out[1][0].mi.abs() < 1e-6);
        let lp10 = -(e + 1.0).ln();
        assert!((out[1][1].score - 0.5 * lp10).abs() < 1e-6);
        assert!((out[1][1].mi - 0.5 * (lp10 + ln2)).abs() < 1e-6);
    }

    #[test]
    fn temperatures_change_the_distributions() {
        let features = t(&[&[2.0, 0.0], &[0.0, 1.0]]);
        let words = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let base = MiConfig {
            alpha: 1.0,
            beta: 1.0,
            top_words: 1,
        };
        let sharp = MiConfig {
            alpha: 0.25,
            ..base
        };
        let a = explain(&features, &words, &names(2), base).unwrap();
        let b = explain(&features, &words, &names(2), sharp).unwrap();
        // A sharper p(w|c) puts more mass on the top word, so its MI share grows.
        assert!(b[0][0].mi > a[0][0].mi);
    }

    /// Blocks of features give the same answer as one block.
    #[test]
    fn blocked_column_statistics_match() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let features = crate::io::rng::normal(&mut rng, &[2100, 8], 1.0);
        let words = crate::io::rng::normal(&mut rng, &[30, 8], 1.0);
        let cfg = MiConfig {
            top_words: 3,
            ..MiConfig::default()
        };
        let out = explain(&features, &words, &names(30), cfg).unwrap();
        let s = features.matmul(&words.tr());
        let log_p = s.log_softmax(0, Kind::Float);
        let p = s.softmax(1, Kind::Float);
        let mi = &p * (&log_p + (2100f64).ln());
        for c in [0usize, 1500, 2099] {
            let (v, i) = mi.get(c as i64).topk(3, 0, true, true);
            let v = Vec::<f32>::try_from(v).unwrap();
            let i = Vec::<i64>::try_from(i).unwrap();
            for j in 0..3 {
                assert_eq!(out[c][j].word, format!("w{}", i[j]));
                assert!((out[c][j].mi - v[j] as f64).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn rejects_bad_shapes_and_settings() {
        let f = t(&[&[1.0, 0.0]]);
        let w = t(&[&[1.0, 0.0, 0.0]]);
        assert!(explain(&f, &w, &names(1), MiConfig::default()).is_err());
        let w = t(&[&[1.0, 0.0]]);
        let bad = MiConfig {
            alpha: 0.0,
            ..MiConfig::default()
        };
        assert!(explain(&f, &w, &names(1), bad).is_err());
    }
}
