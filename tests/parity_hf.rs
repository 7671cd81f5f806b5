//! Parity with Hugging Face transformers: tiny random-weight GPT-2, Llama (GQA,
//! sharded checkpoint), Qwen2 and GPT-NeoX models written by
//! `scripts/make_fixtures.py`, with the logits and hidden states transformers
//! computed for them.

use std::collections::HashMap;
use std::path::PathBuf;

use saescope::hooks::{ActivationCache, HookPoint, Hooks};
use saescope::io::safetensors::read_safetensors;
use saescope::model::{generate, load_model, ForwardInput, GenerateConfig, LogitsFor, StopAt};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    read_safetensors(&fixture(name).join("reference.safetensors")).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn check_model(name: &str) {
    let loaded = load_model(fixture(name).to_str().unwrap(), Device::Cpu, Kind::Float).unwrap();
    let model = &loaded.model;
    let r = reference(name);
    let n_layers = model.config().n_layers;
    let mut wanted: Vec<HookPoint> = (0..n_layers).map(HookPoint::resid_pre).collect();
    wanted.extend([
        HookPoint::LnFinal,
        HookPoint::attn_out(0),
        HookPoint::mlp_out(0),
        "blocks.0.attn.hook_pattern".parse().unwrap(),
        HookPoint::resid_post(n_layers - 1),
    ]);
    let mut cache = ActivationCache::new(wanted);
    let logits = model
        .forward(
            &ForwardInput::tokens(&r["input_ids"]),
            None,
            &mut Hooks::new().with(&mut cache),
            StopAt::Logits(LogitsFor::All),
        )
        .unwrap()
        .unwrap();
    let d = max_diff(&logits, &r["logits"]);
    assert!(d <= 1e-4, "{name}: logits differ by {d}");
    // HF's hidden_states: block inputs, then the final norm's output.
    for l in 0..n_layers {
        let d = max_diff(
            cache.get(HookPoint::resid_pre(l)).unwrap(),
            &r[&format!("hidden.{l}")],
        );
        assert!(d <= 1e-4, "{name}: resid_pre {l} differs by {d}");
    }
    let d = max_diff(
        cache.get(HookPoint::LnFinal).unwrap(),
        &r[&format!("hidden.{n_layers}")],
    );
    assert!(d <= 1e-4, "{name}: ln_final differs by {d}");
    let last_post = format!("resid_post.{}", n_layers - 1);
    if let Some(expected) = r.get(&last_post) {
        let d = max_diff(
            cache.get(HookPoint::resid_post(n_layers - 1)).unwrap(),
            expected,
        );
        assert!(d <= 1e-4, "{name}: last resid_post differs by {d}");
    }
    for (hook, key) in [
        (HookPoint::attn_out(0), "attn_out.0"),
        (HookPoint::mlp_out(0), "mlp_out.0"),
    ] {
        let d = max_diff(cache.get(hook).unwrap(), &r[key]);
        assert!(d <= 1e-4, "{name}: {key} differs by {d}");
    }
    let pattern = cache
        .get("blocks.0.attn.hook_pattern".parse().unwrap())
        .unwrap();
    let d = max_diff(pattern, &r["pattern.0"]);
    assert!(d <= 1e-5, "{name}: pattern differs by {d}");
    assert!(
        r["logits"].std(true).double_value(&[]) > 0.5,
        "fixture logits are too flat to test"
    );

    // Greedy generation with the KV cache matches transformers' generate.
    let expected = Vec::<i64>::try_from(r["greedy_ids"].view([-1])).unwrap();
    let prompt = Vec::<i64>::try_from(r["input_ids"].get(0)).unwrap();
    let config = GenerateConfig {
        max_new_tokens: expected.len() - prompt.len(),
        sampling: Default::default(),
        stop_ids: vec![],
    };
    let out = generate(
        model,
        std::slice::from_ref(&prompt),
        &config,
        &mut Hooks::new(),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(
        out[0],
        expected[prompt.len()..],
        "{name}: greedy generation differs"
    );
}

#[test]
fn gpt2_matches_transformers() {
    check_model("gpt2");
}

#[test]
fn llama_gqa_sharded_matches_transformers() {
    check_model("llama");
}

#[test]
fn qwen2_matches_transformers() {
    check_model("qwen2");
}

#[test]
fn neox_parallel_partial_rotary_matches_transformers() {
    check_model("neox");
}

#[test]
fn left_padded_batch_matches_transformers() {
    let loaded = load_model(fixture("llama").to_str().unwrap(), Device::Cpu, Kind::Float).unwrap();
    let r = reference("llama");
    let input = ForwardInput {
        tokens: &r["pad_input_ids"],
        positions: Some(&r["pad_position_ids"]),
        attention_mask: Some(&r["pad_attention_mask"]),
        start_at: None,
    };
    let logits = loaded
        .model
        .forward(
            &input,
            None,
            &mut Hooks::new(),
            StopAt::Logits(LogitsFor::All),
        )
        .unwrap()
        .unwrap();
    // Compare real (non-padding) positions only.
    let keep = r["pad_attention_mask"].to_kind(Kind::Bool).unsqueeze(-1);
    let d = max_diff(
        &logits.masked_fill(&keep.logical_not(), 0.0),
        &r["pad_logits"].masked_fill(&keep.logical_not(), 0.0),
    );
    assert!(d <= 1e-4, "padded logits differ by {d}");
}

/// `ln1`/`ln2.hook_normalized`, `attn.hook_q/k/v` (before rotary) and
/// `attn.hook_z` against transformers' modules (scripts/make_hook_fixtures.py);
/// `attn.hook_result` summed over heads plus `b_O` is `hook_attn_out`.
#[test]
fn analysis_hooks_match_transformers_internals() {
    for name in ["llama", "qwen2", "gpt2", "neox"] {
        let loaded = load_model(fixture(name).to_str().unwrap(), Device::Cpu, Kind::Float).unwrap();
        let model = &loaded.model;
        let r = reference(name);
        let h = read_safetensors(&fixture(name).join("hooks_reference.safetensors")).unwrap();
        let site = |s: &str| -> HookPoint { format!("blocks.0.{s}").parse().unwrap() };
        let sites = [
            ("ln1.0", "ln1.hook_normalized"),
            ("q.0", "attn.hook_q"),
            ("k.0", "attn.hook_k"),
            ("v.0", "attn.hook_v"),
            ("z.0", "attn.hook_z"),
            ("ln2.0", "ln2.hook_normalized"),
        ];
        let mut hooks: Vec<HookPoint> = sites.iter().map(|(_, s)| site(s)).collect();
        hooks.extend([site("attn.hook_result"), HookPoint::attn_out(0)]);
        let mut run = model
            .run_with_cache(
                &ForwardInput::tokens(&r["input_ids"]),
                &hooks,
                Some(LogitsFor::All),
            )
            .unwrap();
        // Hooking q/k/v and result reroutes the computation; the logits stay put.
        let d = max_diff(run.logits.as_ref().unwrap(), &r["logits"]);
        assert!(
            d <= 1e-4,
            "{name}: logits with every analysis hook differ by {d}"
        );
        for (key, s) in sites {
            let d = max_diff(&run.take(site(s)).unwrap(), &h[key]);
            assert!(d <= 1e-4, "{name}: {s} differs from transformers by {d}");
        }
        let result = run.take(site("attn.hook_result")).unwrap();
        let cfg = model.config();
        assert_eq!(result.size(), [2, 12, cfg.n_heads, cfg.d_model]);
        let summed = result.sum_dim_intlist([2i64].as_slice(), false, Kind::Float);
        let attn_out = run.take(HookPoint::attn_out(0)).unwrap();
        let bias = (&attn_out - &summed).mean_dim([0i64, 1].as_slice(), false, Kind::Float);
        let d = max_diff(&(summed + &bias), &attn_out);
        assert!(
            d <= 1e-4,
            "{name}: heads' results plus a bias miss attn_out by {d}"
        );
        let d = max_diff(&attn_out, &r["attn_out.0"]);
        assert!(
            d <= 1e-4,
            "{name}: attn_out with hook_result differs by {d}"
        );
    }
}
