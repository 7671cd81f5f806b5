//! Low-precision models (bf16, f16) follow the f32 model: the same forward
//! through bf16 matmuls, batched-matmul attention and an f32 KV cache.

use saescope::hooks::Hooks;
use saescope::model::weights::ModelWeights;
use saescope::model::{generate, GenerateConfig, ModelConfig, Transformer};
use tch::{Device, Kind, Tensor};

fn model(kind: Kind) -> Transformer {
    let cfg = ModelConfig::tiny_llama();
    Transformer::new(
        cfg.clone(),
        &ModelWeights::random(&cfg, 11),
        Device::Cpu,
        kind,
    )
    .unwrap()
}

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (
        a.to_kind(Kind::Double).view([-1]),
        b.to_kind(Kind::Double).view([-1]),
    );
    (a.dot(&b) / (a.norm() * b.norm())).double_value(&[])
}

#[test]
fn low_precision_logits_follow_f32() {
    let tokens = Tensor::from_slice(&[0i64, 5, 9, 3, 17, 42, 8, 2, 30, 11]).view([2, 5]);
    let reference = model(Kind::Float).logits(&tokens).unwrap();
    for kind in [Kind::BFloat16, Kind::Half] {
        let logits = model(kind).logits(&tokens).unwrap();
        assert_eq!(logits.kind(), kind);
        let c = cosine(&reference, &logits);
        assert!(c > 0.999, "{kind:?}: cosine {c}");
    }
}

#[test]
fn low_precision_cached_decoding_follows_a_full_forward() {
    // Decoding with the (f32) KV cache must give the logits a full bf16
    // forward gives for the same sequence.
    let m = model(Kind::BFloat16);
    let prompt = vec![0i64, 5, 9, 3];
    let config = GenerateConfig {
        max_new_tokens: 4,
        sampling: Default::default(),
        stop_ids: vec![],
    };
    let new = generate(
        &m,
        std::slice::from_ref(&prompt),
        &config,
        &mut Hooks::new(),
        |_, _| {},
    )
    .unwrap();
    let mut seq = prompt;
    for &token in &new[0] {
        let logits = m.logits(&Tensor::from_slice(&seq).view([1, -1])).unwrap();
        let top2 = logits
            .get(0)
            .get(-1)
            .to_kind(Kind::Float)
            .topk(2, -1, true, true)
            .0;
        let (best, second) = (top2.double_value(&[0]), top2.double_value(&[1]));
        let chosen = logits.get(0).get(-1).double_value(&[token]);
        // The cached step may break a near-tie differently, never more.
        assert!(
            best - chosen <= 0.05 * (1.0 + best.abs()) || best - second < 0.05,
            "token {token}: {chosen} vs best {best}"
        );
        seq.push(token);
    }
}
