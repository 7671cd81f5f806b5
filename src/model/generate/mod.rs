//! Autoregressive generation with a KV cache. Interventions run at every
//! step: on the prompt and on each decoded token. Prompts of different lengths
//! are left-padded and masked, with positions counted from each row's first
//! real token, as transformers does.

pub mod chat;
pub mod engine;
pub mod sampling;

use tch::{Kind, Tensor};

use super::transformer::{ForwardInput, LogitsFor, StopAt, Transformer};
use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::model::cpu::decode_step::{host_f32, weight_slice};
use crate::model::cpu::gemv::{Element, WeightSlice};
use crate::model::generate::sampling::{Sampler, SamplingConfig};
use crate::vectorized_fn;

/// Settings of one generation call.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Stop a row at any of these ids (the id itself is kept in the output).
    pub stop_ids: Vec<i64>,
}

/// What `generate` produced for each prompt: the new tokens only.
pub type Generated = Vec<Vec<i64>>;

/// Generates continuations of `prompts` (token ids, each non-empty).
/// `on_token(row, id)` is called for every new token as soon as it exists,
/// which is how the CLI streams text.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<i64>],
    config: &GenerateConfig,
    hooks: &mut Hooks,
    mut on_token: impl FnMut(usize, i64),
) -> Result<Generated> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::InvalidArgument(
            "generate needs non-empty prompts".into(),
        ));
    }
    let batch = prompts.len() as i64;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let capacity = longest + config.max_new_tokens as i64;
    let device = model.device();
    let padded = prompts.iter().any(|p| p.len() as i64 != longest);

    // Left padding: row r has `longest - len_r` pad positions first.
    let mut ids = Vec::with_capacity((batch * longest) as usize);
    let mut mask = Vec::with_capacity((batch * capacity) as usize);
    for p in prompts {
        let pad = longest as usize - p.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(p.iter().copied()));
        mask.extend(
            std::iter::repeat_n(0i64, pad)
                .chain(std::iter::repeat_n(1i64, capacity as usize - pad)),
        );
    }
    let tokens = Tensor::from_slice(&ids)
        .view([batch, longest])
        .to_device(device);
    let full_mask = Tensor::from_slice(&mask)
        .view([batch, capacity])
        .to_device(device);
    // Position of each slot = number of real tokens before it.
    let all_positions = (full_mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);

    let mut cache = model.new_cache(batch, capacity);
    let mut sampler = [Sampler::new(config.sampling)?];
    let mut outputs: Generated = vec![Vec::new(); prompts.len()];
    let mut finished = vec![false; prompts.len()];
    let mut step_tokens = tokens;
    for step in 0..config.max_new_tokens {
        let past = cache.len();
        let seq = step_tokens.size()[1];
        let positions = all_positions.narrow(1, past, seq);
        let attention_mask = padded.then(|| full_mask.narrow(1, 0, past + seq));
        let input = ForwardInput {
            tokens: &step_tokens,
            positions: Some(&positions),
            attention_mask: attention_mask.as_ref(),
            start_at: None,
        };
        let logits = tch::no_grad(|| {
            model.forward(
                &input,
                Some(&mut cache),
                hooks,
                StopAt::Logits(LogitsFor::Last),
            )
        })?
        .ok_or_else(|| Error::InvalidArgument("forward stopped before the logits".into()))?;
        // [batch, vocab]
        let logits = logits.squeeze_dim(1);
        let next = choose(&logits, &mut sampler)?;
        for (row, &token) in next.iter().enumerate() {
            if finished[row] {
                continue;
            }
            outputs[row].push(token);
            on_token(row, token);
            if config.stop_ids.contains(&token) {
                finished[row] = true;
            }
        }
        if finished.iter().all(|&f| f) || step + 1 == config.max_new_tokens {
            break;
        }
        step_tokens = Tensor::from_slice(&next).view([batch, 1]).to_device(device);
    }
    Ok(outputs)
}

/// One token per row of `logits [batch, vocab]`, row `r` drawn by
/// `samplers[r]`, or every row by `samplers[0]` when there is one. Greedy
/// picks the first largest logit (a NaN counts as largest), as `argmax`
/// does; both run on the host, greedy on a CPU model's logits where they lie.
pub(crate) fn choose(logits: &Tensor, samplers: &mut [Sampler]) -> Result<Vec<i64>> {
    let vocab = (logits.size()[1] as usize).max(1);
    if samplers.iter().all(|s| s.config().is_greedy()) {
        if let Ok(flat) = weight_slice(logits) {
            let rows = flat.len() / vocab;
            return Ok((0..rows)
                .map(|r| first_max(flat, r * vocab..(r + 1) * vocab) as i64)
                .collect());
        }
    }
    let flat = host_f32(logits)?;
    let last = samplers.len().checked_sub(1).ok_or_else(|| {
        Error::InvalidArgument("choosing tokens needs at least one sampler".into())
    })?;
    flat.chunks(vocab)
        .enumerate()
        .map(|(r, row)| {
            let sampler = &mut samplers[r.min(last)];
            if sampler.config().is_greedy() {
                Ok(first_max(WeightSlice::F32(row), 0..row.len()) as i64)
            } else {
                sampler.sample(row)
            }
        })
        .collect()
}

/// Index within `range` of the first largest element of `values` (the first
/// NaN, if any), relative to the range's start.
fn first_max(values: WeightSlice, range: std::ops::Range<usize>) -> usize {
    let mut index = 0;
    match values {
        WeightSlice::F32(v) => first_max_of(&v[range], &mut index),
        WeightSlice::Bf16(v) => first_max_of(&v[range], &mut index),
    }
    index
}

vectorized_fn! {
    /// `index` = where the first largest element of `row` is (the first NaN,
    /// if any). Blocks of widened values are scanned with branch-free maxima,
    /// so the scan vectorises.
    fn first_max_of[E: Element](row: &[E], index: &mut usize) {
        const BLOCK: usize = 256;
        const LANES: usize = 16;
        let mut block = [0f32; BLOCK];
        let mut best = (f32::NEG_INFINITY, 0);
        for (b, chunk) in row.chunks(BLOCK).enumerate() {
            // A short last block is padded with -inf, which never wins.
            block.fill(f32::NEG_INFINITY);
            for (v, e) in block.iter_mut().zip(chunk) {
                *v = e.widen();
            }
            // Per-lane maxima: a single running maximum would be a serial chain.
            let (mut lanes, mut nan) = ([f32::NEG_INFINITY; LANES], [false; LANES]);
            for vs in block.chunks_exact(LANES) {
                for l in 0..LANES {
                    lanes[l] = if vs[l] > lanes[l] { vs[l] } else { lanes[l] };
                    nan[l] |= vs[l].is_nan();
                }
            }
            let has_nan = nan.iter().any(|&n| n);
            let max = lanes
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            let block = &block[..chunk.len()];
            let first = |hit: &dyn Fn(f32) -> bool| block.iter().position(|&v| hit(v)).unwrap_or(0);
            if has_nan {
                *index = b * BLOCK + first(&|v| v.is_nan());
                return;
            }
            if max > best.0 {
                best = (max, b * BLOCK + first(&|v| v == max));
            }
        }
        *index = best.1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(values: &[f32]) -> Vec<u16> {
        values.iter().map(|v| u16::narrow(*v)).collect()
    }

    #[test]
    fn first_max_is_the_first_largest_or_the_first_nan_on_every_cpu_path() {
        for tier in crate::machine::cpu::available() {
            crate::machine::cpu::with_tier(tier, first_max_cases);
        }
    }

    fn first_max_cases() {
        // Longer than a block, with the maximum tied across two blocks.
        let mut row = vec![-1.0f32; 700];
        row[300] = 5.0;
        row[650] = 5.0;
        row[10] = 4.0;
        for (values, range) in [(&row[..], 0..700), (&row[..], 301..700), (&row[..], 0..300)] {
            let want = range
                .clone()
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)));
            let want = want.map(|i| i - range.start).unwrap_or(0);
            assert_eq!(first_max(WeightSlice::F32(values), range.clone()), want);
            let b = bits(values);
            assert_eq!(first_max(WeightSlice::Bf16(&b), range), want);
        }
        let mut nan = row.clone();
        nan[600] = f32::NAN;
        nan[640] = f32::NAN;
        assert_eq!(first_max(WeightSlice::F32(&nan), 0..700), 600);
        assert_eq!(first_max(WeightSlice::Bf16(&bits(&nan)), 0..700), 600);
        let low = vec![f32::NEG_INFINITY; 5];
        assert_eq!(first_max(WeightSlice::F32(&low), 0..5), 0);
        assert_eq!(first_max(WeightSlice::F32(&[0.0, -0.0, 0.0]), 0..3), 0);
    }
}
