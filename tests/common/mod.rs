//! Helpers shared by the data-layer tests: a deterministic English-like
//! corpus and the tiny Llama fixture.

#![allow(dead_code)]

pub mod decode;
pub mod largest_allocation;
pub mod ranks;
pub mod server;

use std::path::{Path, PathBuf};

use saescope::model::{load_model, LoadedModel};
use tch::{Device, Kind};

pub const TINY_LLAMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny/llama");

pub fn tiny_llama() -> LoadedModel {
    load_model(TINY_LLAMA, Device::Cpu, Kind::Float).expect("tiny llama fixture")
}

/// `paragraphs` paragraphs of pseudo-random words (fixed seed), blank-line separated.
pub fn corpus_text(paragraphs: usize) -> String {
    const WORDS: [&str; 24] = [
        "the",
        "model",
        "reads",
        "a",
        "window",
        "of",
        "tokens",
        "and",
        "writes",
        "its",
        "activations",
        "to",
        "disk",
        "where",
        "shards",
        "wait",
        "for",
        "training",
        "sparse",
        "features",
        "emerge",
        "slowly",
        "from",
        "noise",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = String::new();
    for p in 0..paragraphs {
        let n = 5 + (next() % 40) as usize;
        for i in 0..n {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
        }
        out.push_str(&format!(" {p}.\n\n"));
    }
    out
}

/// Runs the `saescope` binary: (success, stdout, stderr).
pub fn saescope(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(args)
        .output()
        .expect("run saescope");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `saescope harvest` of the tiny Llama's `blocks.1.hook_resid_post` over
/// `corpus` into `out` (16-token windows), with `extra` flags.
pub fn harvest_tiny_args(corpus: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = with_resume(
        &[
            "harvest",
            "--model",
            TINY_LLAMA,
            "--corpus",
            corpus.to_str().expect("UTF-8 path"),
            "--hook",
            "blocks.1.hook_resid_post",
            "--context",
            "16",
            "--out",
            out.to_str().expect("UTF-8 path"),
        ],
        false,
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A 400-paragraph corpus in `dir` and a 4,000-row tiny-Llama store of it
/// (`dir/acts`, shards of 1,000 rows): `(corpus, store)`.
pub fn tiny_store(dir: &Path) -> (PathBuf, PathBuf) {
    let corpus = write_corpus(dir, 400);
    let store = dir.join("acts");
    harvest_tiny(
        &corpus,
        &store,
        &["--tokens", "4000", "--shard-tokens", "1000"],
    );
    (corpus, store)
}

/// Runs `args` through the binary; panics with stderr on failure; stdout.
pub fn saescope_ok(args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, err) = saescope(&refs);
    assert!(ok, "{}: {err}", refs.first().copied().unwrap_or_default());
    stdout
}

/// Runs [`harvest_tiny_args`]; panics with stderr on failure.
pub fn harvest_tiny(corpus: &Path, out: &Path, extra: &[&str]) -> String {
    saescope_ok(&harvest_tiny_args(corpus, out, extra))
}

/// `saescope train` of a TopK SAE (k = 4, `expansion`×) on the tiny Llama's
/// `blocks.1.hook_resid_post` store, `tokens` rows in batches of 128,
/// checkpointed every 1,024, into `out`; `--resume` when asked.
pub fn train_tiny_args(
    store: &Path,
    out: &Path,
    tokens: &str,
    expansion: &str,
    resume: bool,
) -> Vec<String> {
    let args = [
        "train",
        "--store",
        store.to_str().expect("UTF-8 path"),
        "--tokens",
        tokens,
        "--batch-size",
        "128",
        "--hook",
        "blocks.1.hook_resid_post",
        "--architecture",
        "topk",
        "--expansion",
        expansion,
        "--k",
        "4",
        "--lr-warmup-steps",
        "4",
        "--checkpoint-every",
        "1024",
        "--threads",
        "1",
        "--out",
        out.to_str().expect("UTF-8 path"),
    ];
    with_resume(&args, resume)
}

/// `args` as owned strings, then `--resume` when asked.
pub fn with_resume(args: &[&str], resume: bool) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if resume {
        out.push("--resume".into());
    }
    out
}

/// Copies the folder `from` (subfolders included) to `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy file");
        }
    }
}

/// Writes a corpus of `paragraphs` paragraphs to `dir/corpus.txt`.
pub fn write_corpus(dir: &Path, paragraphs: usize) -> PathBuf {
    let path = dir.join("corpus.txt");
    std::fs::write(&path, corpus_text(paragraphs)).expect("write corpus");
    path
}

/// A tiny store ([`tiny_store`]) and a TopK SAE (x2, k = 4) trained on 4,096
/// of its rows, for labelling tests: `(corpus, store, sae folder)`.
pub fn tiny_sae(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (corpus, store) = tiny_store(dir);
    let out = dir.join("sae");
    saescope_ok(&train_tiny_args(&store, &out, "4096", "2", false));
    (
        corpus,
        store,
        out.join("blocks.1.hook_resid_post-topk-x2-k4"),
    )
}

/// `saescope label` of `sae` over 4,000 rows of `store` (contexts from
/// `corpus`, vocabulary counted there), checkpointed every
/// `checkpoint_every` tokens, into `out`; `--resume` when asked.
pub fn label_tiny_args(
    (corpus, store, sae): (&Path, &Path, &Path),
    out: &Path,
    checkpoint_every: &str,
    resume: bool,
) -> Vec<String> {
    let path = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
    let args = [
        "label".to_string(),
        "--sae".into(),
        path(sae),
        "--model".into(),
        TINY_LLAMA.into(),
        "--store".into(),
        path(store),
        "--corpus".into(),
        path(corpus),
        "--vocab-from".into(),
        path(corpus),
        "--tokens".into(),
        "4000".into(),
        "--checkpoint-every".into(),
        checkpoint_every.into(),
        "--threads".into(),
        "1".into(),
        "--out".into(),
        path(out),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    with_resume(&refs, resume)
}
