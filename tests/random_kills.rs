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

/// How long an uninterrupted run lasts per kill point: the pause after each
/// unit of work (`SAESCOPE_TEST_PAUSE_MS`) stretches the tiny jobs to this,
/// so that kills land well after start-up, inside steps and writes.
const SLICE_MS: u64 = 700;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the job `args(out, resume)` whole into `whole`, then into `cut`
/// killed `SAESCOPE_KILL_POINTS` times, resuming (when `resumable(cut)`)
/// after each kill, and finally to the end. The job does about `units`
/// units of work (shards, steps, batches), paced so that the whole run takes
/// about `SLICE_MS` per kill point.
///
/// Each kill comes at a moment drawn uniformly over the first 1/points of a
/// whole run's duration after the (re)start. A killed run gets through at
/// most one unit more than its share of time allows, so with `units` well
/// above twice the kill points the job cannot finish before the last kill:
/// every kill lands, each at a later stage of the job. Returns the number
/// of kills.
fn kill_and_resume(
    args: impl Fn(&Path, bool) -> Vec<String>,
    resumable: impl Fn(&Path) -> bool,
    (whole, cut): (&Path, &Path),
    units: u64,
    seed: u64,
) -> u64 {
    let bin = env!("CARGO_BIN_EXE_saescope");
    let points = env_or("SAESCOPE_KILL_POINTS", 3).max(1);
    let pause_ms = (points * SLICE_MS / units).max(1).to_string();
    let command = |out: &Path| {
        let mut c = Command::new(bin);
        c.args(args(out, resumable(out)))
            .env("SAESCOPE_TEST_PAUSE_MS", &pause_ms);
        c
    };
    let run = |out: &Path| {
        let started = Instant::now();
        let output = command(out).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        started.elapsed()
    };
    let slice = run(whole) / points as u32;
    let mut rng = StdRng::seed_from_u64(env_or("SAESCOPE_KILL_SEED", 0) * 1000 + seed);
    for kill in 0..points {
        let at = Duration::from_micros(rng.random_range(0..slice.as_micros().max(1) as u64));
        let mut child = command(cut)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the job ended ({status}) before kill {kill} of {points}, {at:?} after its start"
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    run(cut);
    points
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
            &["--shard-tokens", "48", "--threads", "1"],
            resume,
        ));
        a
    };
    let resumable = |out: &Path| out.join("manifest.json").is_file();
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    let kills = kill_and_resume(args, resumable, (&whole, &cut), 84, 1);
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
    let kills = kill_and_resume(args, resumable, (&whole, &cut), 512, 2);
    eprintln!("training: {kills} kills landed");
    let sae: PathBuf = PathBuf::from("blocks.1.hook_resid_post-topk-x2-k4");
    for file in ["sae_weights.safetensors", "cfg.json", "metrics.jsonl"] {
        files_equal(&whole.join(&sae).join(file), &cut.join(&sae).join(file));
    }
}

#[test]
fn labelling_killed_at_random_moments_resumes_to_the_same_dictionary() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, store, sae) = common::tiny_sae(dir.path());
    let args = |out: &Path, resume: bool| {
        common::label_tiny_args((&corpus, &store, &sae), out, "500", resume)
    };
    let resumable = |out: &Path| out.join(".checkpoint").join("state.json").is_file();
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    let kills = kill_and_resume(args, resumable, (&whole, &cut), 32, 3);
    eprintln!("labelling: {kills} kills landed");
    files_equal(&whole.join("features.jsonl"), &cut.join("features.jsonl"));
}
