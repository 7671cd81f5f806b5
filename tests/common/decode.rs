//! Decoding through a model step by step, for the tests that compare the
//! fused CPU step with the libtorch path.

use saescope::hooks::Hooks;
use saescope::model::{ForwardInput, LogitsFor, StopAt, Transformer};
use tch::{Device, Kind, Tensor};

/// Logits `[batch, 1, vocab]` (f32) of a left-padded prompt pair (of 2
/// positions, which the fused step takes whole, or 5, which it leaves to
/// libtorch) and of three decode steps after it, with `hooks` at every call.
pub fn decode_logits(model: &Transformer, hooks: &mut Hooks, prompt_len: i64) -> Vec<Tensor> {
    let ids = [0i64, 0, 5, 9, 3, 17, 42, 8, 2, 11];
    let prompt = Tensor::from_slice(&ids[..2 * prompt_len as usize]).view([2, prompt_len]);
    // Row 0 starts with padding; the prompt, then 3 decoded positions.
    let capacity = prompt_len + 3;
    let mask = Tensor::ones([2, capacity], (Kind::Int64, Device::Cpu));
    let _ = mask.get(0).get(0).fill_(0);
    let positions = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    let mut cache = model.new_cache(2, capacity);
    let mut step_tokens = prompt;
    let mut out = Vec::new();
    for _ in 0..4 {
        let (past, seq) = (cache.len(), step_tokens.size()[1]);
        let pos = positions.narrow(1, past, seq);
        let m = mask.narrow(1, 0, past + seq);
        let input = ForwardInput {
            tokens: &step_tokens,
            positions: Some(&pos),
            attention_mask: Some(&m),
            start_at: None,
        };
        let logits = tch::no_grad(|| {
            model.forward(
                &input,
                Some(&mut cache),
                hooks,
                StopAt::Logits(LogitsFor::Last),
            )
        })
        .unwrap()
        .unwrap()
        .to_kind(Kind::Float);
        step_tokens = logits.argmax(-1, false).view([2, 1]);
        out.push(logits);
    }
    out
}

pub fn max_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}
