//! Autoregressive generation with a KV cache. Interventions run at every
//! step: on the prompt and on each decoded token. Prompts of different lengths
//! are left-padded and masked, with positions counted from each row's first
//! real token, as transformers does.

use tch::{Kind, Tensor};

use super::decode_step::host_f32;
use super::sampling::{Sampler, SamplingConfig};
use super::transformer::{ForwardInput, LogitsFor, StopAt, Transformer};
use crate::error::{Error, Result};
use crate::hooks::Hooks;

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
    let mut sampler = Sampler::new(config.sampling)?;
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

/// One token per row of `logits [batch, vocab]`. Greedy picks the first
/// largest logit (a NaN counts as largest), as `argmax` does; both run on the
/// host copy, which for a CPU model involves no libtorch kernel.
fn choose(logits: &Tensor, sampler: &mut Sampler) -> Result<Vec<i64>> {
    let vocab = logits.size()[1] as usize;
    let flat = host_f32(logits)?;
    flat.chunks(vocab)
        .map(|row| {
            if sampler.config().is_greedy() {
                Ok(first_max(row) as i64)
            } else {
                sampler.sample(row)
            }
        })
        .collect()
}

fn first_max(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            return i;
        }
        if v > row[best] {
            best = i;
        }
    }
    best
}
