//! Replays inputs through the fuzz harnesses of `fuzz/src/lib.rs` in the
//! normal suite: every crash a fuzzing campaign (or an earlier report) found
//! is kept under `fuzz/regressions/<target>/` and must now end in `Ok` or a
//! clean `Err`; and a valid input per target must load, so that a harness
//! that has drifted away from its parser shows up here rather than as a
//! quiet campaign.

#[allow(dead_code)] // `work_dir` serves the fuzz binaries only
#[path = "../fuzz/src/lib.rs"]
mod harness;

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::largest_allocation::{self, LargestAllocation, ALLOCATION_BOUND};
use harness::{join_files, split_files, Harness, TARGETS};

#[global_allocator]
static GLOBAL: LargestAllocation = LargestAllocation;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn harness_for(target: &str) -> Harness {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, h)| *h)
        .unwrap_or_else(|| panic!("no harness {target}"))
}

/// `Ok(outcome)` when the harness returned, `Err(message)` when it panicked.
fn run(harness: Harness, data: &[u8], work: &Path) -> Result<Result<(), String>, String> {
    largest_allocation::catch_panic(|| harness(data, work))
}

#[test]
fn split_files_inverts_join_files_and_clamps_crafted_lengths() {
    let joined = join_files(&[b"config", b"", b"weights"]);
    assert_eq!(split_files::<3>(&joined), [&b"config"[..], b"", b"weights"]);
    // A length past the end takes what is there and leaves the rest empty.
    let mut crafted = 1000u32.to_le_bytes().to_vec();
    crafted.extend_from_slice(b"abc");
    assert_eq!(split_files::<2>(&crafted), [&b"abc"[..], b""]);
    assert_eq!(split_files::<2>(b"\x01"), [&b""[..], b""]);
}

#[test]
fn every_past_crash_is_now_a_clean_outcome() {
    let work = tempfile::tempdir().unwrap();
    let mut replayed = 0;
    let mut failures = Vec::new();
    for (target, harness) in TARGETS {
        let dir = root().join("fuzz/regressions").join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            replayed += 1;
            largest_allocation::reset();
            match run(*harness, &data, work.path()) {
                Ok(Ok(())) => eprintln!("{}: loads", file.display()),
                Ok(Err(e)) => eprintln!("{}: refused: {e}", file.display()),
                Err(panic) => failures.push(format!("{}: panic: {panic}", file.display())),
            }
            let largest = largest_allocation::largest();
            if largest > ALLOCATION_BOUND {
                failures.push(format!(
                    "{}: allocated {largest} bytes at once",
                    file.display()
                ));
            }
        }
    }
    eprintln!("replayed {replayed} past crashes");
    assert!(replayed > 0, "fuzz/regressions holds no inputs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One valid input per target, built from the fixtures and the default model.
fn valid_inputs(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let fixture = |rel: &str| std::fs::read(root().join("tests/fixtures").join(rel)).unwrap();
    let gguf_path = match saescope::model::load::source::resolve_model("smollm2-135m")
        .expect("run scripts/setup.sh")
    {
        saescope::model::load::source::ModelSource::Gguf(p) => p,
        other => panic!("{other:?}"),
    };
    let gguf = std::fs::read(&gguf_path).unwrap();

    let mut q8_block = vec![8u8, 32, 0, 0x00, 0x3c];
    q8_block.extend((0..32).map(|i| i as u8));

    let corpus = common::write_corpus(dir, 40);
    let store = dir.join("acts");
    common::harvest_tiny(
        &corpus,
        &store,
        &["--tokens", "128", "--shard-tokens", "128"],
    );
    let store_input = join_files(&[
        &std::fs::read(store.join("manifest.json")).unwrap(),
        &std::fs::read(store.join("shard-00000.safetensors")).unwrap(),
    ]);

    use saescope::steer::kinds::vector::SteeringVector;
    let steer_path = dir.join("steer.json");
    let sites = vec![
        saescope::hooks::HookPoint::resid_post(0),
        saescope::hooks::HookPoint::resid_post(1),
    ];
    let vectors = tch::Tensor::randn([2, 16], (tch::Kind::Float, tch::Device::Cpu));
    let steer = SteeringVector::new(sites, vectors, 2.0).unwrap();
    saescope::steer::save_steers(&steer_path, None, &[&steer]).unwrap();
    let intervention = join_files(&[
        &std::fs::read(&steer_path).unwrap(),
        &std::fs::read(steer_path.with_extension("safetensors")).unwrap(),
    ]);

    let prompts: String = std::fs::read_to_string(root().join("eval/icl/linear_regression.jsonl"))
        .unwrap()
        .lines()
        .take(6)
        .map(|l| format!("{l}\n"))
        .collect();
    let task = r#"{"prompt": "the model reads a", "target": " the", "foil": " model"}"#;
    let text = common::corpus_text(5);
    let jsonl: String = text
        .split("\n\n")
        .map(|p| format!("{}\n", serde_json::json!({ "text": p })))
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(jsonl.as_bytes()).unwrap();

    let with = |selector: u8, rest: &[u8]| [&[selector][..], rest].concat();
    vec![
        ("gguf_container", gguf.clone()),
        ("gguf_tokenizer", gguf.clone()),
        ("gguf_model", gguf),
        ("dequant", q8_block),
        (
            "hf_model",
            join_files(&[
                &fixture("tiny/qwen2/config.json"),
                &fixture("tiny/qwen2/model.safetensors"),
            ]),
        ),
        (
            "sae_folder",
            with(
                0,
                &join_files(&[
                    &fixture("sae/saelens_topk/cfg.json"),
                    &fixture("sae/saelens_topk/sae_weights.safetensors"),
                ]),
            ),
        ),
        (
            "sae_folder",
            with(
                1,
                &join_files(&[
                    &fixture("sae/sparsify_topk/cfg.json"),
                    &fixture("sae/sparsify_topk/sae.safetensors"),
                ]),
            ),
        ),
        ("store", store_input),
        ("intervention", intervention),
        ("task_jsonl", with(0, prompts.as_bytes())),
        ("task_jsonl", with(1, task.as_bytes())),
        (
            "train_toml",
            std::fs::read(root().join("configs/defaults.toml")).unwrap(),
        ),
        ("corpus", with(0, text.as_bytes())),
        ("corpus", with(1, jsonl.as_bytes())),
        ("corpus", with(2, &gz.finish().unwrap())),
    ]
}

#[test]
fn a_valid_file_loads_through_every_harness() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let inputs = valid_inputs(dir.path());
    for (target, _) in TARGETS {
        assert!(
            inputs.iter().any(|(t, _)| t == target),
            "no valid input for {target}"
        );
    }
    for (target, data) in inputs {
        match run(harness_for(target), &data, &work) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{target}: a valid input was refused: {e}"),
            Err(panic) => panic!("{target}: a valid input panicked: {panic}"),
        }
    }
}
