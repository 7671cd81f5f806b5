//! The sparse TopK step (only the k active latents touched) against the
//! dense autograd step, and its bf16 selection.

use saescope::io::rng::normal;
use saescope::sae::arch::topk::TopK;
use saescope::sae::arch::topk_sparse::sparse_topk_step;
use saescope::sae::{Architecture, Sae, SaeConfig, StepContext};
use tch::{Device, Kind, Tensor};

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

#[test]
fn sparse_step_equals_the_dense_autograd_step() {
    let mut cfg = SaeConfig::new("topk", 16, 64);
    cfg.k = Some(4);
    let mut sae = Sae::init(cfg.clone(), 7, Device::Cpu).unwrap();
    // Non-trivial biases so every gradient term matters.
    sae.weights.b_dec = normal(&mut rand::SeedableRng::seed_from_u64(1), &[16], 0.3);
    sae.weights.b_enc = normal(&mut rand::SeedableRng::seed_from_u64(2), &[64], 0.3);
    let x = normal(&mut rand::SeedableRng::seed_from_u64(3), &[32, 16], 1.0);
    for dead in [
        None,
        Some(
            Tensor::arange(64, (Kind::Int64, Device::Cpu))
                .remainder(3)
                .eq(0),
        ),
    ] {
        let mut ctx = StepContext::new(Some(4), 0.0);
        ctx.dead_mask = dead;
        let sparse = sparse_topk_step(&mut sae.weights, &cfg, &x, &ctx).unwrap();
        ctx.sparse = false;
        let dense = TopK.train_step(&mut sae.weights, &cfg, &x, &ctx).unwrap();
        assert!((sparse.loss - dense.loss).abs() < 1e-5 * dense.loss.abs().max(1.0));
        assert!((sparse.fvu - dense.fvu).abs() < 1e-6);
        assert!((sparse.aux_loss - dense.aux_loss).abs() < 1e-6);
        assert_eq!(sparse.l0, dense.l0);
        assert!(sparse.fire_counts.equal(&dense.fire_counts));
        for (i, (s, d)) in sparse.grads.iter().zip(&dense.grads).enumerate() {
            let diff = max_rel_diff(s, d);
            assert!(diff < 1e-4, "gradient {i} differs by {diff}");
        }
    }
}

#[test]
fn bf16_selection_keeps_f32_values_of_the_chosen_latents() {
    let mut cfg = SaeConfig::new("topk", 32, 128);
    cfg.k = Some(8);
    let mut sae = Sae::init(cfg.clone(), 3, Device::Cpu).unwrap();
    let x = normal(&mut rand::SeedableRng::seed_from_u64(4), &[64, 32], 1.0);
    let f32_step =
        sparse_topk_step(&mut sae.weights, &cfg, &x, &StepContext::new(Some(8), 0.0)).unwrap();
    let mut ctx = StepContext::new(Some(8), 0.0);
    ctx.compute_kind = Kind::BFloat16;
    let bf16_step = sparse_topk_step(&mut sae.weights, &cfg, &x, &ctx).unwrap();
    // Almost every token picks the same latents, so the losses nearly agree.
    assert!(
        (f32_step.fvu - bf16_step.fvu).abs() < 0.01 * f32_step.fvu,
        "{} vs {}",
        f32_step.fvu,
        bf16_step.fvu
    );
    let agree = f32_step
        .fire_counts
        .eq_tensor(&bf16_step.fire_counts)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(agree > 0.9, "fire counts agree on {agree}");
}
