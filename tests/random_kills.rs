//! Harvest, training and labelling SIGKILLed at seeded random moments,
//! resumed after each kill, end with exactly the outputs of an uninterrupted
//! run: the store's manifest and shards, the SAE's weights, config and
//! metrics, the dictionary's features.
//! `SAESCOPE_KILL_POINTS` kills per job (default 3, the CI version) and
//! `SAESCOPE_KILL_SEED` choose them; `scripts/random-kills.sh` runs 20.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A harvest's pause after each shard, so that its few hundred milliseconds
/// of work spread over enough time for kills to land between and inside
/// shard writes (training ignores it).
const SHARD_DELAY_MS: &str = "40";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the job `args(out, resume)` whole into `whole`, then into `cut`
/// killed at `SAESCOPE_KILL_POINTS` moments drawn uniformly over the whole
/// run's duration, resuming (when `resumable(cut)`) after each kill, and
/// finally to the end. Returns how many kills landed before the job ended.
fn kill_and_resume(
    args: impl Fn(&Path, bool) -> Vec<String>,
    resumable: impl Fn(&Path) -> bool,
    whole: &Path,
    cut: &Path,
    seed: u64,
) -> usize {
    let bin = env!("CARGO_BIN_EXE_saescope");
    let run = |out: &Path| {
        let started = Instant::now();
        let output = Command::new(bin)
            .args(args(out, resumable(out)))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        started.elapsed()
    };
    let duration = run(whole).max(Duration::from_millis(50));
    let mut rng = StdRng::seed_from_u64(env_or("SAESCOPE_KILL_SEED", 0) * 1000 + seed);
    let mut kills = 0;
    for _ in 0..env_or("SAESCOPE_KILL_POINTS", 3) {
        let at = Duration::from_micros(rng.random_range(0..duration.as_micros() as u64));
        let mut child = Command::new(bin)
            .args(args(cut, resumable(cut)))
            .env("SAESCOPE_TEST_SHARD_DELAY_MS", SHARD_DELAY_MS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "the job failed between kills");
                break; // finished before this kill point
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    run(cut);
    kills
}

fn files_equal(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(
        x == y,
        "{} differs from the uninterrupted run's",
        b.display()
    );
}

#[test]
fn harvests_killed_at_random_moments_resume_to_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 400);
    let args = |out: &Path, resume: bool| {
        let mut a = common::harvest_tiny_args(&corpus, out, &["--tokens", "4000", "--batch", "4"]);
        a.extend(common::with_resume(
            &["--shard-tokens", "256", "--threads", "1"],
            resume,
        ));
        a
    };
    let resumable = |out: &Path| out.join("manifest.json").is_file();
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    let kills = kill_and_resume(args, resumable, &whole, &cut, 1);
    eprintln!("harvest: {kills} kills landed");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("manifest.json")).unwrap()).unwrap();
    files_equal(&whole.join("manifest.json"), &cut.join("manifest.json"));
    for shard in manifest["shards"].as_array().unwrap() {
        let file = shard["file"].as_str().unwrap();
        files_equal(&whole.join(file), &cut.join(file));
    }
}

#[test]
fn training_killed_at_random_moments_resumes_to_the_same_sae() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = common::tiny_store(dir.path());
    let args =
        |out: &Path, resume: bool| common::train_tiny_args(&store, out, "65536", "2", resume);
    let resumable = |out: &Path| out.join("checkpoint").join("state.json").is_file();
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    let kills = kill_and_resume(args, resumable, &whole, &cut, 2);
    eprintln!("training: {kills} kills landed");
    let sae: PathBuf = PathBuf::from("blocks.1.hook_resid_post-topk-x2-k4");
    for file in ["sae_weights.safetensors", "cfg.json", "metrics.jsonl"] {
        files_equal(&whole.join(&sae).join(file), &cut.join(&sae).join(file));
    }
}

#[test]
fn labelling_killed_at_random_moments_resumes_to_the_same_dictionary() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, store) = common::tiny_store(dir.path());
    let sae_out = dir.path().join("sae");
    common::saescope_ok(&common::train_tiny_args(
        &store, &sae_out, "4096", "2", false,
    ));
    let sae = sae_out.join("blocks.1.hook_resid_post-topk-x2-k4");
    let args = |out: &Path, resume: bool| {
        let a = [
            "label",
            "--sae",
            sae.to_str().unwrap(),
            "--model",
            common::TINY_LLAMA,
            "--store",
            store.to_str().unwrap(),
            "--corpus",
            corpus.to_str().unwrap(),
            "--vocab-from",
            corpus.to_str().unwrap(),
            "--tokens",
            "4000",
            "--checkpoint-every",
            "500",
            "--threads",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        common::with_resume(&a, resume)
    };
    let resumable = |out: &Path| out.join(".checkpoint").join("state.json").is_file();
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    let kills = kill_and_resume(args, resumable, &whole, &cut, 3);
    eprintln!("labelling: {kills} kills landed");
    files_equal(&whole.join("features.jsonl"), &cut.join("features.jsonl"));
}
