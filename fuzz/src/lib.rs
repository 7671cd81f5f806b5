//! One fuzz harness per parser that reads files from strangers. Each takes
//! the fuzzer's bytes, writes them where the parser expects its file(s), runs
//! the parser as `saescope` would, and returns its outcome: `Ok` or a clean
//! `Err` are both fine; a panic, an abort or a runaway allocation is a
//! finding. Inputs that stand for several files hold each but the last after
//! a 4-byte little-endian length (see [`split_files`]); a leading selector
//! byte, where there is one, picks the variant (file kind or loader).
//!
//! The same functions replay the seed corpora and every past crash in the
//! normal test suite (`tests/fuzz_regressions.rs` includes this file), so a
//! crash fixed once stays fixed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use saescope::analysis::prompts::PromptSet;
use saescope::data::corpus::Corpus;
use saescope::data::store::Store;
use saescope::model::load::gguf::file::GgufFile;
use saescope::model::load::gguf::load::gguf_config;
use saescope::model::load::gguf::quant::{dequantize, GgmlType};
use saescope::model::load::gguf::tokenizer::tokenizer_from_gguf;
use saescope::model::load::hf::{convert_hf, read_hf_config};
use saescope::model::tokenizer::ModelTokenizer;
use saescope::model::transformer::Transformer;
use saescope::train::TrainConfig;
use tch::{Device, Kind, Tensor};

/// A parser under test: the fuzzer's bytes and a scratch folder of its own.
pub type Harness = fn(&[u8], &Path) -> Result<(), String>;

/// Every harness, by the name of its fuzz target and seed folder.
pub const TARGETS: &[(&str, Harness)] = &[
    ("gguf_container", gguf_container),
    ("gguf_model", gguf_model),
    ("gguf_tokenizer", gguf_tokenizer),
    ("dequant", dequant),
    ("hf_model", hf_model),
    ("sae_folder", sae_folder),
    ("store", store),
    ("intervention", intervention),
    ("task_jsonl", task_jsonl),
    ("train_toml", train_toml),
    ("corpus", corpus),
];

/// The largest model or SAE (in elements of its biggest matrix) that a
/// harness runs forward after loading; bigger valid files only load.
const MAX_FORWARD_ELEMENTS: i64 = 1 << 22;

/// A scratch folder for the fuzz binaries: one per process, under `TMPDIR`.
pub fn work_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch folder under TMPDIR"))
        .path()
}

/// Cuts `data` into `N` files: each but the last is a 4-byte
/// little-endian length and that many bytes (fewer if the input ends); the
/// last is whatever remains.
pub fn split_files<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut files: [&[u8]; N] = [&[]; N];
    let mut rest = data;
    for file_slot in files.iter_mut().take(N.saturating_sub(1)) {
        let (len_bytes, tail) = rest.split_at(rest.len().min(4));
        let mut len = [0u8; 4];
        len[..len_bytes.len()].copy_from_slice(len_bytes);
        let len = (u32::from_le_bytes(len) as usize).min(tail.len());
        let (file, tail) = tail.split_at(len);
        *file_slot = file;
        rest = tail;
    }
    if let Some(last) = files.last_mut() {
        *last = rest;
    }
    files
}

/// The inverse of [`split_files`], for writing seeds and regression inputs.
pub fn join_files(files: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, file) in files.iter().enumerate() {
        if i + 1 < files.len() {
            out.extend_from_slice(&(file.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(file);
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    Ok(path)
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Runs a loaded model on two tokens when it is small enough, so that a file
/// that loads but cannot run is found too.
fn run_model(model: &Transformer) -> Result<(), String> {
    let cfg = model.config();
    let biggest = cfg.vocab_size.saturating_mul(cfg.d_model);
    if biggest > MAX_FORWARD_ELEMENTS {
        return Ok(());
    }
    let tokens = Tensor::from_slice(&[0i64, 0]).view([1, 2]);
    model.logits(&tokens).map(|_| ()).map_err(text)
}

/// The GGUF container: header, metadata, tensor table, data offsets, and the
/// model config read from the metadata.
pub fn gguf_container(data: &[u8], _work: &Path) -> Result<(), String> {
    let gguf = GgufFile::from_bytes("fuzz.gguf", data.to_vec()).map_err(text)?;
    for info in gguf.tensors() {
        let _ = info.n_bytes();
        let _ = info.shape();
        let _ = gguf.tensor_bytes(info);
    }
    for key in gguf.metadata().keys() {
        let _ = gguf.meta_str(key);
        let _ = gguf.meta_u64(key);
        let _ = gguf.meta_array(key);
    }
    gguf_config(&gguf).map(|_| ()).map_err(text)
}

/// A whole GGUF model as `saescope` loads it: config, tokenizer, weights
/// (dequantised and shape-checked), then a forward pass.
pub fn gguf_model(data: &[u8], work: &Path) -> Result<(), String> {
    let path = write(work, "model.gguf", data)?;
    let loaded =
        saescope::model::load_model(path.to_str().ok_or("path")?, Device::Cpu, Kind::Float)
            .map_err(text)?;
    run_model(&loaded.model)
}

/// The tokenizer rebuilt from GGUF metadata, then used both ways.
pub fn gguf_tokenizer(data: &[u8], _work: &Path) -> Result<(), String> {
    let gguf = GgufFile::from_bytes("fuzz.gguf", data.to_vec()).map_err(text)?;
    let tokenizer = tokenizer_from_gguf(&gguf).map_err(text)?;
    let encoding = tokenizer
        .encode("Hello world! 12 naïve tokens\n\tend", true)
        .map_err(text)?;
    tokenizer.decode(encoding.get_ids(), false).map_err(text)?;
    Ok(())
}

/// Dequantisation of one tensor's blocks. Byte 0 is the GGML type id, bytes
/// 1–2 the element count (little-endian), the rest the data.
pub fn dequant(data: &[u8], _work: &Path) -> Result<(), String> {
    let [ty, lo, hi, blocks @ ..] = data else {
        return Err("too short".into());
    };
    let n_elements = u16::from_le_bytes([*lo, *hi]) as usize;
    dequantize(GgmlType::from_id(*ty as u32), blocks, n_elements).map(|_| ())
}

/// A Hugging Face folder: `config.json`, then `model.safetensors`; converted
/// to saescope's weights and run.
pub fn hf_model(data: &[u8], work: &Path) -> Result<(), String> {
    let [config, weights] = split_files::<2>(data);
    let dir = work.join("hf");
    let config_path = write(&dir, "config.json", config)?;
    write(&dir, "model.safetensors", weights)?;
    let cfg = read_hf_config(&config_path).map_err(text)?;
    let mut bag = saescope::io::safetensors::read_checkpoint(&dir).map_err(text)?;
    let converted = convert_hf(&cfg, &mut bag).map_err(text)?;
    let model = Transformer::new(cfg, &converted, Device::Cpu, Kind::Float).map_err(text)?;
    run_model(&model)
}

/// An SAE folder: selector (even: SAELens `sae_weights.safetensors`, odd:
/// sparsify `sae.safetensors`), `cfg.json`, then the weights; loaded and run
/// on two rows.
pub fn sae_folder(data: &[u8], work: &Path) -> Result<(), String> {
    let [selector, rest @ ..] = data else {
        return Err("empty".into());
    };
    let [cfg, weights] = split_files::<2>(rest);
    let dir = work.join("sae");
    let _ = std::fs::remove_dir_all(&dir);
    write(&dir, "cfg.json", cfg)?;
    let name = if selector % 2 == 0 {
        "sae_weights.safetensors"
    } else {
        "sae.safetensors"
    };
    write(&dir, name, weights)?;
    let sae = saescope::sae::io::load_sae(&dir).map_err(text)?;
    let (d_in, d_sae) = (sae.cfg.d_in as i64, sae.cfg.d_sae as i64);
    if d_in.saturating_mul(d_sae) > MAX_FORWARD_ELEMENTS {
        return Ok(());
    }
    let x = Tensor::ones([2, d_in], (Kind::Float, Device::Cpu));
    sae.forward(&x).map(|_| ()).map_err(text)
}

/// An activation store: `manifest.json`, then `shard-00000.safetensors`;
/// opened, verified and read.
pub fn store(data: &[u8], work: &Path) -> Result<(), String> {
    let [manifest, shard] = split_files::<2>(data);
    let dir = work.join("store");
    write(&dir, "manifest.json", manifest)?;
    write(&dir, &saescope::data::store::shard_file_name(0), shard)?;
    let store = Store::open(&dir).map_err(text)?;
    let _ = store.verify();
    let rows = store.manifest().tokens.min(4096);
    store.read_rows(0, rows).map(|_| ()).map_err(text)
}

/// An intervention file: the JSON, then its tensors; built for a 2-block
/// model.
pub fn intervention(data: &[u8], work: &Path) -> Result<(), String> {
    let [json, tensors] = split_files::<2>(data);
    let path = write(work, "steer.json", json)?;
    write(work, "steer.safetensors", tensors)?;
    saescope::steer::load_steers(&path, 2, Device::Cpu)
        .map(|_| ())
        .map_err(text)
}

/// Task JSONL: selector (even: an analysis prompt set, odd: a steering task
/// tokenized with the tiny Llama's tokenizer), then the file.
pub fn task_jsonl(data: &[u8], work: &Path) -> Result<(), String> {
    let [selector, jsonl @ ..] = data else {
        return Err("empty".into());
    };
    let path = write(work, "tasks.jsonl", jsonl)?;
    if selector % 2 == 0 {
        return PromptSet::load(&path).map(|_| ()).map_err(text);
    }
    static TOKENIZER: OnceLock<ModelTokenizer> = OnceLock::new();
    let tokenizer = TOKENIZER.get_or_init(|| {
        let bytes = include_bytes!("../../tests/fixtures/tiny/llama/tokenizer.json");
        let inner = tokenizers::Tokenizer::from_bytes(bytes).expect("the fixture tokenizer");
        ModelTokenizer::new(inner, Some(1), vec![2])
    });
    saescope::steer::Task::load(&path, tokenizer)
        .map(|_| ())
        .map_err(text)
}

/// A training config in TOML, read and validated.
pub fn train_toml(data: &[u8], work: &Path) -> Result<(), String> {
    let path = write(work, "train.toml", data)?;
    let cfg = TrainConfig::from_toml_file(&path).map_err(text)?;
    cfg.validate().map_err(text)?;
    let _ = (cfg.total_steps(), cfg.hooks());
    Ok(())
}

/// A corpus file: selector (0 plain text, 1 JSONL, 2 gzip-compressed JSONL),
/// then the file; every document read.
pub fn corpus(data: &[u8], work: &Path) -> Result<(), String> {
    let [selector, bytes @ ..] = data else {
        return Err("empty".into());
    };
    let name = ["corpus.txt", "corpus.jsonl", "corpus.jsonl.gz"][*selector as usize % 3];
    let path = write(work, name, bytes)?;
    let corpus = Corpus::open(path.to_str().ok_or("path")?, "text").map_err(text)?;
    for doc in corpus.documents().take(10_000) {
        doc.map_err(text)?;
    }
    Ok(())
}

/// Under the fuzzer, a Rust allocation above this size is a finding: no
/// valid input of the seed sizes needs one, and a size taken unchecked from
/// a header usually asks for far more. (libtorch's own allocations are
/// bounded by libFuzzer's `-rss_limit_mb` instead.)
#[cfg(fuzzing)]
const ALLOCATION_BOUND: usize = 256 << 20;

#[cfg(fuzzing)]
mod bounded_allocator {
    use std::alloc::{GlobalAlloc, Layout, System};

    struct Bounded;

    fn check(size: usize) {
        if size > super::ALLOCATION_BOUND {
            eprintln!("a single allocation of {size} bytes");
            std::process::abort();
        }
    }

    // SAFETY: every call forwards to the system allocator unchanged.
    unsafe impl GlobalAlloc for Bounded {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            check(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            check(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            check(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Bounded = Bounded;
}
