//! The CUDA path: parity with the CPU on the tiny fixture models, SmolLM2 in
//! bf16 on the GPU against f32 on the CPU, a harvest store, a short TopK
//! training run (its sparse kernels on the GPU), and steered generation.
//!
//! Every test needs a CUDA device, so each is marked ignored with that reason,
//! which `cargo test` prints on machines without one (CPU CI).
//! `scripts/gpu-check.sh` runs them with `--ignored`; there a missing device
//! is a failure that names why, never a pass.

mod common;

use std::path::Path;

use saescope::hooks::{HookPoint, Hooks};
use saescope::io::safetensors::read_safetensors;
use saescope::model::{generate, load_model, ForwardInput, GenerateConfig, LogitsFor, StopAt};
use saescope::steer::kinds::vector::SteeringVector;
use tch::{Device, Kind, Tensor};

/// Fails, naming why, where libtorch has no CUDA device.
fn require_cuda() {
    let (devices, reason) = saescope::machine::cuda::usable_devices();
    assert!(
        devices > 0,
        "no CUDA device: {}",
        reason.unwrap_or_else(|| "libtorch sees none".into())
    );
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tiny/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn logits(spec: &str, device: Device, kind: Kind, ids: &Tensor) -> Tensor {
    let loaded = load_model(spec, device, kind).unwrap();
    loaded
        .model
        .forward(
            &ForwardInput::tokens(&ids.to_device(device)),
            None,
            &mut Hooks::new(),
            StopAt::Logits(LogitsFor::All),
        )
        .unwrap()
        .unwrap()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it"]
fn f32_logits_on_cuda_match_the_cpu_on_every_fixture_architecture() {
    require_cuda();
    let ids = Tensor::from_slice(&[0i64, 5, 9, 3, 17, 42, 8, 2, 11, 30]).view([2, 5]);
    for name in ["gpt2", "llama", "qwen2", "neox"] {
        let cpu = logits(&fixture(name), Device::Cpu, Kind::Float, &ids);
        let gpu = logits(&fixture(name), Device::Cuda(0), Kind::Float, &ids);
        let diff = (&cpu - &gpu).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{name}: CUDA and CPU logits differ by {diff}");
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it"]
fn smollm2_in_bf16_on_cuda_agrees_with_f32_on_the_cpu() {
    require_cuda();
    let model = "smollm2-135m";
    if let Err(e) = saescope::model::load::source::resolve_model(model) {
        eprintln!("skipping the SmolLM2 check: the default model is not available here ({e})");
        return;
    }
    // "The capital of France is", as the GGUF tokenizer encodes it with BOS.
    let ids = Tensor::from_slice(&[1i64, 504, 3575, 282, 4649, 314]).view([1, 6]);
    let exact = logits(model, Device::Cpu, Kind::Float, &ids);
    let gpu = logits(model, Device::Cuda(0), Kind::BFloat16, &ids);
    let last = |t: &Tensor| t.get(0).get(5);
    assert_eq!(
        last(&exact).argmax(0, false).int64_value(&[]),
        last(&gpu).argmax(0, false).int64_value(&[]),
        "bf16 on CUDA picks another next token than f32 on the CPU"
    );
    let lp = |t: &Tensor| last(t).log_softmax(0, Kind::Float);
    let diff = (lp(&exact) - lp(&gpu)).abs().max().double_value(&[]);
    // bf16 has 8 bits of mantissa; 30 layers of it move log-probs by tenths.
    assert!(diff < 1.0, "bf16 CUDA log-probs differ from f32 by {diff}");
}

fn harvest(device: &str, corpus: &Path, out: &Path) {
    let flags = [
        "--device",
        device,
        "--model-dtype",
        "f32",
        "--tokens",
        "2000",
        "--shard-tokens",
        "800",
    ];
    common::harvest_tiny(corpus, out, &flags);
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it"]
fn a_harvest_on_cuda_stores_what_the_cpu_stores() {
    require_cuda();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 200);
    let (cpu, gpu) = (dir.path().join("cpu"), dir.path().join("gpu"));
    harvest("cpu", &corpus, &cpu);
    harvest("cuda:0", &corpus, &gpu);
    let mut shards: Vec<_> = std::fs::read_dir(&cpu)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".safetensors"))
        .collect();
    shards.sort();
    assert!(!shards.is_empty());
    for shard in shards {
        let a = read_safetensors(&cpu.join(&shard)).unwrap();
        let b = read_safetensors(&gpu.join(&shard)).unwrap();
        assert!(
            a["tokens"].equal(&b["tokens"]),
            "{shard:?}: token ids differ"
        );
        let diff = (&a["acts"] - &b["acts"]).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{shard:?}: activations differ by {diff}");
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it"]
fn topk_training_runs_on_cuda_and_learns() {
    require_cuda();
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 200);
    let store = dir.path().join("acts");
    harvest("cpu", &corpus, &store);
    let out = dir.path().join("sae");
    let mut args = common::train_tiny_args(&store, &out, "8192", "4", false);
    args.extend(["--devices".to_string(), "cuda:0".to_string()]);
    let stdout = common::saescope_ok(&args);
    assert!(stdout.contains("trained 1 SAE(s)"), "{stdout}");
    let metrics = std::fs::read_to_string(
        out.join("blocks.1.hook_resid_post-topk-x4-k4")
            .join("metrics.jsonl"),
    )
    .unwrap();
    let fvu: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fvu"].as_f64())
        .collect();
    let (first, last) = (fvu[0], fvu[fvu.len() - 1]);
    assert!(
        last.is_finite() && last < first,
        "FVU went {first} -> {last}"
    );
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it"]
fn steered_generation_on_cuda_gives_the_cpus_tokens() {
    require_cuda();
    let config = GenerateConfig {
        max_new_tokens: 12,
        sampling: Default::default(),
        stop_ids: vec![],
    };
    let prompts = vec![vec![0i64, 5, 9, 3], vec![7i64, 2]];
    let mut outs = Vec::new();
    for device in [Device::Cpu, Device::Cuda(0)] {
        let loaded = load_model(&fixture("llama"), device, Kind::Float).unwrap();
        let d = loaded.model.config().d_model as i64;
        tch::manual_seed(7);
        let vector = Tensor::randn([1, d], (Kind::Float, Device::Cpu)).to_device(device);
        let mut steer = SteeringVector::new(vec![HookPoint::resid_post(0)], vector, 4.0).unwrap();
        let mut hooks = Hooks::new().with(&mut steer);
        outs.push(generate(&loaded.model, &prompts, &config, &mut hooks, |_, _| {}).unwrap());
    }
    assert_eq!(
        outs[0], outs[1],
        "steered tokens differ between CPU and CUDA"
    );
}
