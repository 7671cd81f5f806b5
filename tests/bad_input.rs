//! Bad input gives a clear error, never a panic: truncated and absurd GGUF
//! files, unknown architectures, missing tensors, wrong shapes, bad hook names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use saescope::model::load::source::{resolve_hub, ModelSource};
use saescope::model::{load_model, parse_device, parse_dtype};
use saescope::Error;
use tch::{Device, Kind};

fn tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}

fn load(path: &Path) -> Result<saescope::model::LoadedModel, Error> {
    load_model(path.to_str().unwrap(), Device::Cpu, Kind::Float)
}

fn default_gguf() -> PathBuf {
    match saescope::model::load::source::resolve_model("smollm2-135m")
        .expect("run scripts/setup.sh")
    {
        ModelSource::Gguf(p) => p,
        other => panic!("{other:?}"),
    }
}

/// GGUF header bytes: magic, version 3, tensor count, metadata count.
fn gguf_header(tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

fn gguf_string(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn write_temp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path
}

#[test]
fn truncated_gguf_is_malformed() {
    let full = std::fs::read(default_gguf()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [0usize, 3, 16, 1000, 200_000, full.len() / 2, full.len() - 1] {
        let path = write_temp(&dir, "cut.gguf", &full[..cut]);
        let err = load(&path)
            .err()
            .unwrap_or_else(|| panic!("cut at {cut} loaded"));
        assert!(
            matches!(err, Error::Malformed { .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("cut.gguf"), "{err}");
    }
}

#[test]
fn absurd_gguf_counts_fail_fast_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    // 2^60 tensors, 2^60 metadata entries.
    for (t, k) in [(1u64 << 60, 0u64), (0, 1 << 60), (u64::MAX, u64::MAX)] {
        let path = write_temp(&dir, "absurd.gguf", &gguf_header(t, k));
        let err = load(&path).err().expect("absurd counts loaded");
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
    }
    // A metadata string claiming 2^62 bytes.
    let mut b = gguf_header(0, 1);
    gguf_string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    b.extend((1u64 << 62).to_le_bytes());
    let err = load(&write_temp(&dir, "long.gguf", &b))
        .err()
        .expect("absurd string loaded");
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    assert!(start.elapsed().as_secs() < 5);
}

#[test]
fn unknown_architectures_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = gguf_header(0, 1);
    gguf_string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    gguf_string(&mut b, "falcon");
    let err = load(&write_temp(&dir, "falcon.gguf", &b))
        .err()
        .expect("falcon loaded");
    assert!(matches!(err, Error::UnknownArchitecture { .. }), "{err}");
    assert!(err.to_string().contains("falcon"), "{err}");

    let folder = dir.path().join("mamba");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let err = load(&folder).err().expect("mamba loaded");
    assert!(
        matches!(err, Error::UnknownArchitecture { ref name, .. } if name == "mamba"),
        "{err}"
    );
}

/// A copy of a tiny model folder with its tensors edited by `edit`.
fn edited_copy(
    dir: &tempfile::TempDir,
    edit: impl Fn(&str, Vec<i64>) -> Option<Vec<i64>>,
) -> PathBuf {
    let src = tiny("qwen2");
    let dst = dir.path().join("edited");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let tensors =
        saescope::io::safetensors::read_safetensors(&src.join("model.safetensors")).unwrap();
    let mut kept: Vec<(String, tch::Tensor)> = Vec::new();
    for (name, t) in tensors {
        if let Some(shape) = edit(&name, t.size()) {
            // The first elements, padded with zeros where the new shape is larger.
            let numel: i64 = shape.iter().product();
            let flat = t.reshape([-1]);
            let pad = tch::Tensor::zeros(
                [(numel - flat.numel() as i64).max(0)],
                (flat.kind(), flat.device()),
            );
            kept.push((
                name,
                tch::Tensor::cat(&[flat, pad], 0)
                    .narrow(0, 0, numel)
                    .reshape(shape.as_slice()),
            ));
        }
    }
    tch::Tensor::write_safetensors(&kept, dst.join("model.safetensors")).unwrap();
    dst
}

#[test]
fn missing_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let folder = edited_copy(&dir, |name, shape| {
        (name != "model.layers.1.mlp.up_proj.weight").then_some(shape)
    });
    let err = load(&folder).err().expect("loaded without a tensor");
    assert!(
        matches!(err, Error::MissingTensor { ref name, .. } if name == "model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shapes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let folder = edited_copy(&dir, |name, shape| {
        Some(if name == "model.layers.0.self_attn.o_proj.weight" {
            vec![shape[0], shape[1] / 2]
        } else {
            shape
        })
    });
    let err = load(&folder).err().expect("loaded a wrong shape");
    assert!(matches!(err, Error::FileTensorShape { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("model.layers.0.self_attn.o_proj.weight")
            && text.contains(folder.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn a_projection_one_column_too_wide_is_an_error_before_any_concatenation() {
    // Once a panic inside libtorch's `cat` (exit 101): now the tensor, the
    // file and both shapes are named, in the library and on the command line.
    let dir = tempfile::tempdir().unwrap();
    let folder = edited_copy(&dir, |name, shape| {
        Some(if name == "model.layers.0.self_attn.k_proj.weight" {
            vec![shape[0], shape[1] + 1]
        } else {
            shape
        })
    });
    let err = load(&folder).err().expect("loaded a crafted k_proj");
    let text = err.to_string();
    assert!(
        matches!(err, Error::FileTensorShape { ref name, ref expected, ref got, .. }
            if name == "model.layers.0.self_attn.k_proj.weight" && got[1] == expected[1] + 1),
        "{text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args([
            "logits",
            "--model",
            folder.to_str().unwrap(),
            "--prompt",
            "hi",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("k_proj.weight"));
}

#[test]
fn corrupt_safetensors_and_config_are_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let folder = edited_copy(&dir, |_, shape| Some(shape));
    let bytes = std::fs::read(folder.join("model.safetensors")).unwrap();
    std::fs::write(folder.join("model.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
    let err = load(&folder).err().expect("truncated safetensors loaded");
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    std::fs::write(folder.join("config.json"), "{not json").unwrap();
    let err = load(&folder).err().expect("bad config loaded");
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
}

#[test]
fn bad_devices_dtypes_and_hooks_are_refused() {
    assert!(parse_device("tpu").is_err());
    assert!(parse_device("cuda:x").is_err());
    assert!(parse_dtype("int4").is_err());
    // CUDA is absent here; asking for it is an error, not a crash.
    if tch::Cuda::device_count() == 0 {
        assert!(parse_device("cuda").is_err());
    }
    let err = "blocks.0.hook_resid_pots"
        .parse::<saescope::hooks::HookPoint>()
        .unwrap_err();
    assert!(matches!(err, Error::UnknownHook { .. }), "{err}");
}

#[test]
fn cli_reports_errors_without_panicking() {
    let out = Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(["logits", "--model", "/nonexistent/x.gguf", "--prompt", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no such GGUF file") && !err.contains("panicked"),
        "{err}"
    );
}

/// A hub id resolves through a pre-filled hf-hub cache, the way a download would leave it.
#[test]
fn hub_ids_resolve_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny-org--tiny-gpt2");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny("gpt2").join(f), snapshot.join(f)).unwrap();
    }
    let source = resolve_hub("tiny-org/tiny-gpt2", cache.path()).unwrap();
    assert_eq!(source, ModelSource::HfFolder(snapshot.clone()));
    let loaded = load(&snapshot).unwrap();
    assert_eq!(loaded.model.config().architecture, "gpt2");

    // A repo absent from the cache, offline: a clear error.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let err = resolve_hub("tiny-org/absent", cache.path()).unwrap_err();
    assert!(err.to_string().contains("not in the cache"), "{err}");
}
