//! Steering interventions on the tiny Llama fixture: each kind changes the
//! activation exactly as defined, an SAE clamp with its error term is
//! lossless, the objective's gradient matches finite differences, learning
//! flips a small task, files round-trip, and bad files are clear errors.

mod common;

use std::path::Path;

use saescope::hooks::names::BlockSite;
use saescope::hooks::{ActivationCache, HookPoint, Hooks};
use saescope::model::{load_model, LoadedModel};
use saescope::sae::{Sae, SaeConfig};
use saescope::steer::kinds::dyn_scalar::DynScalar;
use saescope::steer::kinds::sae_features::{FeatureEdit, FeatureOp, SaeFeatureSteer};
use saescope::steer::kinds::sae_runtime::{SaeRuntimeSteer, Strategy};
use saescope::steer::kinds::scaling::{ActivationScaling, Granularity};
use saescope::steer::kinds::vector::SteeringVector;
use saescope::steer::learn::last_logits;
use saescope::steer::learn::objective::{objective, Effect, ObjectiveWeights};
use saescope::steer::{evaluate_steers, learn, load_steers, save_steers, LearnConfig, Steer, Task};
use tch::{Device, Kind, Tensor};

fn tokens() -> Tensor {
    Tensor::from_slice(&[1i64, 5, 9, 3, 17, 42, 1, 11, 60, 33, 7, 7]).view([2, 6])
}

/// The activation at `hook` with and without `steer` (which runs first).
fn before_after(model: &LoadedModel, steer: &mut dyn Steer, hook: HookPoint) -> (Tensor, Tensor) {
    let mut clean = ActivationCache::new([hook]);
    let _ =
        tch::no_grad(|| last_logits(model, &tokens(), &mut Hooks::new().with(&mut clean))).unwrap();
    let mut after = ActivationCache::new([hook]);
    let _ = tch::no_grad(|| {
        last_logits(
            model,
            &tokens(),
            &mut Hooks::new().with(steer).with(&mut after),
        )
    })
    .unwrap();
    (clean.take(hook).unwrap(), after.take(hook).unwrap())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn each_intervention_changes_its_activation_exactly_as_defined() {
    let model = common::tiny_llama();
    let cfg = model.model.config();
    let (d, heads) = (cfg.d_model, cfg.n_heads);

    // Per-site, per-position scaling: positions 0..3 scaled, later ones untouched.
    let site = HookPoint::mlp_out(1);
    let scalars = Tensor::from_slice(&[2.0f32, -1.0, 0.5]).view([1, 1, 3]);
    let mut s = ActivationScaling::new(vec![site], Granularity::Site, Some(3), scalars).unwrap();
    let (a, b) = before_after(&model, &mut s, site);
    let factor = Tensor::from_slice(&[2.0f32, -1.0, 0.5, 1.0, 1.0, 1.0]).view([1, 6, 1]);
    assert!(max_diff(&(a * factor), &b) < 1e-6);

    // Per-head scaling at attn.hook_z: head h multiplied by its own scalar.
    let z = HookPoint::Block(0, BlockSite::AttnZ);
    let per_head = Tensor::arange(heads, (Kind::Float, Device::Cpu)).view([1, heads, 1]);
    let mut s = ActivationScaling::new(vec![z], Granularity::Head, None, per_head.copy()).unwrap();
    let (a, b) = before_after(&model, &mut s, z);
    assert!(max_diff(&(a * per_head.view([1, 1, heads, 1])), &b) < 1e-6);

    // A steering vector is added at every position.
    let v = saescope::io::rng::normal(&mut rand::SeedableRng::seed_from_u64(1), &[1, d], 1.0);
    let mut s = SteeringVector::new(vec![site], v.copy(), 0.5).unwrap();
    let (a, b) = before_after(&model, &mut s, site);
    assert!(max_diff(&(a + v.view([1, 1, d]) * 0.5), &b) < 1e-5);

    // DynScalar: s(a) = 1 + w·a/‖a‖ + b.
    let w = saescope::io::rng::normal(&mut rand::SeedableRng::seed_from_u64(2), &[1, d], 0.3);
    let mut s = DynScalar::new(vec![site], w.copy(), Tensor::from_slice(&[0.25f32])).unwrap();
    let (a, b) = before_after(&model, &mut s, site);
    let unit = &a / a.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true);
    let want = &a * (unit.matmul(&w.view([d, 1])) + 1.25);
    assert!(max_diff(&want, &b) < 1e-5);

    // SAE feature add: + α·W_dec[f] on every position but BOS.
    let resid = HookPoint::resid_post(0);
    let sae = random_sae(d);
    let row = sae.weights.w_dec.get(3).copy();
    let mut s = SaeFeatureSteer::new(
        sae,
        "mem".into(),
        resid,
        vec![FeatureEdit {
            feature: 3,
            op: FeatureOp::Add { alpha: 2.0 },
        }],
        true,
    )
    .unwrap();
    let (a, b) = before_after(&model, &mut s, resid);
    let delta = &b - &a;
    assert!(
        delta.narrow(1, 0, 1).abs().max().double_value(&[]) < 1e-7,
        "BOS must be left alone"
    );
    assert!(
        max_diff(
            &delta.narrow(1, 1, 5),
            &(row * 2.0).view([1, 1, d]).expand([2, 5, d], true)
        ) < 1e-5
    );

    // Wu et al.'s amplify: the residual keeps its norm at every position.
    let mut s = SaeRuntimeSteer::new(
        random_sae(d),
        "mem".into(),
        resid,
        Strategy::Amplify,
        vec![1, 2],
        3.0,
        None,
    )
    .unwrap();
    let (a, b) = before_after(&model, &mut s, resid);
    let norms = |t: &Tensor| t.norm_scalaropt_dim(2.0, [-1i64].as_slice(), false);
    assert!(max_diff(&norms(&a), &norms(&b)) < 1e-3 * norms(&a).max().double_value(&[]));
    assert!(max_diff(&a, &b) > 1e-3);
}

fn random_sae(d: i64) -> Sae {
    let mut cfg = SaeConfig::new("topk", d as usize, 4 * d as usize);
    cfg.k = Some(4);
    Sae::init(cfg, 5, Device::Cpu).unwrap()
}

#[test]
fn clamping_with_the_error_term_and_no_change_reproduces_the_clean_model() {
    let model = common::tiny_llama();
    let d = model.model.config().d_model;
    let hook = HookPoint::resid_post(0);
    let clean = tch::no_grad(|| last_logits(&model, &tokens(), &mut Hooks::new())).unwrap();
    // Feature 0's activations, then clamp it to... itself: a no-op edit.
    for keep_error in [true, false] {
        let sae = random_sae(d);
        let edits = vec![
            FeatureEdit {
                feature: 0,
                op: FeatureOp::Add { alpha: 0.0 },
            },
            FeatureEdit {
                feature: 7,
                op: FeatureOp::Clamp { value: 0.0 },
            },
        ];
        // Feature 7 must be inactive for the clamp to 0 to change nothing.
        let mut cache = ActivationCache::new([hook]);
        let _ = tch::no_grad(|| last_logits(&model, &tokens(), &mut Hooks::new().with(&mut cache)))
            .unwrap();
        let acts = sae.encode(&cache.take(hook).unwrap()).unwrap();
        assert_eq!(
            acts.narrow(2, 7, 1).abs().max().double_value(&[]),
            0.0,
            "pick an inactive feature"
        );
        let mut s = SaeFeatureSteer::new(sae, "mem".into(), hook, edits, keep_error).unwrap();
        let steered =
            tch::no_grad(|| last_logits(&model, &tokens(), &mut Hooks::new().with(&mut s)))
                .unwrap();
        let diff = max_diff(&clean, &steered);
        if keep_error {
            assert!(
                diff < 1e-4,
                "with the error term the output must be clean, differs by {diff}"
            );
        } else {
            assert!(
                diff > 1e-3,
                "without the error term the SAE's reconstruction replaces the activation"
            );
        }
    }
}

fn weights() -> ObjectiveWeights {
    ObjectiveWeights {
        effect: Effect::LogitDiff,
        margin: None,
        lambda_faith: 0.7,
        lambda_min: 0.05,
    }
}

#[test]
fn the_objective_gradient_matches_finite_differences() {
    let model = load_model(common::TINY_LLAMA, Device::Cpu, Kind::Double).unwrap();
    let sites = vec![HookPoint::attn_out(0), HookPoint::mlp_out(1)];
    let start = Tensor::from_slice(&[1.2f64, 0.7, 0.9, 1.1]).view([2, 1, 2]);
    let target = Tensor::from_slice(&[7i64, 8]);
    let foil = Tensor::from_slice(&[9i64, 10]);
    let clean = tch::no_grad(|| last_logits(&model, &tokens(), &mut Hooks::new())).unwrap();
    let loss = |scalars: &Tensor| -> Tensor {
        let mut s = ActivationScaling::new(
            sites.clone(),
            Granularity::Site,
            Some(2),
            scalars.shallow_clone(),
        )
        .unwrap();
        let steered = last_logits(&model, &tokens(), &mut Hooks::new().with(&mut s)).unwrap();
        let l1 = s.l1_from_identity().unwrap();
        objective(
            &clean,
            &steered.to_kind(Kind::Double),
            &target,
            &foil,
            &l1,
            &weights(),
        )
        .unwrap()
        .loss
    };
    let x = start.copy().set_requires_grad(true);
    loss(&x).backward();
    let grad: Vec<f64> = Vec::try_from(&x.grad().reshape([-1])).unwrap();
    let h = 1e-4;
    for i in 0..4 {
        let bump = |delta: f64| {
            let t = start.copy().reshape([-1]);
            let _ = t
                .get(i)
                .fill_(start.reshape([-1]).double_value(&[i]) + delta);
            tch::no_grad(|| loss(&t.view([2, 1, 2])).double_value(&[]))
        };
        let numeric = (bump(h) - bump(-h)) / (2.0 * h);
        assert!(
            (numeric - grad[i as usize]).abs() < 2e-3 * numeric.abs().max(1.0),
            "scalar {i}: autograd {} vs numeric {numeric}",
            grad[i as usize]
        );
    }
}

fn task_file(dir: &Path, model: &LoadedModel) -> std::path::PathBuf {
    // Four prompts; the answers are two words the tiny tokenizer keeps whole.
    let words: Vec<String> = ["the", "model", "capital", "feature"]
        .iter()
        .map(|w| format!(" {w}"))
        .collect();
    for w in &words {
        assert_eq!(
            model.tokenizer.encode(w, false).unwrap().len(),
            1,
            "{w:?} must be one token"
        );
    }
    let prompts = [
        "the model reads a",
        "a window of tokens",
        "features emerge from",
        "sparse training and",
    ];
    let mut text = String::new();
    for (i, p) in prompts.iter().enumerate() {
        let (t, f) = if i % 2 == 0 {
            (&words[0], &words[1])
        } else {
            (&words[2], &words[3])
        };
        text.push_str(&serde_json::json!({"prompt": p, "target": t, "foil": f}).to_string());
        text.push('\n');
    }
    let path = dir.join("task.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn learning_flips_every_training_prompt_and_round_trips_through_a_file() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let task = Task::load(&task_file(dir.path(), &model), &model.tokenizer).unwrap();
    let cfg = model.model.config();
    let sites = saescope::steer::kinds::scaling::default_sites(cfg.n_layers, Granularity::Site);
    let learn_cfg = LearnConfig {
        weights: ObjectiveWeights {
            margin: Some(1.0),
            ..weights()
        },
        epochs: 40,
        lr: 0.05,
        batch: 8,
    };
    let mut steers: Vec<Box<dyn Steer>> = vec![
        Box::new(
            ActivationScaling::identity(
                sites.clone(),
                Granularity::Site,
                cfg.n_heads as usize,
                task.common_length(),
                Device::Cpu,
            )
            .unwrap(),
        ),
        Box::new(SteeringVector::zeros(sites.clone(), cfg.d_model as usize, Device::Cpu).unwrap()),
        Box::new(DynScalar::identity(sites, cfg.d_model as usize, Device::Cpu).unwrap()),
    ];
    for steer in steers.iter_mut() {
        learn(&model, &task, steer.as_mut(), &learn_cfg, &mut |_| {}).unwrap();
    }
    for (i, steer) in steers.into_iter().enumerate() {
        let mut one = vec![steer];
        let report = evaluate_steers(&model, &task, &mut one, 1e-2).unwrap();
        // Scaling and vectors flip all four prompts. The dynamic scalar (one
        // number per site, computed from the activation) leaves one prompt
        // hovering at a logit difference near 0 in this tiny model: whether
        // it ends just above or below after a given epoch depends on the last
        // bits of the sums (it flips back and forth from epoch to epoch).
        let flipped = if i == 2 { 0.75 } else { 1.0 };
        assert!(
            report.flipped_fraction >= flipped,
            "intervention {i}: {report:?}"
        );
        assert!(
            report.mean_logit_diff > report.mean_logit_diff_clean + 0.5,
            "intervention {i}: {report:?}"
        );
        assert!(
            report.clean_target_fraction < 1.0,
            "the clean model must have something to flip"
        );
        // Save, load, and get the same numbers.
        let path = dir.path().join(format!("steer{i}.json"));
        save_steers(&path, None, &[one[0].as_ref()]).unwrap();
        let mut back = load_steers(&path, cfg.n_layers, Device::Cpu).unwrap();
        let again = evaluate_steers(&model, &task, &mut back, 1e-2).unwrap();
        assert!((again.mean_logit_diff - report.mean_logit_diff).abs() < 1e-5);
        assert_eq!(again.components_changed, report.components_changed);
    }
}

#[test]
fn malformed_intervention_and_task_files_are_clear_errors() {
    let model = common::tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let n_layers = model.model.config().n_layers;
    let site = HookPoint::mlp_out(1);
    let s =
        ActivationScaling::identity(vec![site], Granularity::Site, 1, None, Device::Cpu).unwrap();
    let path = dir.path().join("s.json");
    save_steers(&path, None, &[&s]).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let check = |content: &str, want: &str| {
        std::fs::write(&path, content).unwrap();
        let err = load_steers(&path, n_layers, Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(want), "expected `{want}` in `{err}`");
    };
    check(
        &text.replace("blocks.1.hook_mlp_out", "blocks.1.hook_mlp_outt"),
        "hook_mlp_outt",
    );
    check(
        &text.replace("blocks.1.hook_mlp_out", "blocks.9.hook_mlp_out"),
        "blocks.9",
    );
    check(
        &text.replace("\"positions\": null", "\"positions\": 4"),
        "shape",
    );
    check(
        "{\"format_version\": 1, \"interventions\": []}",
        "no interventions",
    );
    check("[1, 2", "not an intervention file");

    // An SAE feature index past the SAE's width.
    let sae_dir = dir.path().join("sae");
    saescope::sae::save_sae(&random_sae(model.model.config().d_model), &sae_dir).unwrap();
    let spec = serde_json::json!({"format_version": 1, "interventions": [{"kind": "sae_features", "sae": "sae",
        "hook": "blocks.0.hook_resid_post", "edits": [{"feature": 9999, "op": "ablate"}], "keep_error": true}]});
    check(&spec.to_string(), "feature 9999 is out of range");

    // Tasks: empty, answers of several tokens.
    let task = dir.path().join("t.jsonl");
    std::fs::write(&task, "\n").unwrap();
    let err = Task::load(&task, &model.tokenizer)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no prompts"), "{err}");
    std::fs::write(
        &task,
        "{\"prompt\": \"a\", \"target\": \" the model reads\", \"foil\": \" the\"}\n",
    )
    .unwrap();
    let err = Task::load(&task, &model.tokenizer)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("line 1") && err.contains("exactly one"),
        "{err}"
    );
}
