//! The batched forward's fused CPU kernels (RMSNorm, rotary split of the
//! heads, causal softmax, SwiGLU) against the libtorch operators they stand
//! in for. A forward whose residual needs a gradient keeps libtorch's
//! operators throughout, so the two runs of each model differ only in those
//! kernels: f32 agrees to float rounding (sums in another order), and bf16 stays as close to the f32
//! model as libtorch's own bf16 forward.

use saescope::hooks::{FnIntervention, HookPoint, Hooks};
use saescope::model::{load_model, ForwardInput, LogitsFor, StopAt, Transformer};
use tch::{Device, Kind, Tensor};

fn load(name: &str, kind: Kind) -> Transformer {
    let path = format!("{}/tests/fixtures/tiny/{name}", env!("CARGO_MANIFEST_DIR"));
    load_model(&path, Device::Cpu, kind).unwrap().model
}

/// f32 logits of `tokens`; with `through_libtorch` the embedding is made to
/// require a gradient, which keeps every block on libtorch's operators.
fn logits(model: &Transformer, tokens: &Tensor, through_libtorch: bool) -> Tensor {
    let mut to_libtorch = FnIntervention::new(vec![HookPoint::Embed], |_, x: &Tensor, _| {
        Ok(Some(x.detach().set_requires_grad(true)))
    });
    let mut hooks = if through_libtorch {
        Hooks::new().with(&mut to_libtorch)
    } else {
        Hooks::new()
    };
    model
        .forward(
            &ForwardInput::tokens(tokens),
            None,
            &mut hooks,
            StopAt::Logits(LogitsFor::All),
        )
        .unwrap()
        .unwrap()
        .detach()
        .to_kind(Kind::Float)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn tokens() -> Tensor {
    // Two sequences of 37 positions: longer than one 16-lane vector, not a multiple of it.
    Tensor::arange(74, (Kind::Int64, Device::Cpu))
        .remainder(97)
        .view([2, 37])
}

#[test]
fn fused_kernels_match_libtorch_in_f32_on_every_architecture() {
    for name in ["gpt2", "llama", "qwen2", "neox"] {
        let model = load(name, Kind::Float);
        let fused = logits(&model, &tokens(), false);
        let reference = logits(&model, &tokens(), true);
        let diff = max_diff(&fused, &reference);
        assert!(diff < 5e-5, "{name}: fused vs libtorch {diff}");
    }
}

#[test]
fn fused_kernels_in_bf16_stay_within_libtorchs_own_rounding() {
    for name in ["llama", "qwen2"] {
        let exact = logits(&load(name, Kind::Float), &tokens(), false);
        let model = load(name, Kind::BFloat16);
        let fused = max_diff(&logits(&model, &tokens(), false), &exact);
        let libtorch = max_diff(&logits(&model, &tokens(), true), &exact);
        assert!(
            fused <= 1.5 * libtorch + 1e-3,
            "{name}: fused bf16 is {fused} from f32, libtorch bf16 {libtorch}"
        );
    }
}
