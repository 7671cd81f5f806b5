//! `saescope harvest` as 2 ranks (torchrun's variables, Gloo on loopback):
//! each rank stores its own shards under rank-disjoint names, rank 0 merges
//! the parts' manifests, and the merged stores (two hooks, an odd number of
//! shards) hold exactly the rows, token ids and shard boundaries of a
//! single-process harvest. A rank killed mid-harvest (no launcher) makes the
//! other fail within seconds, naming the dead rank, and the rerun with
//! `--resume` keeps each rank's finished shards and ends in the same store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::ranks::{as_ranks, ranks_of, skip_without_c10d};
use common::{harvest_tiny, harvest_tiny_args, write_corpus};
use saescope::data::store::parts::part_manifest_name;
use saescope::data::{Manifest, Share, Store};

const HOOKS: [&str; 2] = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"];

/// The harvest's flags: two hooks, 4,500 rows in shards of 1,000 (5 shards,
/// so the ranks hold 3 and 2).
fn flags() -> Vec<&'static str> {
    vec![
        "--hook",
        HOOKS[0],
        "--tokens",
        "4500",
        "--shard-tokens",
        "1000",
    ]
}

/// Asserts that two stores of a hook hold the same shards (boundaries, rows,
/// token ids, positions, activations) in the same order.
fn assert_same_store(single: &Path, merged: &Path) {
    let (a, b) = (Store::open(single).unwrap(), Store::open(merged).unwrap());
    let (ma, mb) = (a.manifest(), b.manifest());
    assert!(mb.complete, "{}", merged.display());
    assert_eq!((ma.tokens, ma.windows), (mb.tokens, mb.windows));
    assert_eq!(ma.shards.len(), mb.shards.len());
    for (i, (sa, sb)) in ma.shards.iter().zip(&mb.shards).enumerate() {
        assert_eq!(
            (sa.first_window, sa.windows, sa.rows),
            (sb.first_window, sb.windows, sb.rows),
            "shard {i}"
        );
        let (la, lb) = (a.load_shard(i).unwrap(), b.load_shard(i).unwrap());
        assert!(la.tokens.equal(&lb.tokens), "token ids of shard {i}");
        assert!(la.positions.equal(&lb.positions), "positions of shard {i}");
        assert!(la.acts.equal(&lb.acts), "activations of shard {i}");
    }
    let gap = ma
        .stats
        .sum
        .iter()
        .zip(&mb.stats.sum)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
        .fold(0.0, f64::max);
    assert!(gap < 1e-9, "statistics differ by {gap}");
}

fn rank_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("shard-"))
        .collect();
    names.sort();
    names
}

fn single_store(dir: &Path, corpus: &Path) -> PathBuf {
    let single = dir.join("single");
    harvest_tiny(corpus, &single, &flags());
    single
}

#[test]
fn two_ranks_harvest_the_store_one_process_harvests() {
    if skip_without_c10d() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 600);
    let single = single_store(dir.path(), &corpus);
    let merged = dir.path().join("merged");
    let rows = Manifest::read(&single.join(HOOKS[0])).unwrap().tokens;
    for (rank, (ok, text)) in as_ranks(&harvest_tiny_args(&corpus, &merged, &flags()), 2)
        .into_iter()
        .enumerate()
    {
        assert!(ok, "rank {rank}:\n{text}");
        if rank == 0 {
            assert!(text.contains(&format!("stored {rows} tokens")), "{text}");
        }
    }
    for hook in HOOKS {
        assert_same_store(&single.join(hook), &merged.join(hook));
        let files = rank_files(&merged.join(hook));
        let by_rank = |r: &str| files.iter().filter(|f| f.starts_with(r)).count();
        assert_eq!(
            (by_rank("shard-p000-"), by_rank("shard-p001-")),
            (3, 2),
            "{files:?}"
        );
    }
}

#[test]
fn a_rank_killed_mid_harvest_fails_the_job_and_each_rank_resumes_its_part() {
    if skip_without_c10d() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 600);
    let single = single_store(dir.path(), &corpus);
    let cut = dir.path().join("cut");
    let args = harvest_tiny_args(&corpus, &cut, &flags());
    // Rank 1 is killed once its first shard is listed in both hooks' parts
    // (written `blocks.1` first, as the hooks were given); rank 0 must then
    // fail with an error rather than wait forever.
    let part1 = cut.join(HOOKS[0]);
    let part1_manifest = part_manifest_name(Share::new(1, 2).unwrap());
    let started = Instant::now();
    let outputs = ranks_of(2, "127.0.0.1", |rank| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_saescope"));
        command.args(&args).env("SAESCOPE_TEST_PAUSE_MS", "300");
        if rank == 1 {
            // A wrapper that kills this rank (SIGKILL) after its first shard.
            let watch = format!(
                "\"$@\" & pid=$!; until grep -q first_window '{}/{}' 2>/dev/null; do sleep 0.01; done; kill -9 $pid; wait $pid",
                part1.display(),
                part1_manifest
            );
            let mut wrapper = Command::new("bash");
            wrapper
                .args(["-c", &watch, "bash", env!("CARGO_BIN_EXE_saescope")])
                .args(&args)
                .env("SAESCOPE_TEST_PAUSE_MS", "300");
            return wrapper;
        }
        command
    });
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "the survivor waited"
    );
    let (ok0, text0) = &outputs[0];
    println!("rank 0 after rank 1 died:\n{text0}");
    assert!(!ok0, "rank 0 succeeded without rank 1:\n{text0}");
    assert!(
        text0.contains("rank 1 did not answer a roll call"),
        "the error does not name the dead rank:\n{text0}"
    );
    assert!(!outputs[1].0, "rank 1 was not killed");
    let kept = Manifest::read_named(&part1, &part1_manifest).unwrap();
    assert!(!kept.complete && !kept.shards.is_empty());
    let first_shard = part1.join(&kept.shards[0].file);
    let written = std::fs::metadata(&first_shard).unwrap().modified().unwrap();

    let mut resume = args.clone();
    resume.push("--resume".into());
    for (rank, (ok, text)) in as_ranks(&resume, 2).into_iter().enumerate() {
        assert!(ok, "resume, rank {rank}:\n{text}");
    }
    assert_eq!(
        std::fs::metadata(&first_shard).unwrap().modified().unwrap(),
        written,
        "rank 1's finished shard was written again"
    );
    for hook in HOOKS {
        assert_same_store(&single.join(hook), &cut.join(hook));
    }
}
