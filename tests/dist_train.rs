//! SAE training over c10d (Gloo on loopback): `saescope train` started as 2
//! ranks with torchrun's variables, each reading its own share of the store
//! (half of the shards) and training on its half of every batch, gives the
//! weights of one process that reads the same two shares (`--read-shares
//! 2`) into whole batches, for TopK (the sparse step) and the L1 standard
//! SAE, including batches whose rows do not split evenly and shares that run
//! out of rows at different steps; only rank 0 writes; module distribution
//! (one SAE per rank, rows moved by all-to-all or all-gather) gives the SAEs
//! one process trains, and a checkpoint write that fails on one rank fails
//! the job instead of hanging it; a run killed after a checkpoint resumes on another
//! number of ranks to the uninterrupted run's weights; and two "hosts"
//! (network namespaces joined by a veth pair) train as one.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::ranks::{as_ranks, launch_args, ranks_of, skip_without_c10d};
use common::{saescope_ok, tiny_store, train_tiny_args};
use saescope::io::safetensors::read_safetensors;
use tch::Tensor;

/// The TopK SAE's folder under a training run's output.
const TOPK: &str = "blocks.1.hook_resid_post-topk-x2-k4";

/// The tiny TopK run's flags, read in 2 shares (what 2 ranks read).
fn in_two_shares(store: &Path, out: &Path, resume: bool) -> Vec<String> {
    let mut args = train_tiny_args(store, out, "2048", "2", resume);
    args.extend(["--read-shares".to_string(), "2".to_string()]);
    args
}

/// A tiny store in `dir` and the weights of the TopK SAE that one process,
/// without a launcher, trains on 2,048 of its rows read in 2 shares: what
/// the 2-rank runs must reproduce.
fn store_and_reference(dir: &Path) -> (std::path::PathBuf, HashMap<String, Tensor>) {
    let (_, store) = tiny_store(dir);
    let single = dir.join("single");
    saescope_ok(&in_two_shares(&store, &single, false));
    (store, weights(&single.join(TOPK)))
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    read_safetensors(&dir.join("sae_weights.safetensors")).unwrap()
}

/// The largest difference between two SAEs' tensors, relative to the
/// tensor's largest magnitude.
fn relative_gap(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(name, t)| {
            let scale = t.abs().max().double_value(&[]).max(1e-12);
            (t - &b[name]).abs().max().double_value(&[]) / scale
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_ranks_train_the_same_sae_as_one_process() {
    if skip_without_c10d() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = tiny_store(dir.path());
    // TopK (sparse step), and the standard SAE with its L1 penalty; batches of
    // 128 and of 127 rows (an odd batch: shares of 63 and 64 rows, over
    // 5,080 rows, so each rank's shards (about 2,000 rows each, not equal)
    // run out and start a new epoch at a different step).
    let cases: [(&str, &[&str], &str); 3] = [
        ("topk", &[], TOPK),
        (
            "topk-odd",
            &["--batch-size", "127", "--tokens", "5080"],
            TOPK,
        ),
        (
            "standard",
            &[
                "--architecture",
                "standard",
                "--sparsity-coefficient",
                "0.5",
            ],
            "blocks.1.hook_resid_post-standard-x2-c0.5",
        ),
    ];
    let mut trained = Vec::new();
    for (name, extra, folder) in cases {
        // The tiny TopK run's flags, with `extra`'s replacing (or adding to) them.
        let run = |out: &Path| {
            let mut args = train_tiny_args(&store, out, "2048", "2", false);
            for pair in extra.chunks(2) {
                match args.iter().position(|a| a == pair[0]) {
                    Some(i) => args[i + 1] = pair[1].to_string(),
                    None => args.extend(pair.iter().map(|s| s.to_string())),
                }
            }
            if extra.contains(&"standard") {
                let k = args.iter().position(|a| a == "--k").unwrap();
                args.drain(k..k + 2);
            }
            args
        };
        // One process without a launcher reading both shares.
        let single = dir.path().join(format!("{name}-single"));
        let mut alone = run(&single);
        alone.extend(["--read-shares".to_string(), "2".to_string()]);
        saescope_ok(&alone);
        let parallel = dir.path().join(format!("{name}-parallel"));
        for (rank, (ok, text)) in as_ranks(&run(&parallel), 2).into_iter().enumerate() {
            assert!(ok, "{name}, rank {rank}:\n{text}");
        }
        let (a, b) = (
            weights(&single.join(folder)),
            weights(&parallel.join(folder)),
        );
        let gap = relative_gap(&a, &b);
        println!("{name}: 2 ranks and 1 process differ by {gap:.2e} (relative)");
        assert!(gap < 1e-3, "{name}: 2 ranks differ from 1 process by {gap}");
        trained.push(a);
        let metrics = std::fs::read_to_string(parallel.join(folder).join("metrics.jsonl")).unwrap();
        let single_metrics =
            std::fs::read_to_string(single.join(folder).join("metrics.jsonl")).unwrap();
        assert_eq!(
            metrics.lines().count(),
            single_metrics.lines().count(),
            "{name}: rank 0 alone logs"
        );
    }
    // Batches of 127 rather than 128 rows train a visibly different SAE, so
    // a gap under 1e-3 is a match, not an insensitive comparison.
    let other = relative_gap(&trained[0], &trained[1]);
    assert!(other > 1e-2, "batch 128 and 127 differ by only {other}");
}

#[test]
fn module_distribution_gives_each_rank_whole_saes_and_the_same_weights() {
    if skip_without_c10d() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 400);
    let store = dir.path().join("acts");
    common::harvest_tiny(
        &corpus,
        &store,
        &[
            "--hook",
            "blocks.0.hook_resid_post",
            "--tokens",
            "4000",
            "--shard-tokens",
            "1000",
        ],
    );
    // Two SAEs, one per hook: rank 0 trains the first, rank 1 the second.
    let args = |out: &Path, extra: &[&str]| {
        let mut args = train_tiny_args(&store, out, "2048", "2", false);
        let hook = args.iter().position(|a| a == "--hook").unwrap();
        args[hook + 1] = "blocks.0.hook_resid_post,blocks.1.hook_resid_post".into();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let single = dir.path().join("single");
    saescope_ok(&args(&single, &["--read-shares", "2"]));
    let mut sent = Vec::new();
    for scheme in ["all_to_all", "all_gather"] {
        let out = dir.path().join(scheme);
        let outputs = as_ranks(
            &args(&out, &["--distribute-modules", "--module-exchange", scheme]),
            2,
        );
        let mut bytes = 0u64;
        for (rank, (ok, text)) in outputs.iter().enumerate() {
            assert!(ok, "{scheme}, rank {rank}:\n{text}");
            bytes += text
                .lines()
                .find_map(|l| l.split("moved rows to the SAEs' ranks: ").nth(1))
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{scheme}, rank {rank}: no byte count in\n{text}"));
        }
        sent.push(bytes);
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("saes.json")).unwrap()).unwrap();
        let ranks: Vec<u64> = manifest["saes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["trained_by_rank"].as_u64().unwrap())
            .collect();
        assert_eq!(ranks, [0, 1], "{scheme}: {manifest}");
        for entry in manifest["saes"].as_array().unwrap() {
            let folder = entry["path"].as_str().unwrap();
            let gap = relative_gap(&weights(&single.join(folder)), &weights(&out.join(folder)));
            println!("{scheme}: {folder} {gap:.2e} from one process (relative)");
            assert!(
                gap < 1e-4,
                "{scheme}: {folder} differs from one process by {gap}"
            );
        }
    }
    // All-to-all sends each hook's rows to its owner only: half of what
    // all-gather sends to every rank (2 hooks of equal width, 2 ranks).
    println!(
        "bytes sent per step, both ranks: all-to-all {}, all-gather {}",
        sent[0], sent[1]
    );
    assert!(2 * sent[0] <= sent[1] + sent[1] / 50, "{sent:?}");

    // A checkpoint that rank 1 cannot write (a folder stands where its SAE's
    // file goes): rank 1 fails, and rank 0, waiting for it after its own
    // write, fails too within seconds, naming rank 1, instead of hanging.
    let blocked = dir.path().join("blocked");
    let file = "blocks.1.hook_resid_post-topk-x2-k4.step8.safetensors";
    std::fs::create_dir_all(blocked.join("checkpoint").join(file)).unwrap();
    let started = std::time::Instant::now();
    let outputs = as_ranks(&args(&blocked, &["--distribute-modules"]), 2);
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !outputs[1].0 && outputs[1].1.contains(file),
        "{}",
        outputs[1].1
    );
    assert!(
        !outputs[0].0 && outputs[0].1.contains("rank 1 did not answer"),
        "{}",
        outputs[0].1
    );
    assert!(!blocked.join("checkpoint").join("state.json").exists());
}

#[test]
fn a_single_process_run_killed_after_a_checkpoint_resumes_on_two_ranks() {
    if skip_without_c10d() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, whole) = store_and_reference(dir.path());
    let folder = TOPK;
    // 50 ms a step: killed once the first checkpoint (8 steps of 16) exists.
    let cut = dir.path().join("cut");
    let mut first = Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(in_two_shares(&store, &cut, false))
        .env("SAESCOPE_TEST_PAUSE_MS", "50")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = cut.join("checkpoint").join("state.json");
    let start = std::time::Instant::now();
    while !state.exists() {
        assert!(start.elapsed().as_secs() < 60, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        !cut.join(folder).join("sae_weights.safetensors").exists(),
        "the run finished before the kill"
    );
    // 3 ranks cannot divide 2 shares: refused, naming why.
    for (ok, text) in as_ranks(&train_tiny_args(&store, &cut, "2048", "2", true), 3) {
        assert!(
            !ok && text.contains("2 share(s), fewer than the job's 3 ranks"),
            "{text}"
        );
    }
    // The checkpoint's 2 shares, now read by 2 ranks.
    for (rank, (ok, text)) in as_ranks(&train_tiny_args(&store, &cut, "2048", "2", true), 2)
        .into_iter()
        .enumerate()
    {
        assert!(ok, "resume, rank {rank}:\n{text}");
    }
    let gap = relative_gap(&whole, &weights(&cut.join(folder)));
    println!("resumed on 2 ranks: {gap:.2e} from the uninterrupted run (relative)");
    assert!(
        gap < 1e-4,
        "resumed on 2 ranks, {gap} from the uninterrupted run"
    );
}

#[test]
fn saescope_launch_runs_the_ranks_and_stops_them_when_one_fails() {
    if skip_without_c10d() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, single) = store_and_reference(dir.path());
    let folder = TOPK;
    let launched = dir.path().join("launched");
    saescope_ok(&launch_args(
        2,
        train_tiny_args(&store, &launched, "2048", "2", false),
    ));
    let gap = relative_gap(&single, &weights(&launched.join(folder)));
    assert!(gap < 1e-3, "launched on 2 ranks: {gap} from one process");
    // A rank killed mid-run: the launcher stops the other (which would
    // otherwise wait in its next all-reduce until the timeout) and names the
    // dead rank.
    let paced = dir.path().join("paced");
    let args = launch_args(2, train_tiny_args(&store, &paced, "2048", "2", false));
    let launcher = Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(&args)
        .env("SAESCOPE_DIST_TIMEOUT", "120")
        .env("SAESCOPE_TEST_PAUSE_MS", "100")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The launcher's children, in rank order (started one after the other).
    let start = std::time::Instant::now();
    let ranks = loop {
        let out = Command::new("pgrep")
            .args(["-P", &launcher.id().to_string()])
            .output()
            .unwrap();
        let mut pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        pids.sort();
        if pids.len() == 2 {
            break pids;
        }
        assert!(start.elapsed().as_secs() < 30, "the ranks did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Killed once the first checkpoint exists.
    let state = paced.join("checkpoint").join("state.json");
    while !state.exists() {
        assert!(start.elapsed().as_secs() < 60, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: kill(2) of a child process of this test.
    unsafe { libc::kill(ranks[1], libc::SIGKILL) };
    let killed_at = std::time::Instant::now();
    let out = launcher.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rank 1 failed (signal: 9"), "{err}");
    assert!(err.contains("the other ranks were stopped"), "{err}");
    assert!(
        killed_at.elapsed().as_secs() < 10,
        "took {:?}",
        killed_at.elapsed()
    );
    assert!(
        !paced.join(folder).join("sae_weights.safetensors").exists(),
        "the run finished before the kill"
    );
    // Relaunched with --resume: the uninterrupted run's weights.
    saescope_ok(&launch_args(
        2,
        train_tiny_args(&store, &paced, "2048", "2", true),
    ));
    let gap = relative_gap(&single, &weights(&paced.join(folder)));
    println!("killed rank, resumed: {gap:.2e} from the uninterrupted run (relative)");
    assert!(
        gap < 1e-4,
        "resumed after a killed rank: {gap} from the uninterrupted run"
    );
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct TwoHosts {
    names: [String; 2],
}

impl TwoHosts {
    /// `ns0` at 10.77.0.1/24 and `ns1` at 10.77.0.2/24, each with loopback
    /// up; `Err` with the command's message where namespaces cannot be made.
    fn make() -> Result<TwoHosts, String> {
        let tag = std::process::id();
        let names = [format!("saescope{tag}a"), format!("saescope{tag}b")];
        let hosts = TwoHosts {
            names: names.clone(),
        };
        let (a, b) = (&names[0], &names[1]);
        let (va, vb) = (format!("sv{tag}a"), format!("sv{tag}b"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
            vec!["-n", a, "addr", "add", "10.77.0.1/24", "dev", &va],
            vec!["-n", b, "addr", "add", "10.77.0.2/24", "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(hosts)
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

#[test]
fn two_hosts_joined_by_a_veth_pair_train_as_one_process_does() {
    if skip_without_c10d() {
        return;
    }
    let hosts = match TwoHosts::make() {
        Ok(h) => h,
        Err(why) => {
            println!("SKIPPED: cannot make two network namespaces here ({why})");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (store, single) = store_and_reference(dir.path());
    let folder = TOPK;
    // Rank 0 on the first host serves the rendezvous at its own address;
    // each rank's Gloo traffic goes over its end of the veth pair.
    let parallel = dir.path().join("parallel");
    let tag = std::process::id();
    let outputs = ranks_of(2, "10.77.0.1", |rank| {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &hosts.names[rank],
                env!("CARGO_BIN_EXE_saescope"),
            ])
            .args(train_tiny_args(&store, &parallel, "2048", "2", false))
            .env("GLOO_SOCKET_IFNAME", format!("sv{tag}{}", ["a", "b"][rank]));
        command
    });
    for (rank, (ok, text)) in outputs.into_iter().enumerate() {
        assert!(ok, "host {rank}: {text}");
    }
    let gap = relative_gap(&single, &weights(&parallel.join(folder)));
    println!("two hosts: {gap:.2e} from one process (relative)");
    assert!(gap < 1e-3, "two hosts differ from one process by {gap}");
}

#[test]
fn two_ranks_streaming_from_the_model_read_disjoint_windows_and_match_one_process() {
    if skip_without_c10d() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), 200);
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "train",
            "--model",
            common::TINY_LLAMA,
            "--model-dtype",
            "f32",
            "--corpus",
            corpus.to_str().unwrap(),
            "--context",
            "16",
            "--windows-per-forward",
            "2",
            "--hook",
            "blocks.1.hook_resid_post",
            "--architecture",
            "topk",
            "--expansion",
            "2",
            "--k",
            "4",
            "--tokens",
            "1536",
            "--batch-size",
            "96",
            "--lr-warmup-steps",
            "4",
            "--checkpoint-every",
            "0",
            "--threads",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let single = dir.path().join("single");
    saescope_ok(&args(&single, &["--read-shares", "2"]));
    let whole = dir.path().join("whole");
    saescope_ok(&args(&whole, &[]));
    let parallel = dir.path().join("parallel");
    for (rank, (ok, text)) in as_ranks(&args(&parallel, &[]), 2).into_iter().enumerate() {
        assert!(ok, "rank {rank}:\n{text}");
    }
    let reference = weights(&single.join(TOPK));
    let gap = relative_gap(&reference, &weights(&parallel.join(TOPK)));
    println!("streaming: 2 ranks and 1 process reading 2 shares differ by {gap:.2e} (relative)");
    assert!(gap < 1e-4, "streaming on 2 ranks: {gap} from one process");
    // One share reads the windows in another order into its batches: a
    // different SAE, so the match above is not an insensitive comparison.
    let other = relative_gap(&reference, &weights(&whole.join(TOPK)));
    assert!(other > 1e-3, "1 and 2 shares differ by only {other}");
}
