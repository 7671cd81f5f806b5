//! The fused CPU step (short prompts and decode steps) against the libtorch
//! path it replaces: the same logits on every fixture architecture (left
//! padding included), when only some blocks have hooks, in bf16 within its
//! rounding, and the same greedy tokens.

mod common;

use common::decode::{decode_logits, max_diff};
use saescope::hooks::{FnIntervention, HookPoint, Hooks};
use saescope::model::cpu::decode_step;
use saescope::model::{
    generate, load_model, ForwardInput, GenerateConfig, LogitsFor, StopAt, Transformer,
};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tiny/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn load(name: &str, kind: Kind) -> Transformer {
    load_model(&fixture(name), Device::Cpu, kind).unwrap().model
}

fn both_ways(model: &mut Transformer, make_hooks: impl Fn() -> Vec<HookPoint>) -> f64 {
    let mut runs = Vec::new();
    for fused in [false, true] {
        model.set_fused_decode(fused);
        for prompt_len in [2, 5] {
            let mut identity = FnIntervention::new(make_hooks(), |_, _, _| Ok(None));
            let mut hooks = Hooks::new().with(&mut identity);
            runs.push(decode_logits(model, &mut hooks, prompt_len));
        }
    }
    max_diff(&runs[0], &runs[2]).max(max_diff(&runs[1], &runs[3]))
}

#[test]
fn fused_steps_match_the_libtorch_path_on_every_architecture() {
    for name in ["gpt2", "llama", "qwen2", "neox"] {
        let mut model = load(name, Kind::Float);
        let cfg = model.config().clone();
        // GPT-NeoX's erf GELU keeps the libtorch path; the others are fused.
        assert_eq!(
            decode_step::supported(&cfg, Kind::Float, Device::Cpu),
            name != "neox",
            "{name}"
        );
        let diff = both_ways(&mut model, Vec::new);
        // f32 sums in another order; 1e-4 is the parity bound against transformers.
        assert!(
            diff < 1e-4,
            "{name}: fused and libtorch logits differ by {diff}"
        );
    }
}

#[test]
fn blocks_with_hooks_keep_the_libtorch_path_and_the_rest_stay_fused() {
    let mut model = load("llama", Kind::Float);
    let n_layers = model.config().n_layers;
    assert!(n_layers >= 2);
    // A hook on block 1 only, and one on the final norm.
    let diff = both_ways(&mut model, || {
        vec![HookPoint::resid_mid(1), HookPoint::LnFinal]
    });
    assert!(diff < 1e-4, "{diff}");
    let diff = both_ways(&mut model, || vec![HookPoint::resid_pre(0)]);
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn bf16_fused_steps_stay_within_bf16_rounding() {
    let mut f32_model = load("llama", Kind::Float);
    f32_model.set_fused_decode(false);
    let exact = decode_logits(&f32_model, &mut Hooks::new(), 2);
    let mut model = load("llama", Kind::BFloat16);
    let mut runs = Vec::new();
    for fused in [false, true] {
        model.set_fused_decode(fused);
        runs.push(decode_logits(&model, &mut Hooks::new(), 2));
    }
    let scale = exact
        .iter()
        .map(|t| t.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    // Both bf16 paths sit as close to f32 as each other: a wrong rounding
    // point or kernel would put the fused one far off.
    let libtorch_err = max_diff(&runs[0], &exact);
    let fused_err = max_diff(&runs[1], &exact);
    assert!(
        fused_err <= 2.0 * libtorch_err + 0.02 * scale,
        "fused bf16 is {fused_err} from f32, libtorch bf16 {libtorch_err} (scale {scale})"
    );
    assert!(max_diff(&runs[0], &runs[1]) < 0.05 * scale);
}

#[test]
fn greedy_generation_picks_the_same_tokens_either_way() {
    let mut model = load("llama", Kind::Float);
    let config = GenerateConfig {
        max_new_tokens: 12,
        sampling: Default::default(),
        stop_ids: vec![],
    };
    for prompts in [
        vec![vec![0i64, 5, 9, 3]],
        vec![vec![0i64, 5, 9], vec![7i64]],
        // Eight sequences of uneven lengths: a batch the fused step decodes
        // whole, with left padding.
        (0..8i64)
            .map(|b| (0..1 + b % 4).map(|i| (3 * b + i) % 50).collect())
            .collect(),
    ] {
        let mut outs = Vec::new();
        for fused in [false, true] {
            model.set_fused_decode(fused);
            outs.push(generate(&model, &prompts, &config, &mut Hooks::new(), |_, _| {}).unwrap());
        }
        assert_eq!(outs[0], outs[1]);
    }
}

#[test]
fn a_full_cache_is_an_error_not_a_write_past_its_end() {
    let model = load("llama", Kind::Float);
    let prompt = Tensor::from_slice(&[0i64, 5, 9]).view([1, 3]);
    let mut cache = model.new_cache(1, 3);
    let run = |cache: &mut _, tokens: &Tensor, past: i64| {
        let pos = Tensor::from_slice(&[past]).view([1, 1]);
        let input = ForwardInput {
            tokens,
            positions: (past > 0).then_some(&pos),
            attention_mask: None,
            start_at: None,
        };
        tch::no_grad(|| {
            model.forward(
                &input,
                Some(cache),
                &mut Hooks::new(),
                StopAt::Logits(LogitsFor::Last),
            )
        })
    };
    run(&mut cache, &prompt, 0).unwrap();
    let next = Tensor::from_slice(&[4i64]).view([1, 1]);
    let err = run(&mut cache, &next, 3).unwrap_err().to_string();
    assert!(err.contains("KV cache holds 3 positions"), "{err}");
}

#[test]
fn generation_from_other_threads_gives_the_same_tokens() {
    // The fused step runs on the calling thread's OpenMP team: from a rayon
    // worker, and from two threads at once (each with a team of its own), it
    // must neither wait forever nor mix the calls up.
    let config = GenerateConfig {
        max_new_tokens: 4,
        sampling: Default::default(),
        stop_ids: vec![],
    };
    let run = |model: &Transformer| {
        generate(
            model,
            &[vec![0i64, 5]],
            &config,
            &mut Hooks::new(),
            |_, _| {},
        )
        .unwrap()
    };
    let plain = run(&load("llama", Kind::Float));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let in_pool = pool.install(|| {
        assert!(rayon::current_thread_index().is_some());
        run(&load("llama", Kind::Float))
    });
    assert_eq!(in_pool, plain);
    let concurrent: Vec<_> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| run(&load("llama", Kind::Float))))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(concurrent.iter().all(|tokens| *tokens == plain));
}

#[test]
fn fused_steps_agree_on_every_cpu_path() {
    use saescope::machine::cpu::{available, with_tier, CpuTier};
    for (name, kind, tolerance) in [
        ("llama", Kind::Float, 1e-4),
        ("qwen2", Kind::Float, 1e-4),
        // bf16: a path's different sum order may move an intermediate by one
        // rounding step, as between the fused and libtorch paths above.
        ("llama", Kind::BFloat16, 0.05),
    ] {
        let mut model = load(name, kind);
        model.set_fused_decode(true);
        let run = || decode_logits(&model, &mut Hooks::new(), 2);
        let portable = with_tier(CpuTier::Portable, run);
        let scale = portable
            .iter()
            .map(|t| t.abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        for tier in available() {
            let diff = max_diff(&with_tier(tier, run), &portable);
            assert!(
                diff <= tolerance * scale.max(1.0),
                "{name} {kind:?} at {tier}: {diff} from the portable path (scale {scale})"
            );
        }
    }
}
