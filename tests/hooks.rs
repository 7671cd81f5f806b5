//! Hook-point behaviour on a tiny random Llama-style model: caching,
//! identity and additive interventions, gradients, early stopping and
//! interventions during generation.

use saescope::hooks::{ActivationCache, FnIntervention, HookPoint, Hooks};
use saescope::model::weights::ModelWeights;
use saescope::model::{
    generate, ForwardInput, GenerateConfig, LogitsFor, ModelConfig, StopAt, Transformer,
};
use tch::{Device, Kind, Tensor};

fn tiny(kind: Kind) -> Transformer {
    let cfg = ModelConfig::tiny_llama();
    let weights = ModelWeights::random(&cfg, 7);
    Transformer::new(cfg, &weights, Device::Cpu, kind).unwrap()
}

fn tokens() -> Tensor {
    Tensor::from_slice(&[0i64, 5, 9, 3, 17, 42, 8, 2, 0, 11, 60, 33, 7, 7, 1, 4]).view([2, 8])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn run(model: &Transformer, hooks: &mut Hooks) -> Tensor {
    model
        .forward(
            &ForwardInput::tokens(&tokens()),
            None,
            hooks,
            StopAt::Logits(LogitsFor::All),
        )
        .unwrap()
        .unwrap()
}

#[test]
fn cached_hooks_are_consistent_with_each_other() {
    let model = tiny(Kind::Float);
    let all = HookPoint::all(3);
    let mut cache = ActivationCache::new(all.clone());
    let logits = run(&model, &mut Hooks::new().with(&mut cache));
    for l in 0..3 {
        let get = |h| cache.get(h).unwrap().shallow_clone();
        let pre = get(HookPoint::resid_pre(l));
        let mid = get(HookPoint::resid_mid(l));
        let post = get(HookPoint::resid_post(l));
        assert!(max_diff(&(&pre + get(HookPoint::attn_out(l))), &mid) < 1e-6);
        assert!(max_diff(&(&mid + get(HookPoint::mlp_out(l))), &post) < 1e-6);
        if l + 1 < 3 {
            assert_eq!(max_diff(&post, &get(HookPoint::resid_pre(l + 1))), 0.0);
        }
        let pattern = get("blocks.0.attn.hook_pattern".parse().unwrap());
        assert_eq!(pattern.size(), vec![2, 4, 8, 8]);
        let row_sums = pattern.sum_dim_intlist(-1, false, Kind::Float);
        assert!(max_diff(&row_sums, &row_sums.ones_like()) < 1e-5);
        // causal: nothing above the diagonal
        assert_eq!(pattern.triu(1).abs().max().double_value(&[]), 0.0);
        assert_eq!(
            get(format!("blocks.{l}.attn.hook_z").parse().unwrap()).size(),
            vec![2, 8, 4, 8]
        );
        assert_eq!(
            get(format!("blocks.{l}.mlp.hook_post").parse().unwrap()).size(),
            vec![2, 8, 48]
        );
    }
    // ln_final is what the unembedding reads.
    let normed = cache.get(HookPoint::LnFinal).unwrap();
    let by_hand = normed.linear::<Tensor>(model.unembed_weight(), None);
    assert!(max_diff(&by_hand, &logits) < 1e-5);
    // Caching (which makes the pattern explicit) changes nothing.
    assert!(max_diff(&logits, &run(&model, &mut Hooks::new())) < 1e-5);
}

#[test]
fn identity_intervention_changes_nothing() {
    let model = tiny(Kind::Float);
    let clean = run(&model, &mut Hooks::new());
    let mut identity = FnIntervention::new(HookPoint::all(3), |_, x, _| Ok(Some(x.copy())));
    let hooked = run(&model, &mut Hooks::new().with(&mut identity));
    assert!(
        max_diff(&clean, &hooked) < 1e-5,
        "{}",
        max_diff(&clean, &hooked)
    );
}

#[test]
fn adding_at_resid_post_equals_adding_by_hand() {
    let model = tiny(Kind::Float);
    let v = Tensor::randn([32], (Kind::Float, Device::Cpu));
    let hook = HookPoint::resid_post(1);
    let mut add = FnIntervention::new(vec![hook], |_, x, _| Ok(Some(x + &v)));
    let hooked = run(&model, &mut Hooks::new().with(&mut add));

    // By hand: stop after the hook, add, and continue from block 2.
    let mut cache = ActivationCache::new([hook]);
    let stopped = model
        .forward(
            &ForwardInput::tokens(&tokens()),
            None,
            &mut Hooks::new().with(&mut cache),
            StopAt::After(hook),
        )
        .unwrap();
    assert!(stopped.is_none());
    let resid = cache.get(hook).unwrap() + &v;
    let toks = tokens();
    let input = ForwardInput {
        start_at: Some((2, &resid)),
        ..ForwardInput::tokens(&toks)
    };
    let by_hand = model
        .forward(
            &input,
            None,
            &mut Hooks::new(),
            StopAt::Logits(LogitsFor::All),
        )
        .unwrap()
        .unwrap();
    assert!(max_diff(&hooked, &by_hand) < 1e-5);
    assert!(
        max_diff(&hooked, &run(&model, &mut Hooks::new())) > 1e-2,
        "the vector had no effect"
    );
}

#[test]
fn scalar_gradient_matches_finite_difference() {
    let model = tiny(Kind::Double);
    let objective = |s: &Tensor| -> Tensor {
        let mut scale =
            FnIntervention::new(vec![HookPoint::attn_out(1)], |_, x, _| Ok(Some(x * s)));
        let logits = run(&model, &mut Hooks::new().with(&mut scale));
        // A log-prob, as the steering objectives use.
        logits.log_softmax(-1, Kind::Double).get(0).get(-1).get(5)
    };
    let s = Tensor::from(1.3f64).set_requires_grad(true);
    let loss = objective(&s);
    loss.backward();
    let grad = s.grad().double_value(&[]);
    let h = 1e-5;
    let f = |x: f64| tch::no_grad(|| objective(&Tensor::from(x)).double_value(&[]));
    let numeric = (f(1.3 + h) - f(1.3 - h)) / (2.0 * h);
    assert!(
        (grad - numeric).abs() < 1e-6 * (1.0 + numeric.abs()),
        "autograd {grad} vs numeric {numeric}"
    );
    assert!(grad.abs() > 1e-4, "degenerate test: zero gradient");
}

#[test]
fn stopping_early_gives_the_same_cache_as_a_full_forward() {
    let model = tiny(Kind::Float);
    let wanted = [HookPoint::resid_post(0), HookPoint::resid_mid(1)];
    let mut full = ActivationCache::new(wanted);
    let _ = run(&model, &mut Hooks::new().with(&mut full));

    let mut early = ActivationCache::new(wanted);
    // A hook past the stop point must not be reached.
    let mut later = FnIntervention::new(
        vec![HookPoint::resid_post(1), HookPoint::LnFinal],
        |h, _, _| panic!("{h} ran after the stop point"),
    );
    let mut hooks = Hooks::new().with(&mut early).with(&mut later);
    let stop = HookPoint::resid_mid(1);
    let out = model
        .forward(
            &ForwardInput::tokens(&tokens()),
            None,
            &mut hooks,
            StopAt::After(stop),
        )
        .unwrap();
    assert!(out.is_none());
    for h in wanted {
        assert_eq!(
            max_diff(full.get(h).unwrap(), early.get(h).unwrap()),
            0.0,
            "{h}"
        );
    }
}

#[test]
fn unknown_or_out_of_range_hooks_are_refused() {
    let model = tiny(Kind::Float);
    let err = model
        .forward(
            &ForwardInput::tokens(&tokens()),
            None,
            &mut Hooks::new(),
            StopAt::After(HookPoint::resid_post(3)),
        )
        .unwrap_err();
    assert!(err.to_string().contains("3 blocks"), "{err}");
    assert!(HookPoint::parse_for("blocks.1.hook_resid_middle", 3).is_err());
}

#[test]
fn generation_runs_interventions_at_every_step() {
    let model = tiny(Kind::Float);
    let prompts = vec![vec![0i64, 5, 9, 3], vec![0i64, 17, 42]];
    let config = GenerateConfig {
        max_new_tokens: 6,
        sampling: Default::default(),
        stop_ids: vec![],
    };
    let last = HookPoint::resid_post(2);
    let v = Tensor::randn([32], (Kind::Float, Device::Cpu)) * 5.0;

    let mut plain_final = ActivationCache::new([HookPoint::LnFinal]).accumulating();
    let plain = generate(
        &model,
        &prompts,
        &config,
        &mut Hooks::new().with(&mut plain_final),
        |_, _| {},
    )
    .unwrap();

    let mut calls = Vec::new();
    let mut steer = FnIntervention::new(vec![last], |_, x, ctx| {
        calls.push((ctx.decode_step, x.size()[1]));
        Ok(Some(x + &v))
    });
    let mut steered_final = ActivationCache::new([HookPoint::LnFinal]).accumulating();
    let mut hooks = Hooks::new().with(&mut steer).with(&mut steered_final);
    let steered = generate(&model, &prompts, &config, &mut hooks, |_, _| {}).unwrap();
    drop(hooks);

    // One call on the (padded) prompt, then one per decode step.
    assert_eq!(calls.len(), 6);
    assert_eq!(calls[0], (false, 4));
    assert!(calls[1..].iter().all(|&c| c == (true, 1)));
    // The final residual differs at every step.
    let (a, b) = (
        plain_final.get(HookPoint::LnFinal).unwrap(),
        steered_final.get(HookPoint::LnFinal).unwrap(),
    );
    assert_eq!(a.size(), vec![2, 6, 32]);
    for step in 0..6 {
        let d = max_diff(&a.narrow(1, step, 1), &b.narrow(1, step, 1));
        assert!(d > 1e-2, "step {step}: steered equals plain ({d})");
    }
    assert_eq!(plain.len(), 2);
    assert_eq!(steered[0].len(), 6);
}

#[test]
fn cached_generation_matches_full_forwards() {
    // Greedy decoding with the KV cache (and left padding) must pick the same
    // tokens as re-running the whole sequence without a cache.
    let model = tiny(Kind::Float);
    let prompts = vec![vec![0i64, 5, 9, 3, 12], vec![0i64, 17]];
    let config = GenerateConfig {
        max_new_tokens: 5,
        sampling: Default::default(),
        stop_ids: vec![],
    };
    let out = generate(&model, &prompts, &config, &mut Hooks::new(), |_, _| {}).unwrap();
    for (prompt, new) in prompts.iter().zip(&out) {
        let mut seq = prompt.clone();
        for &expected in new {
            let t = Tensor::from_slice(&seq).view([1, -1]);
            let logits = model.logits(&t).unwrap();
            let best = logits.get(0).get(-1).argmax(-1, false).int64_value(&[]);
            assert_eq!(best, expected, "prompt {prompt:?}");
            seq.push(expected);
        }
    }
}

#[test]
fn run_with_cache_returns_the_hooks_of_a_plain_forward_and_stops_after_the_last() {
    let model = tiny(Kind::Float);
    let wanted = [
        HookPoint::resid_post(0),
        HookPoint::mlp_out(1),
        HookPoint::Block(1, saescope::hooks::BlockSite::AttnZ),
    ];
    let mut cache = ActivationCache::new(wanted);
    let logits = run(&model, &mut Hooks::new().with(&mut cache));

    let ids = tokens();
    let input = ForwardInput::tokens(&ids);
    let mut full = model
        .run_with_cache(&input, &wanted, Some(LogitsFor::All))
        .unwrap();
    assert_eq!(max_diff(full.logits.as_ref().unwrap(), &logits), 0.0);
    for hook in wanted {
        assert_eq!(
            max_diff(&full.take(hook).unwrap(), cache.get(hook).unwrap()),
            0.0
        );
    }
    assert!(full.take(HookPoint::resid_post(0)).is_err(), "taken twice");

    // Without logits the pass ends at the last hook; rows flatten heads.
    let mut early = model.run_with_cache(&input, &wanted, None).unwrap();
    assert!(early.logits.is_none());
    let z = early
        .take_rows(HookPoint::Block(1, saescope::hooks::BlockSite::AttnZ))
        .unwrap();
    let cfg = model.config();
    assert_eq!(z.size(), [2, 8, cfg.n_heads * cfg.d_head]);
    let rows = model
        .hook_rows(&tokens(), &[HookPoint::resid_post(0)])
        .unwrap();
    assert_eq!(
        max_diff(&rows[0], cache.get(HookPoint::resid_post(0)).unwrap()),
        0.0
    );

    // Patterns have no row per token; an empty hook list is an error.
    let pattern = HookPoint::Block(0, saescope::hooks::BlockSite::AttnPattern);
    let mut run = model.run_with_cache(&input, &[pattern], None).unwrap();
    assert!(run.take_rows(pattern).is_err());
    assert!(model.run_with_cache(&input, &[], None).is_err());
}
