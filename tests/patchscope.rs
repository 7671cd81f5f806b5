//! Patchscopes on tiny models: a patchscope that writes a prompt's own state
//! back into the same prompt, layer and position reproduces its next-token
//! distribution; the least-squares affine map recovers a known transform;
//! patching across models of different width goes through a fitted map.

mod common;

use saescope::analysis::patchscope::{fit_affine, Mapping, Target};
use saescope::hooks::HookPoint;
use saescope::model::weights::ModelWeights;
use saescope::model::{ForwardInput, LoadedModel, LogitsFor, ModelConfig, Transformer};
use tch::{Device, Kind, Tensor};

fn ids() -> Vec<i64> {
    vec![1, 5, 9, 3, 17, 42, 8, 2, 11, 60]
}

fn state(model: &LoadedModel, ids: &[i64], layer: usize) -> (Tensor, Tensor) {
    let tokens = Tensor::from_slice(ids).view([1, -1]);
    let hook = HookPoint::resid_post(layer);
    let mut run = model
        .model
        .run_with_cache(
            &ForwardInput::tokens(&tokens),
            &[hook],
            Some(LogitsFor::All),
        )
        .unwrap();
    let h = run.take(hook).unwrap().select(0, 0); // [T, d]
    (h, run.logits.unwrap().select(0, 0)) // [T, vocab]
}

#[test]
fn the_same_prompt_layer_and_position_reproduce_the_source_distribution() {
    let model = common::tiny_llama();
    let n_layers = model.model.config().n_layers;
    let ids = ids();
    for layer in 0..n_layers {
        let (h, logits) = state(&model, &ids, layer);
        for position in [ids.len() - 1, 3] {
            let target = Target {
                model: &model,
                ids: ids.clone(),
                layer,
                position,
            };
            let patched = target
                .patched_logits(&h.get(position as i64).unsqueeze(0), 4)
                .unwrap();
            let own = logits.get(ids.len() as i64 - 1).unsqueeze(0);
            let d = (patched - own).abs().max().double_value(&[]);
            assert!(
                d < 1e-4,
                "layer {layer}, position {position}: differs by {d}"
            );
        }
    }
    let bad = Target {
        model: &model,
        ids: ids.clone(),
        layer: n_layers,
        position: 0,
    };
    assert!(bad
        .patched_logits(&Tensor::zeros([1, 64], (Kind::Float, Device::Cpu)), 1)
        .is_err());
}

#[test]
fn least_squares_recovers_a_known_affine_map() {
    let x = Tensor::randn([300, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([5, 8], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([5], (Kind::Float, Device::Cpu));
    let y = x.matmul(&w.tr()) + &b;
    let Mapping::Affine { weight, bias } = fit_affine(&x, &y).unwrap() else {
        panic!("an affine map")
    };
    assert!((weight - &w).abs().max().double_value(&[]) < 1e-4);
    assert!((bias - &b).abs().max().double_value(&[]) < 1e-4);
    let mapped = fit_affine(&x, &y).unwrap().apply(&x).unwrap();
    assert!((mapped - &y).abs().max().double_value(&[]) < 1e-3);
    assert!(fit_affine(&x, &y.narrow(0, 0, 10)).is_err());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.safetensors");
    fit_affine(&x, &y).unwrap().save(&path).unwrap();
    let loaded = Mapping::load(&path).unwrap().apply(&x).unwrap();
    assert!((loaded - y).abs().max().double_value(&[]) < 1e-3);
}

#[test]
fn patching_across_models_of_different_width_goes_through_a_fitted_map() {
    let source = common::tiny_llama();
    // d_model 32 against the fixture's 64, on the fixture's vocabulary.
    let mut cfg = ModelConfig::tiny_llama();
    cfg.vocab_size = source.model.config().vocab_size;
    let weights = ModelWeights::random(&cfg, 3);
    let narrow = LoadedModel {
        model: Transformer::new(cfg, &weights, Device::Cpu, Kind::Float).unwrap(),
        tokenizer: common::tiny_llama().tokenizer,
        spec: "narrow".into(),
        path: Default::default(),
        chat_template: None,
    };
    // Hidden states of both models on the same tokens, map fit 64 → 32.
    let text: Vec<i64> = (0..200).map(|i| (i * 7 + 3) % 120 + 1).collect();
    let (hs, _) = state(&source, &text, 0);
    let (ht, _) = state(&narrow, &text, 0);
    let map = fit_affine(&hs, &ht).unwrap();
    let mapped = map.apply(&hs).unwrap();
    assert_eq!(mapped.size(), [200, 32]);
    let target = Target {
        model: &narrow,
        ids: ids(),
        layer: 0,
        position: ids().len() - 1,
    };
    let logits = target.patched_logits(&mapped.narrow(0, 0, 5), 2).unwrap();
    assert_eq!(logits.size()[0], 5);
    // Without the map the widths do not fit: a clear error.
    let err = target.patched_logits(&hs.narrow(0, 0, 2), 2).unwrap_err();
    assert!(err.to_string().contains("patched vectors"), "{err}");
}

#[test]
fn generation_applies_the_patch_to_the_prompt_only() {
    let model = common::tiny_llama();
    let n_layers = model.model.config().n_layers;
    let ids = ids();
    let (h, _) = state(&model, &ids, n_layers - 1);
    let target = Target {
        model: &model,
        ids: ids.clone(),
        layer: n_layers - 1,
        position: ids.len() - 1,
    };
    // The prompt's own state written back: the same tokens as plain generation.
    let own = target
        .generate_patched(&h.get(ids.len() as i64 - 1), 6)
        .unwrap();
    let cfg = saescope::model::GenerateConfig {
        max_new_tokens: 6,
        sampling: Default::default(),
        stop_ids: model.tokenizer.eos_ids().to_vec(),
    };
    let plain = saescope::model::generate(
        &model.model,
        std::slice::from_ref(&ids),
        &cfg,
        &mut saescope::hooks::Hooks::new(),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(own, plain[0]);
    // Another position's state changes the first generated token's logits.
    let first = |v: &Tensor| {
        target
            .patched_logits(&v.unsqueeze(0), 1)
            .unwrap()
            .argmax(-1, false)
    };
    let (a, b) = (
        first(&h.get(ids.len() as i64 - 1)),
        first(&(h.get(2) * 10.0)),
    );
    let generated = target.generate_patched(&(h.get(2) * 10.0), 1).unwrap();
    assert_eq!(generated[0], b.int64_value(&[0]));
    let _ = a;
}

#[test]
fn the_cli_fits_a_map_and_decodes_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 40);
    let map = dir.path().join("map.safetensors");
    let (ok, _, err) = common::saescope(&[
        "patchscope",
        "fit-map",
        "--model",
        common::TINY_LLAMA,
        "--source-layer",
        "0",
        "--target-layer",
        "1",
        "--corpus",
        corpus.to_str().unwrap(),
        "--positions",
        "300",
        "--context",
        "32",
        "--out",
        map.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let Mapping::Affine { weight, .. } = Mapping::load(&map).unwrap() else {
        panic!("an affine map")
    };
    assert_eq!(weight.size(), [64, 64]);
    let (ok, stdout, err) = common::saescope(&[
        "patchscope",
        "run",
        "--model",
        common::TINY_LLAMA,
        "--source-prompt",
        "the model reads",
        "--source-layer",
        "0",
        "--target-layer",
        "1",
        "--map",
        map.to_str().unwrap(),
        "--top",
        "3",
    ]);
    assert!(ok, "{err}");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    let (ok, _, err) = common::saescope(&[
        "patchscope",
        "run",
        "--model",
        common::TINY_LLAMA,
        "--source-prompt",
        "the model reads",
        "--source-layer",
        "7",
    ]);
    assert!(!ok && err.contains("--source-layer"), "{err}");
}
