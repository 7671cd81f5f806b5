//! Logit lens of SAE features: `W_dec · W_Uᵀ` (`[d_sae, vocab]`), the tokens
//! each feature's decoder direction promotes and suppresses most, as
//! Neuronpedia shows them. Computed in blocks of features so the full
//! `[d_sae, vocab]` matrix never exists at once.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Token ids and values, largest first (`top`) and most negative first (`bottom`).
#[derive(Debug, Clone, PartialEq)]
pub struct LogitLens {
    pub top: Vec<(i64, f32)>,
    pub bottom: Vec<(i64, f32)>,
}

/// `k` top and bottom tokens per row of `w_dec [d_sae, d]` against
/// `unembed [vocab, d]`.
pub fn logit_lens(w_dec: &Tensor, unembed: &Tensor, k: usize) -> Result<Vec<LogitLens>> {
    let (n, d) = w_dec.size2()?;
    let (vocab, d_u) = unembed.size2()?;
    if d != d_u {
        return Err(Error::InvalidArgument(format!(
            "decoder rows are {d} wide but the unembedding is {vocab}×{d_u}"
        )));
    }
    let k = (k as i64).min(vocab);
    let unembed_t = unembed
        .f_to_kind(Kind::Float)?
        .f_to_device(w_dec.device())?
        .f_t_copy()?;
    let w_dec = w_dec.f_to_kind(Kind::Float)?;
    let mut out = Vec::with_capacity(n as usize);
    tch::no_grad(|| {
        for start in (0..n).step_by(512) {
            let len = (n - start).min(512);
            let logits = w_dec.f_narrow(0, start, len)?.f_matmul(&unembed_t)?;
            let (top_v, top_i) = logits.f_topk(k, 1, true, true)?;
            let (bot_v, bot_i) = logits.f_topk(k, 1, false, true)?;
            let pairs = |v: Tensor, i: Tensor| -> Result<Vec<(i64, f32)>> {
                let v = Vec::<f32>::try_from(v.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
                let i = Vec::<i64>::try_from(i.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
                Ok(i.into_iter().zip(v).collect())
            };
            let top = pairs(top_v, top_i)?;
            let bottom = pairs(bot_v, bot_i)?;
            for r in 0..len as usize {
                let range = r * k as usize..(r + 1) * k as usize;
                out.push(LogitLens {
                    top: top[range.clone()].to_vec(),
                    bottom: bottom[range].to_vec(),
                });
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_promoted_and_suppressed_tokens() {
        // Feature 0 points along token 2 and away from token 0.
        let w_dec = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let unembed = Tensor::from_slice(&[-1.0f32, 0.0, 0.0, 0.5, 2.0, 0.0]).view([3, 2]);
        let lens = logit_lens(&w_dec, &unembed, 2).unwrap();
        assert_eq!(lens[0].top, [(2, 2.0), (1, 0.0)]);
        assert_eq!(lens[0].bottom, [(0, -1.0), (1, 0.0)]);
        assert_eq!(lens[1].top[0], (1, 0.5));
        assert!(logit_lens(
            &w_dec,
            &Tensor::zeros([3, 4], (Kind::Float, tch::Device::Cpu)),
            2
        )
        .is_err());
    }
}
