//! Under a memory limit (`prlimit --as`), jobs whose big allocations are
//! known up front refuse them with an error naming the limit, instead of
//! being killed mid-run: an SAE's training state (d_sae × d_in) and
//! labelling's vocabulary × features, each run under `prlimit`; and a
//! batch's logits, checked in process against the memory left. The same
//! limit leaves room for a small job, so it is the size that is refused, not
//! the limit. Without `prlimit` (util-linux) those tests say so and return.

mod common;

use std::path::Path;
use std::process::Command;

/// The address-space limit the jobs run under: libtorch and its threads map
/// about 1 GiB of address space before any work.
const LIMIT: &str = "3221225472"; // 3 GiB

fn prlimit_available() -> bool {
    let ok = Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping the memory-limit tests: prlimit (util-linux) is not installed");
    }
    ok
}

/// `saescope args` under the limit: (exit code, stderr).
fn limited(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("prlimit")
        .arg(format!("--as={LIMIT}"))
        .arg(env!("CARGO_BIN_EXE_saescope"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(case: &str, (code, stderr): (Option<i32>, String), what: &str) {
    assert_eq!(code, Some(1), "{case}: {stderr}");
    assert!(stderr.contains(what), "{case}: no `{what}` in {stderr}");
    assert!(
        stderr.contains("address-space limit of 3.0 GiB"),
        "{case}: {stderr}"
    );
    eprintln!("{case}: {}", stderr.trim());
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn training_an_sae_too_big_for_the_limit_is_refused_and_a_small_one_runs() {
    if !prlimit_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = common::tiny_store(dir.path());
    let out = dir.path().join("sae");
    let args = |expansion: &str| common::train_tiny_args(&store, &out, "1024", expansion, false);
    // 64 × 2.6M latents: ~5 GiB of weights, gradients and Adam moments; this
    // machine may well have that much, the limit does not.
    let big = args("40000");
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    assert_refused(
        "training",
        limited(&big),
        "training blocks.1.hook_resid_post-topk-x40000-k4",
    );
    let small = args("2");
    let small: Vec<&str> = small.iter().map(String::as_str).collect();
    let (code, stderr) = limited(&small);
    assert_eq!(
        code,
        Some(0),
        "a small SAE trains under the same limit: {stderr}"
    );
}

#[test]
fn labelling_over_a_vocabulary_too_big_for_the_limit_is_refused() {
    if !prlimit_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (corpus, store) = common::tiny_store(dir.path());
    let sae_out = dir.path().join("sae");
    common::saescope_ok(&common::train_tiny_args(
        &store, &sae_out, "1024", "2", false,
    ));
    let sae = sae_out.join("blocks.1.hook_resid_post-topk-x2-k4");
    // A million distinct words: [128 features × 1M words] blocks, ~3.4 GiB.
    let word = |mut i: u32| {
        let mut w = String::from("w");
        for _ in 0..5 {
            w.push(char::from(b'a' + (i % 26) as u8));
            i /= 26;
        }
        w
    };
    let words: String = (0..1_000_000).map(|i| format!("{} 1\n", word(i))).collect();
    let list = dir.path().join("words.txt");
    std::fs::write(&list, words).unwrap();
    let dict = dir.path().join("dict");
    let args = [
        "label",
        "--sae",
        path_str(&sae),
        "--model",
        common::TINY_LLAMA,
        "--store",
        path_str(&store),
        "--corpus",
        path_str(&corpus),
        "--vocab-list",
        path_str(&list),
        "--vocab-size",
        "1000000",
        "--min-count",
        "1",
        "--tokens",
        "1000",
        "--out",
        path_str(&dict),
    ];
    assert_refused(
        "labelling",
        limited(&args),
        "explaining 128 features over a vocabulary of",
    );
}

/// The logits guard, in process: a batch whose `[batch, seq, vocab]` logits
/// are twice the memory left (whichever limit is tightest) is refused before
/// any work, while its token ids, 256 times smaller, fit.
#[test]
fn a_batch_whose_logits_exceed_the_memory_left_is_refused_before_the_forward() {
    let model = common::tiny_llama().model;
    let left = saescope::machine::memory::headroom()
        .expect("MemAvailable is always there on Linux")
        .bytes;
    let seq = 64i64;
    let logits_per_window = (seq * model.config().vocab_size * 4) as u64;
    let windows = (2 * left / logits_per_window + 1) as i64;
    let tokens = tch::Tensor::zeros([windows, seq], (tch::Kind::Int64, tch::Device::Cpu));
    let err = model
        .logits(&tokens)
        .expect_err("logits beyond the memory left");
    assert!(matches!(err, saescope::Error::OutOfMemory(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("logits for {windows} × {seq} tokens")),
        "{err}"
    );
    let small = tch::Tensor::zeros([2, seq], (tch::Kind::Int64, tch::Device::Cpu));
    assert!(model.logits(&small).is_ok());
}
