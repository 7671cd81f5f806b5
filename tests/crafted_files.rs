//! One crafted file per loader, fed to the command a user would run: each
//! must end in exit code 1 with a message that names the file and what is
//! wrong with it (for tensors: the tensor and both shapes), never a panic
//! (exit 101) or an abort. The crafted Qwen2 `k_proj` lives in
//! `bad_input.rs`; the harnesses of `fuzz/` cover the same loaders with
//! random inputs.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use saescope::io::safetensors::{read_safetensors, write_safetensors};
use tch::Tensor;

/// Runs `saescope args` and checks exit code 1 and every `needles` in stderr.
fn refused(case: &str, args: &[&str], needles: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{case}: no `{needle}` in: {stderr}"
        );
    }
    eprintln!("{case}: {}", stderr.trim());
}

/// Rewrites the safetensors file `path` with tensor `name` replaced by `make(old)`.
fn replace_tensor(path: &Path, name: &str, make: impl Fn(&Tensor) -> Tensor) {
    let mut tensors: HashMap<String, Tensor> = read_safetensors(path).unwrap();
    let old = tensors.remove(name).unwrap_or_else(|| panic!("no {name}"));
    tensors.insert(name.to_string(), make(&old));
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(path, &refs).unwrap();
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn copy_fixture_sae(name: &str, to: &Path) -> PathBuf {
    let dir = to.join(name);
    common::copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sae")
            .join(name),
        &dir,
    );
    dir
}

#[test]
fn a_gguf_tensor_with_a_dimension_set_to_1_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crafted.gguf");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/gguf_model/attn-q-dim-changed-to-1"),
        &file,
    )
    .unwrap();
    refused(
        "GGUF",
        &["logits", "--model", path_str(&file), "--prompt", "hi"],
        &["blk.0.attn_q.weight", "crafted.gguf", "[64, 1]", "[64, 64]"],
    );
}

#[test]
fn a_sharded_checkpoint_index_pointing_outside_its_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("llama");
    common::copy_tree(Path::new(common::TINY_LLAMA), &folder);
    let index = folder.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        text.replace("model-00002-of-00004.safetensors", "../../../../etc/passwd"),
    )
    .unwrap();
    refused(
        "sharded HF folder",
        &["logits", "--model", path_str(&folder), "--prompt", "hi"],
        &[
            "model.safetensors.index.json",
            "/etc/passwd",
            "not a file name inside the model folder",
        ],
    );
}

#[test]
fn sae_folders_with_a_misshapen_tensor_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let saelens = copy_fixture_sae("saelens_topk", dir.path());
    replace_tensor(&saelens.join("sae_weights.safetensors"), "W_dec", |w| {
        w.narrow(0, 0, w.size()[0] - 1)
    });
    let out = dir.path().join("steer.json");
    refused(
        "SAELens folder",
        &[
            "steer",
            "sae-runtime",
            "--sae",
            path_str(&saelens),
            "--features",
            "0",
            "--out",
            path_str(&out),
        ],
        &["W_dec", "sae_weights.safetensors", "expected"],
    );
    let sparsify = copy_fixture_sae("sparsify_topk", dir.path());
    replace_tensor(&sparsify.join("sae.safetensors"), "b_dec", |b| {
        Tensor::cat(&[b, b], 0)
    });
    refused(
        "sparsify folder",
        &[
            "steer",
            "sae-runtime",
            "--sae",
            path_str(&sparsify),
            "--features",
            "0",
            "--out",
            path_str(&out),
        ],
        &["b_dec", "sae.safetensors", "expected"],
    );
}

#[test]
fn a_store_manifest_pointing_outside_the_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 40);
    let store = dir.path().join("acts");
    common::harvest_tiny(
        &corpus,
        &store,
        &["--tokens", "256", "--shard-tokens", "128"],
    );
    let manifest = store.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("shard-00001.safetensors", "/dev/zero"),
    )
    .unwrap();
    refused(
        "store manifest",
        &["store", "verify", path_str(&store)],
        &[
            "manifest.json",
            "/dev/zero",
            "not a file name inside the store",
        ],
    );
}

#[test]
fn a_training_checkpoint_with_a_misshapen_optimiser_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = common::tiny_store(dir.path());
    let out = dir.path().join("sae");
    common::saescope_ok(&common::train_tiny_args(&store, &out, "2048", "2", false));
    let checkpoint = out.join("checkpoint");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint.join("state.json")).unwrap()).unwrap();
    let file = checkpoint.join(state["saes"][0]["file"].as_str().unwrap());
    let tensors = read_safetensors(&file).unwrap();
    let adam = tensors
        .keys()
        .find(|n| n.contains("W_dec") && n != &"W_dec")
        .expect("an optimiser tensor for W_dec")
        .clone();
    // One element: broadcasting would have let it through silently.
    replace_tensor(&file, &adam, |_| {
        Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu))
    });
    let args = common::train_tiny_args(&store, &out, "4096", "2", true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(
        "training checkpoint",
        &args,
        &[&adam, "checkpoint", "[1]", "expected"],
    );
}

#[test]
fn an_intervention_with_too_many_vectors_is_refused() {
    use saescope::hooks::HookPoint;
    use saescope::steer::kinds::vector::SteeringVector;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("steer.json");
    let vectors = Tensor::randn([1, 64], (tch::Kind::Float, tch::Device::Cpu));
    let steer = SteeringVector::new(vec![HookPoint::resid_post(0)], vectors, 1.0).unwrap();
    saescope::steer::save_steers(&path, None, &[&steer]).unwrap();
    replace_tensor(&path.with_extension("safetensors"), "0.vectors", |v| {
        Tensor::cat(&[v, v], 0)
    });
    refused(
        "intervention",
        &[
            "generate",
            "--model",
            common::TINY_LLAMA,
            "--prompt",
            "hi",
            "--steer",
            path_str(&path),
        ],
        &["vectors", "steer.safetensors", "[2, 64]"],
    );
}

#[test]
fn labelling_checkpoints_vocabularies_and_dictionaries_that_were_tampered_with_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, store, sae) = common::tiny_sae(dir.path());
    let label_args =
        |out: &Path, resume| common::label_tiny_args((&corpus, &store, &sae), out, "500", resume);

    // A checkpoint left by a labelling run killed once it had written one.
    let cut = dir.path().join("cut");
    let mut child = Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(label_args(&cut, false))
        .env("SAESCOPE_TEST_PAUSE_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = cut.join(".checkpoint").join("state.json");
    let started = Instant::now();
    while !state.is_file() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "labelling ended before a checkpoint"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    json["stats_file"] = "../../features.jsonl".into();
    std::fs::write(&state, serde_json::to_vec(&json).unwrap()).unwrap();
    let args = label_args(&cut, true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(
        "labelling checkpoint",
        &args,
        &["state.json", "plain file name"],
    );

    // A finished dictionary, then its vocabulary and its features tampered with.
    let dict = dir.path().join("dict");
    common::saescope_ok(&label_args(&dict, false));
    let show = ["features", "show", "--dict", path_str(&dict), "0"];
    let vocab = dict.join("vocabulary.json");
    let original = std::fs::read_to_string(&vocab).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    json["counts"].as_array_mut().unwrap().pop();
    std::fs::write(&vocab, serde_json::to_vec(&json).unwrap()).unwrap();
    refused("vocabulary", &show, &["vocabulary.json", "counts"]);
    std::fs::write(&vocab, original).unwrap();
    let features = dict.join("features.jsonl");
    let mut text = std::fs::read_to_string(&features).unwrap();
    text.push_str("{\"index\": \"seven\"}\n");
    std::fs::write(&features, text).unwrap();
    refused("dictionary", &show, &["features.jsonl", "line"]);
}
