//! Steering inside the fused decode step: interventions that can say what
//! they do as row edits at a block's residual-stream sites (steering vectors,
//! per-site, per-position and per-head activation scaling, DynScalar, SAE
//! feature additions, clamps and ablations, and the amplify and calibrate
//! runtime strategies) run on the fused path, and give the libtorch
//! path's logits and greedy tokens, on the tiny GPT-2, Llama and Qwen2 and on
//! SmolLM2-135M; the rest keep the libtorch path.

mod common;

use common::decode::{decode_logits, max_diff};
use saescope::hooks::{ForSequences, HookContext, HookPoint, Hooks, Intervention, RowEdit};
use saescope::model::{generate, load_model, GenerateConfig, Transformer};
use saescope::sae::{Sae, SaeConfig};
use saescope::steer::kinds::dyn_scalar::DynScalar;
use saescope::steer::kinds::sae_features::{FeatureEdit, FeatureOp, SaeFeatureSteer};
use saescope::steer::kinds::sae_runtime::{Condition, SaeRuntimeSteer, Strategy};
use saescope::steer::kinds::scaling::{default_sites, ActivationScaling, Granularity};
use saescope::steer::kinds::vector::SteeringVector;
use tch::{Device, Kind, Tensor};

fn load(name: &str, kind: Kind) -> Transformer {
    let path = format!("{}/tests/fixtures/tiny/{name}", env!("CARGO_MANIFEST_DIR"));
    load_model(&path, Device::Cpu, kind).unwrap().model
}

/// Counts how an intervention is used: through `apply` (the libtorch path)
/// or through `row_edits` (the fused step).
struct Counting<I> {
    inner: I,
    applied: usize,
    edited: usize,
}

impl<I: Intervention + ?Sized> Intervention for Counting<Box<I>> {
    fn wants(&self, hook: HookPoint) -> bool {
        self.inner.wants(hook)
    }
    fn apply(
        &mut self,
        hook: HookPoint,
        x: &Tensor,
        ctx: &HookContext,
    ) -> saescope::Result<Option<Tensor>> {
        self.applied += 1;
        self.inner.apply(hook, x, ctx)
    }
    fn row_edits(
        &mut self,
        hook: HookPoint,
        ctx: &HookContext,
    ) -> saescope::Result<Option<Vec<RowEdit>>> {
        self.edited += 1;
        self.inner.row_edits(hook, ctx)
    }
}

/// Builds a fresh intervention for each run.
type MakeSteer = Box<dyn Fn() -> Box<dyn Intervention>>;

/// The steers under test for a model: a vector at every block's residual
/// stream, vectors at attention and MLP outputs, and per-site scaling.
fn steers(model: &Transformer) -> Vec<(&'static str, MakeSteer)> {
    let (n, d) = (model.config().n_layers, model.config().d_model);
    tch::manual_seed(7);
    let resid: Vec<HookPoint> = (0..n).map(HookPoint::resid_post).collect();
    let outputs = default_sites(n, Granularity::Site);
    let v_resid = Tensor::randn([n as i64, d], (Kind::Float, Device::Cpu));
    let v_out = Tensor::randn([outputs.len() as i64, d], (Kind::Float, Device::Cpu));
    let scalars = Tensor::rand([outputs.len() as i64, 1, 1], (Kind::Float, Device::Cpu)) * 2.0;
    let dyn_weight = Tensor::randn([outputs.len() as i64, d], (Kind::Float, Device::Cpu)) * 0.5;
    let dyn_bias = Tensor::randn([outputs.len() as i64], (Kind::Float, Device::Cpu)) * 0.2;
    let heads = model.config().n_heads;
    let head_sites = default_sites(n, Granularity::Head);
    let per_head = Tensor::rand(
        [head_sites.len() as i64, heads, 1],
        (Kind::Float, Device::Cpu),
    ) * 2.0;
    // Two SAE features added at the last block's output.
    let mut sae_cfg = SaeConfig::new("topk", d as usize, 2 * d as usize);
    sae_cfg.k = Some(4);
    let sae = Sae::init(sae_cfg, 3, Device::Cpu).unwrap();
    let last = HookPoint::resid_post(n - 1);
    let jump_sae = Sae::init(
        SaeConfig::new("jumprelu", d as usize, 2 * d as usize),
        4,
        Device::Cpu,
    )
    .unwrap();
    let mid = HookPoint::resid_post(n / 2);
    let runtime = std::rc::Rc::new(
        move |strategy, features: Vec<usize>, magnitude, condition| {
            let sae = jump_sae.to_device(Device::Cpu).unwrap();
            Box::new(
                SaeRuntimeSteer::new(
                    sae,
                    "sae".into(),
                    mid,
                    strategy,
                    features,
                    magnitude,
                    condition,
                )
                .unwrap(),
            ) as Box<dyn Intervention>
        },
    );
    let runtime_a = runtime;
    let clamp_sae = sae.to_device(Device::Cpu).unwrap();
    let jump_clamp_sae = Sae::init(
        SaeConfig::new("jumprelu", d as usize, 2 * d as usize),
        5,
        Device::Cpu,
    )
    .unwrap();
    // One factor per position for the first three positions: the prompt and
    // the first decode step are scaled, row by row (left padding shifts them).
    let per_position = Tensor::rand([outputs.len() as i64, 1, 3], (Kind::Float, Device::Cpu)) * 2.0;
    let (sites_a, sites_b, sites_c, sites_d, sites_e) = (
        resid.clone(),
        outputs.clone(),
        outputs.clone(),
        outputs.clone(),
        outputs,
    );
    vec![
        (
            "vector at resid_post",
            Box::new(move || {
                Box::new(SteeringVector::new(sites_a.clone(), v_resid.copy(), 0.5).unwrap())
            }),
        ),
        (
            "vectors at attn_out and mlp_out",
            Box::new(move || {
                Box::new(SteeringVector::new(sites_b.clone(), v_out.copy(), 1.0).unwrap())
            }),
        ),
        (
            "per-site scaling",
            Box::new(move || {
                Box::new(
                    ActivationScaling::new(
                        sites_c.clone(),
                        Granularity::Site,
                        None,
                        scalars.copy(),
                    )
                    .unwrap(),
                )
            }),
        ),
        (
            "per-position scaling",
            Box::new(move || {
                Box::new(
                    ActivationScaling::new(
                        sites_e.clone(),
                        Granularity::Site,
                        Some(3),
                        per_position.copy(),
                    )
                    .unwrap(),
                )
            }),
        ),
        (
            "per-head scaling",
            Box::new(move || {
                Box::new(
                    ActivationScaling::new(
                        head_sites.clone(),
                        Granularity::Head,
                        None,
                        per_head.copy(),
                    )
                    .unwrap(),
                )
            }),
        ),
        (
            "SAE feature additions",
            Box::new(move || {
                let edits = vec![
                    FeatureEdit {
                        feature: 1,
                        op: FeatureOp::Add { alpha: 4.0 },
                    },
                    FeatureEdit {
                        feature: 5,
                        op: FeatureOp::Add { alpha: -2.5 },
                    },
                ];
                let sae = sae.to_device(Device::Cpu).unwrap();
                Box::new(SaeFeatureSteer::new(sae, "sae".into(), last, edits, true).unwrap())
            }),
        ),
        (
            "SAE feature clamps, TopK",
            Box::new(move || {
                let edits = vec![
                    FeatureEdit {
                        feature: 1,
                        op: FeatureOp::Clamp { value: 3.0 },
                    },
                    FeatureEdit {
                        feature: 7,
                        op: FeatureOp::Ablate,
                    },
                    FeatureEdit {
                        feature: 2,
                        op: FeatureOp::Add { alpha: 1.5 },
                    },
                ];
                let sae = clamp_sae.to_device(Device::Cpu).unwrap();
                Box::new(SaeFeatureSteer::new(sae, "sae".into(), last, edits, true).unwrap())
            }),
        ),
        (
            "SAE feature clamps, JumpReLU",
            Box::new(move || {
                let edits = vec![FeatureEdit {
                    feature: 4,
                    op: FeatureOp::Clamp { value: -2.0 },
                }];
                let sae = jump_clamp_sae.to_device(Device::Cpu).unwrap();
                Box::new(SaeFeatureSteer::new(sae, "sae".into(), mid, edits, true).unwrap())
            }),
        ),
        (
            "runtime amplify",
            Box::new(move || runtime_a(Strategy::Amplify, vec![1, 2, 3], 4.0, None)),
        ),
        (
            "DynScalar",
            Box::new(move || {
                Box::new(
                    DynScalar::new(sites_d.clone(), dyn_weight.copy(), dyn_bias.copy()).unwrap(),
                )
            }),
        ),
    ]
}

#[test]
fn steered_fused_steps_match_the_libtorch_path_and_take_the_fused_path() {
    for name in ["gpt2", "llama", "qwen2"] {
        let mut model = load(name, Kind::Float);
        for (what, make) in steers(&model) {
            let mut runs = Vec::new();
            for fused in [false, true] {
                model.set_fused_decode(fused);
                let mut counting = Counting {
                    inner: make(),
                    applied: 0,
                    edited: 0,
                };
                let mut hooks = Hooks::new().with(&mut counting);
                // A 2-token prompt, which the fused step takes too, then 3 steps.
                runs.push(decode_logits(&model, &mut hooks, 2));
                if fused {
                    // SAE feature edits leave BOS rows alone, so the prompt
                    // step (which holds position 0) keeps libtorch.
                    let prompt_calls = usize::from(what.starts_with("SAE"));
                    assert!(
                        counting.applied <= prompt_calls,
                        "{name}, {what}: fell back to libtorch"
                    );
                    assert!(counting.edited > 0, "{name}, {what}");
                } else {
                    assert_eq!(counting.edited, 0, "{name}, {what}");
                }
            }
            let diff = max_diff(&runs[0], &runs[1]);
            assert!(
                diff < 1e-4,
                "{name}, {what}: fused and libtorch differ by {diff}"
            );
            // The steer changes the logits, so the comparison is not vacuous.
            let plain = decode_logits(&model, &mut Hooks::new(), 2);
            assert!(
                max_diff(&plain, &runs[1]) > 1e-2,
                "{name}, {what}: no effect"
            );
        }
    }
}

/// Decode logits ([`decode_logits`], 2-token prompt) with a fresh steer from
/// `make`, on the libtorch path and then on the fused one.
fn libtorch_then_fused(model: &mut Transformer, make: &MakeSteer) -> Vec<Vec<Tensor>> {
    [false, true]
        .into_iter()
        .map(|fused| {
            model.set_fused_decode(fused);
            let mut steer = make();
            let mut hooks = Hooks::new().with(steer.as_mut());
            decode_logits(model, &mut hooks, 2)
        })
        .collect()
}

#[test]
fn bf16_steered_fused_steps_stay_within_bf16_rounding() {
    let mut model = load("llama", Kind::BFloat16);
    for (what, make) in steers(&model) {
        let runs = libtorch_then_fused(&mut model, &make);
        let scale = runs[0]
            .iter()
            .map(|t| t.abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        let diff = max_diff(&runs[0], &runs[1]);
        assert!(diff < 0.05 * scale, "{what}: {diff} apart (scale {scale})");
    }
}

#[test]
fn steered_greedy_generation_picks_the_same_tokens_either_way() {
    let mut model = load("llama", Kind::Float);
    let config = GenerateConfig {
        max_new_tokens: 12,
        sampling: Default::default(),
        stop_ids: vec![],
    };
    let prompts: Vec<Vec<i64>> = (0..8i64)
        .map(|b| (0..1 + b % 4).map(|i| (3 * b + i) % 50).collect())
        .collect();
    for (what, make) in steers(&model) {
        let mut outs = Vec::new();
        for fused in [false, true] {
            model.set_fused_decode(fused);
            let mut steer = make();
            let mut hooks = Hooks::new().with(steer.as_mut());
            outs.push(generate(&model, &prompts, &config, &mut hooks, |_, _| {}).unwrap());
        }
        assert_eq!(outs[0], outs[1], "{what}");
    }
}

#[test]
fn per_head_scaling_by_position_keeps_the_libtorch_path() {
    let mut model = load("llama", Kind::Float);
    model.set_fused_decode(true);
    let n = model.config().n_layers;
    let heads = model.config().n_heads as usize;
    let steer = ActivationScaling::identity(
        default_sites(n, Granularity::Head),
        Granularity::Head,
        heads,
        Some(3),
        Device::Cpu,
    )
    .unwrap();
    let mut counting = Counting {
        inner: Box::new(steer),
        applied: 0,
        edited: 0,
    };
    let mut hooks = Hooks::new().with(&mut counting);
    tch::no_grad(|| decode_logits(&model, &mut hooks, 2));
    assert!(
        counting.applied > 0,
        "per-head scaling has no fused form yet"
    );
}

#[test]
fn steered_smollm2_gives_the_libtorch_logits_on_the_fused_path() {
    let mut model = load_model("smollm2-135m", Device::Cpu, Kind::Float)
        .expect("run scripts/setup.sh")
        .model;
    // The unsteered fused step's own distance from libtorch on this model.
    let mut plain = Vec::new();
    for fused in [false, true] {
        model.set_fused_decode(fused);
        plain.push(decode_logits(&model, &mut Hooks::new(), 2));
    }
    let unsteered = max_diff(&plain[0], &plain[1]);
    for (what, make) in steers(&model) {
        let runs = libtorch_then_fused(&mut model, &make);
        let diff = max_diff(&runs[0], &runs[1]);
        eprintln!("SmolLM2, {what}: {diff} apart (unsteered: {unsteered})");
        assert!(
            diff <= 2.0 * unsteered,
            "SmolLM2, {what}: fused and libtorch differ by {diff}, unsteered by {unsteered}"
        );
    }
}

/// Row `i` of each step's `[batch, 1, vocab]` logits.
fn sequence(logits: &[Tensor], i: i64) -> Vec<Tensor> {
    logits.iter().map(|t| t.get(i)).collect()
}

#[test]
fn sequences_of_one_batch_carry_their_own_steers_on_the_fused_path() {
    let mut model = load("llama", Kind::Float);
    let steers = steers(&model);
    let find = |name: &str| &steers.iter().find(|(what, _)| *what == name).unwrap().1;
    let (vector, scaling) = (
        find("vectors at attn_out and mlp_out"),
        find("per-site scaling"),
    );
    // Sequence 0 steered by the vectors, sequence 1 by the scaling.
    let mut mixed = Vec::new();
    for fused in [false, true] {
        model.set_fused_decode(fused);
        let mut first = Counting {
            inner: Box::new(ForSequences {
                sequences: vec![true, false],
                inner: vector(),
            }),
            applied: 0,
            edited: 0,
        };
        let mut second = ForSequences {
            sequences: vec![false, true],
            inner: scaling(),
        };
        let mut hooks = Hooks::new().with(&mut first).with(&mut second);
        mixed.push(decode_logits(&model, &mut hooks, 2));
        if fused {
            assert_eq!(first.applied, 0, "fell back to libtorch");
            assert!(first.edited > 0);
        }
    }
    let diff = max_diff(&mixed[0], &mixed[1]);
    assert!(diff < 1e-4, "fused and libtorch differ by {diff}");
    // Each sequence gets what it gets when the whole batch carries its steer.
    let all_vector = libtorch_then_fused(&mut model, vector).pop().unwrap();
    let all_scaling = libtorch_then_fused(&mut model, scaling).pop().unwrap();
    for (i, whole) in [(0, &all_vector), (1, &all_scaling)] {
        let diff = max_diff(&sequence(&mixed[1], i), &sequence(whole, i));
        assert!(
            diff < 1e-4,
            "sequence {i}: {diff} from its steer applied to the whole batch"
        );
    }
    // And the two steers differ, so the check can fail.
    assert!(max_diff(&sequence(&all_vector, 0), &sequence(&all_scaling, 0)) > 1e-2);
}

/// A conditioned runtime steer reads its condition over the whole call, so it
/// runs fused on calls of one row: the decode steps of one sequence.
#[test]
fn a_conditioned_runtime_steer_decodes_one_sequence_on_the_fused_path() {
    let mut model = load("llama", Kind::Float);
    let d = model.config().d_model as usize;
    let hook = HookPoint::resid_post(1);
    let sae = Sae::init(SaeConfig::new("jumprelu", d, 2 * d), 4, Device::Cpu).unwrap();
    let config = GenerateConfig {
        max_new_tokens: 10,
        sampling: Default::default(),
        stop_ids: vec![],
    };
    let prompt = vec![vec![3i64, 17, 9]];
    let mut outs = Vec::new();
    for (threshold, fused) in [(0.0, false), (0.0, true), (f64::MAX, true)] {
        model.set_fused_decode(fused);
        let condition = Condition {
            features: (0..16).collect(),
            threshold,
        };
        let steer = SaeRuntimeSteer::new(
            sae.to_device(Device::Cpu).unwrap(),
            "sae".into(),
            hook,
            Strategy::Calibrate,
            vec![5, 6],
            6.0,
            Some(condition),
        )
        .unwrap();
        let mut counting = Counting {
            inner: Box::new(steer),
            applied: 0,
            edited: 0,
        };
        let mut hooks = Hooks::new().with(&mut counting);
        outs.push(generate(&model, &prompt, &config, &mut hooks, |_, _| {}).unwrap());
        if fused {
            // The prompt (three rows) keeps libtorch; the nine steps do not.
            assert_eq!(counting.applied, 1);
            assert!(counting.edited >= 9, "{}", counting.edited);
        }
    }
    assert_eq!(outs[0], outs[1]);
    // A condition never met leaves generation unsteered, and that differs.
    model.set_fused_decode(true);
    let plain = generate(&model, &prompt, &config, &mut Hooks::new(), |_, _| {}).unwrap();
    assert_eq!(outs[2], plain);
    assert_ne!(outs[1], plain, "the steer did nothing");
}
