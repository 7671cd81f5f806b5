//! A disk that fills up mid-job: the job stops with a clear error naming the
//! cause, what it had written stays valid (a store's manifest lists only
//! whole shards, and `store verify` passes), and once there is room again
//! `--resume` ends with exactly what an uninterrupted run writes.
//!
//! The small disk is a tmpfs mounted by the test, which needs root; where the
//! mount fails the test says why on stderr and returns.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `kib` KiB mounted on a fresh folder, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(kib: u64) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk { dir })
    }

    /// [`mount`](Self::mount), or `None` after printing why the `what`
    /// test skips.
    fn for_test(kib: u64, what: &str) -> Option<SmallDisk> {
        SmallDisk::mount(kib)
            .map_err(|why| eprintln!("skipping the full-disk {what} test: {why}"))
            .ok()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A clean failure that names the full disk and the path it could not
/// write (somewhere under `disk`): exit 1, no panic.
fn assert_out_of_space(stderr: &str, code: Option<i32>, disk: &Path) {
    assert_eq!(code, Some(1), "expected a clean failure: {stderr}");
    assert!(
        stderr.to_lowercase().contains("no space left"),
        "the error should name the full disk: {stderr}"
    );
    assert!(
        stderr.contains(disk.to_str().unwrap()),
        "the error should name the path: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn harvest_args(corpus: &Path, out: &Path) -> Vec<String> {
    let extra = [
        "--tokens",
        "4000",
        "--shard-tokens",
        "256",
        "--threads",
        "1",
    ];
    common::harvest_tiny_args(corpus, out, &extra)
}

#[test]
fn a_harvest_on_a_full_disk_stops_cleanly_and_resumes_to_the_same_store() {
    let Some(disk) = SmallDisk::for_test(400, "harvest") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(work.path(), 400);
    let whole = work.path().join("whole");
    let bin = env!("CARGO_BIN_EXE_saescope");
    let ok = Command::new(bin)
        .args(harvest_args(&corpus, &whole))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // 4,000 rows of 64 f32 need ~1 MB: the 400 KiB disk fills part-way.
    let full: PathBuf = disk.path().join("store");
    let out = Command::new(bin)
        .args(harvest_args(&corpus, &full))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_out_of_space(&stderr, out.status.code(), disk.path());
    // What was written is a valid, partial store.
    let verify = Command::new(bin)
        .args(["store", "verify"])
        .arg(&full)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("manifest.json")).unwrap()).unwrap();
    let kept = manifest["shards"].as_array().unwrap().len();
    assert!(kept > 0 && manifest["complete"] == false, "{manifest}");

    // Room again: the store moves to a larger disk and the harvest resumes.
    let roomy = work.path().join("roomy");
    common::copy_tree(&full, &roomy);
    let mut args = harvest_args(&corpus, &roomy);
    args.push("--resume".into());
    let resumed = Command::new(bin).args(args).output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert!(
        read(&whole.join("manifest.json")) == read(&roomy.join("manifest.json")),
        "manifests differ"
    );
    let m: serde_json::Value = serde_json::from_slice(&read(&whole.join("manifest.json"))).unwrap();
    for shard in m["shards"].as_array().unwrap() {
        let file = shard["file"].as_str().unwrap();
        assert!(
            read(&whole.join(file)) == read(&roomy.join(file)),
            "{file} differs"
        );
    }
    eprintln!(
        "full disk after {kept} shards; resumed to {} shards",
        m["shards"].as_array().unwrap().len()
    );
}

/// The job `args(out, resume)` run whole into `work/whole`, then on the
/// small disk (into `disk/name`), where it must stop for want of space with
/// `checkpoint` (relative to its output) intact, then moved to `work/roomy`
/// and resumed: `(whole, roomy)` for the caller to compare.
fn full_then_resumed(
    args: impl Fn(&Path, bool) -> Vec<String>,
    (disk, work): (&SmallDisk, &Path),
    name: &str,
    checkpoint: &str,
) -> (PathBuf, PathBuf) {
    let bin = env!("CARGO_BIN_EXE_saescope");
    let run_ok = |out: &Path, resume: bool| {
        let done = Command::new(bin).args(args(out, resume)).output().unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
    };
    let whole = work.join("whole");
    run_ok(&whole, false);
    let full = disk.path().join(name);
    let out = Command::new(bin).args(args(&full, false)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_out_of_space(&stderr, out.status.code(), disk.path());
    assert!(
        full.join(checkpoint).is_file(),
        "{checkpoint} should have been kept: {stderr}"
    );
    let roomy = work.join("roomy");
    common::copy_tree(&full, &roomy);
    run_ok(&roomy, true);
    (whole, roomy)
}

#[test]
fn training_on_a_full_disk_stops_cleanly_and_resumes_to_the_same_sae() {
    let Some(disk) = SmallDisk::for_test(KIB_FOR_TRAINING, "training") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (_, store) = common::tiny_store(work.path());
    let args = |out: &Path, resume: bool| common::train_tiny_args(&store, out, "8192", "4", resume);
    // The first checkpoint fits.
    let (whole, roomy) =
        full_then_resumed(args, (&disk, work.path()), "sae", "checkpoint/state.json");
    let sae = "blocks.1.hook_resid_post-topk-x4-k4";
    for file in ["sae_weights.safetensors", "cfg.json", "metrics.jsonl"] {
        let read = |root: &Path| std::fs::read(root.join(sae).join(file)).unwrap();
        assert!(
            read(&whole) == read(&roomy),
            "{file} differs from the uninterrupted run's"
        );
    }
}

/// Room for the first training checkpoint but not, beside it, the second's
/// temporary copy.
const KIB_FOR_TRAINING: u64 = 700;

#[test]
fn labelling_on_a_full_disk_stops_cleanly_and_resumes_to_the_same_dictionary() {
    let Some(disk) = SmallDisk::for_test(KIB_FOR_LABELLING, "labelling") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (corpus, store, sae) = common::tiny_sae(work.path());
    let args =
        |out: &Path, resume| common::label_tiny_args((&corpus, &store, &sae), out, "1000", resume);
    // The statistics checkpoints fit; the dictionary's ~2 MB of files do not,
    // and the finished pass's checkpoint is kept.
    let (whole, roomy) =
        full_then_resumed(args, (&disk, work.path()), "dict", ".checkpoint/state.json");
    let read = |root: &Path| std::fs::read(root.join("features.jsonl")).unwrap();
    assert!(
        read(&whole) == read(&roomy),
        "features.jsonl differs from the uninterrupted run's"
    );
    assert!(
        !roomy.join(".checkpoint").exists(),
        "a finished run removes its checkpoint"
    );
}

/// Room for the statistics checkpoints and part of the dictionary.
const KIB_FOR_LABELLING: u64 = 1024;
