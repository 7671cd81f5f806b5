//! A fast, deterministic guard against crafted files: a few hundred seeded
//! mutations of real fixtures per parser (bit flips, overwritten bytes and
//! integers, truncation, duplicated or deleted ranges, altered numbers in
//! text), each of which must give `Ok` or a clean `Err`: no panic, no abort
//! (which would end this test binary), and no Rust allocation above
//! [`ALLOCATION_BOUND`]. libtorch's own allocations bypass Rust's allocator
//! and are not counted. Coverage-guided fuzzing belongs in `fuzz/`; this
//! keeps the property from regressing between campaigns.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::largest_allocation::{self, LargestAllocation, ALLOCATION_BOUND};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::Device;

#[global_allocator]
static GLOBAL: LargestAllocation = LargestAllocation;

/// Integers that break parsers that trust them.
const INTERESTING: [u64; 8] = [
    0,
    1,
    2,
    0x7f,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    1 << 40,
];
const NUMBERS: [&str; 8] = [
    "0",
    "-1",
    "1",
    "99999999999999",
    "1e308",
    "-0",
    "4294967296",
    "3.5",
];

/// One seeded mutation of `bytes`, and a word on what it did.
fn mutate(bytes: &[u8], rng: &mut StdRng, focus: usize) -> (Vec<u8>, String) {
    let mut out = bytes.to_vec();
    if out.is_empty() {
        return (vec![rng.random()], "one random byte".into());
    }
    // Most edits land in the first `focus` bytes (headers), some anywhere.
    let span = if rng.random_bool(0.8) {
        focus.min(out.len())
    } else {
        out.len()
    };
    let at = rng.random_range(0..span.max(1));
    match rng.random_range(0..7) {
        0 => {
            out[at] ^= 1 << rng.random_range(0..8);
            (out, format!("bit flip at {at}"))
        }
        1 => {
            out[at] = [0u8, 0xff, rng.random()][rng.random_range(0..3)];
            (out, format!("byte at {at}"))
        }
        2 => {
            let value = INTERESTING[rng.random_range(0..INTERESTING.len())].to_le_bytes();
            let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
            let end = (at + width).min(out.len());
            out[at..end].copy_from_slice(&value[..end - at]);
            (out, format!("integer {value:?} at {at}"))
        }
        3 => {
            out.truncate(at);
            (out, format!("truncated to {at}"))
        }
        4 => {
            let len = rng.random_range(1..=64.min(out.len() - at));
            let copy = out[at..at + len].to_vec();
            out.splice(at..at, copy);
            (out, format!("{len} bytes duplicated at {at}"))
        }
        5 => {
            let len = rng.random_range(1..=64.min(out.len() - at));
            out.drain(at..at + len);
            (out, format!("{len} bytes deleted at {at}"))
        }
        _ => {
            // A number in text becomes an awkward one.
            let digits: Vec<usize> = (0..out.len())
                .filter(|&i| out[i].is_ascii_digit())
                .collect();
            let Some(&start) = digits.get(rng.random_range(0..digits.len().max(1))) else {
                return (out, "no number to change".into());
            };
            let end = (start..out.len())
                .find(|&i| !(out[i].is_ascii_digit() || out[i] == b'.'))
                .unwrap_or(out.len());
            let number = NUMBERS[rng.random_range(0..NUMBERS.len())];
            out.splice(start..end, number.bytes());
            (out, format!("number at {start} -> {number}"))
        }
    }
}

/// A safetensors file with one tensor's shape changed but its element count
/// kept (reversed, flattened, a leading 1, or the first dimension split), so
/// that the file stays valid and only a loader's own shape checks stand
/// between the tensor and arithmetic on it.
fn reshape_one_tensor(bytes: &[u8], rng: &mut StdRng) -> (Vec<u8>, String) {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let name = &names[rng.random_range(0..names.len())];
    let shape: Vec<i64> = serde_json::from_value(header[name]["shape"].clone()).unwrap();
    let new: Vec<i64> = match rng.random_range(0..4) {
        0 => shape.iter().rev().copied().collect(),
        1 => vec![shape.iter().product()],
        2 => [vec![1], shape.clone()].concat(),
        _ if shape.first().is_some_and(|d| d % 2 == 0) => {
            [vec![2, shape[0] / 2], shape[1..].to_vec()].concat()
        }
        _ => shape.iter().rev().copied().collect(),
    };
    header[name]["shape"] = serde_json::json!(new);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + len..]);
    (out, format!("`{name}` reshaped {shape:?} -> {new:?}"))
}

/// Runs `count` mutations of `file` (restored afterwards) through `parse`,
/// and returns the failures: panics and oversized allocations. For
/// safetensors files, every other mutation reshapes a tensor instead.
fn guard(
    name: &str,
    seed: u64,
    count: usize,
    file: &Path,
    focus: usize,
    parse: impl Fn() -> Result<(), String>,
) -> Vec<String> {
    let original = std::fs::read(file).unwrap();
    let safetensors = file.extension().is_some_and(|e| e == "safetensors");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut loaded, mut refused, mut failures) = (0, 0, Vec::new());
    for i in 0..count {
        let (bytes, what) = if safetensors && i % 2 == 1 {
            reshape_one_tensor(&original, &mut rng)
        } else {
            mutate(&original, &mut rng, focus)
        };
        std::fs::write(file, &bytes).unwrap();
        largest_allocation::reset();
        match largest_allocation::catch_panic(&parse) {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(_)) => refused += 1,
            Err(msg) => failures.push(format!("{name} #{i} ({what}): panic: {msg}")),
        }
        let largest = largest_allocation::largest();
        if largest > ALLOCATION_BOUND {
            failures.push(format!(
                "{name} #{i} ({what}): allocated {largest} bytes at once"
            ));
        }
    }
    std::fs::write(file, &original).unwrap();
    eprintln!(
        "{name}: {count} mutations, {loaded} loaded, {refused} refused cleanly, {} failures",
        failures.len()
    );
    failures
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Safetensors headers: the 8-byte length and the JSON after it.
fn safetensors_header_len(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

fn no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn hf_model_folders_survive_mutated_configs_and_safetensors_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (seed, family) in [(1u64, "qwen2"), (2, "gpt2"), (3, "neox")] {
        let folder = dir.path().join(family);
        common::copy_tree(&fixture(&format!("tiny/{family}")), &folder);
        let load = || {
            saescope::model::load_model(folder.to_str().unwrap(), Device::Cpu, tch::Kind::Float)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let config = folder.join("config.json");
        failures.extend(guard(
            &format!("{family} config.json"),
            seed,
            100,
            &config,
            usize::MAX,
            load,
        ));
        let weights = folder.join("model.safetensors");
        let header = safetensors_header_len(&weights);
        failures.extend(guard(
            &format!("{family} safetensors"),
            seed + 10,
            100,
            &weights,
            header,
            load,
        ));
    }
    no_failures(failures);
}

#[test]
fn sae_folders_survive_mutated_cfg_and_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (seed, name, weights) in [
        (4u64, "saelens_topk", "sae_weights.safetensors"),
        (5, "saelens_jumprelu", "sae_weights.safetensors"),
        (6, "sparsify_topk", "sae.safetensors"),
    ] {
        let folder = dir.path().join(name);
        common::copy_tree(&fixture(&format!("sae/{name}")), &folder);
        let load = || {
            saescope::sae::io::load_sae(&folder)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        failures.extend(guard(
            &format!("{name} cfg.json"),
            seed,
            100,
            &folder.join("cfg.json"),
            usize::MAX,
            load,
        ));
        let file = folder.join(weights);
        let header = safetensors_header_len(&file);
        failures.extend(guard(
            &format!("{name} weights"),
            seed + 10,
            100,
            &file,
            header,
            load,
        ));
    }
    no_failures(failures);
}

#[test]
fn train_configs_and_corpora_survive_mutation() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let toml = dir.path().join("train.toml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/defaults.toml"),
        &toml,
    )
    .unwrap();
    failures.extend(guard("train TOML", 7, 200, &toml, usize::MAX, || {
        saescope::train::TrainConfig::from_toml_file(&toml)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }));
    let text = common::corpus_text(20);
    let read = |path: &Path| {
        let corpus = saescope::data::corpus::Corpus::open(path.to_str().unwrap(), "text")
            .map_err(|e| e.to_string())?;
        for doc in corpus.documents().take(1000) {
            doc.map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let plain = dir.path().join("corpus.txt");
    std::fs::write(&plain, &text).unwrap();
    failures.extend(guard("text corpus", 8, 100, &plain, usize::MAX, || {
        read(&plain)
    }));
    let jsonl = dir.path().join("corpus.jsonl");
    let lines: String = text
        .split("\n\n")
        .map(|p| format!("{}\n", serde_json::json!({ "text": p })))
        .collect();
    std::fs::write(&jsonl, &lines).unwrap();
    failures.extend(guard("JSONL corpus", 9, 100, &jsonl, usize::MAX, || {
        read(&jsonl)
    }));
    let gz = dir.path().join("corpus.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(lines.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    failures.extend(guard("gzip corpus", 10, 100, &gz, usize::MAX, || read(&gz)));
    no_failures(failures);
}

#[test]
fn prompt_sets_survive_mutation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tasks.jsonl");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/icl/linear_regression.jsonl");
    let head: String = std::fs::read_to_string(source)
        .unwrap()
        .lines()
        .take(12)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, head).unwrap();
    no_failures(guard(
        "prompt set JSONL",
        11,
        200,
        &file,
        usize::MAX,
        || {
            saescope::analysis::prompts::PromptSet::load(&file)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    ));
}

#[test]
fn stores_survive_mutated_manifests_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 60);
    let store = dir.path().join("acts");
    common::harvest_tiny(
        &corpus,
        &store,
        &["--tokens", "600", "--shard-tokens", "300"],
    );
    let read = || {
        let s = saescope::data::store::Store::open(&store).map_err(|e| e.to_string())?;
        let rows = s.manifest().tokens;
        s.read_rows(0, rows).map(|_| ()).map_err(|e| e.to_string())
    };
    let manifest = store.join("manifest.json");
    let mut failures = guard("store manifest", 12, 150, &manifest, usize::MAX, read);
    let shard = store.join("shard-00000.safetensors");
    let header = safetensors_header_len(&shard);
    failures.extend(guard("store shard", 13, 150, &shard, header, read));
    no_failures(failures);
}

#[test]
fn intervention_files_survive_mutated_json_and_tensors() {
    use saescope::hooks::HookPoint;
    use saescope::steer::kinds::vector::SteeringVector;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("steer.json");
    let sites = vec![HookPoint::resid_post(0), HookPoint::resid_post(1)];
    let vectors = tch::Tensor::randn([2, 16], (tch::Kind::Float, Device::Cpu));
    let steer = SteeringVector::new(sites, vectors, 2.0).unwrap();
    saescope::steer::save_steers(&path, Some("tiny"), &[&steer]).unwrap();
    let load = || {
        saescope::steer::load_steers(&path, 2, Device::Cpu)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let mut failures = guard("intervention JSON", 14, 150, &path, usize::MAX, load);
    let tensors = path.with_extension("safetensors");
    let header = safetensors_header_len(&tensors);
    failures.extend(guard(
        "intervention tensors",
        15,
        150,
        &tensors,
        header,
        load,
    ));
    no_failures(failures);
}
