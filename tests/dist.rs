//! c10d through the shim: two processes (this test binary, run again as each
//! rank with torchrun's variables) join over a loopback TCPStore and Gloo and
//! check every collective's result; a rank whose peer never arrives gives up
//! at the timeout with an error naming itself; a `saescope` rank ignores
//! SIGPIPE, so that a dead peer is an error it reports, not a silent death.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::ranks::{free_port, skip_without_c10d};
use saescope::dist::{Launch, ProcessGroup};
use tch::{Kind, Tensor};

/// This binary again, running only `test` as `rank` of `world`.
fn rank_process(test: &str, rank: usize, world: usize, port: u16) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_ranks_get_every_collective_right() {
    if skip_without_c10d() {
        return;
    }
    let port = free_port();
    let ranks: Vec<_> = (0..2)
        .map(|r| rank_process("collectives_as_a_rank", r, 2, port))
        .collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "rank {r}:\n{text}");
        assert!(text.contains("collectives ok"), "rank {r}:\n{text}");
    }
}

/// One rank of [`two_ranks_get_every_collective_right`].
#[test]
#[ignore = "run as a rank by two_ranks_get_every_collective_right"]
fn collectives_as_a_rank() {
    let launch = Launch::from_env().unwrap().expect("torchrun's variables");
    let group = ProcessGroup::gloo(&launch, Duration::from_secs(60)).unwrap();
    let (rank, world) = (group.rank() as f64, group.world_size());
    // Sum of (rank + 1)·[1, 2, 3] over 2 ranks = 3·[1, 2, 3].
    let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (rank + 1.0);
    group.all_reduce_sum(&mut t).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [3.0, 6.0, 9.0]);
    // Rank 1's values everywhere.
    let mut b = Tensor::full([4], rank, (Kind::Float, tch::Device::Cpu));
    group.broadcast(&mut b, 1).unwrap();
    assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [1.0; 4]);
    // Each rank's [rank, 10·rank], in rank order.
    let mine = Tensor::from_slice(&[rank as f32, 10.0 * rank as f32]);
    let all = group.all_gather(&mine).unwrap();
    let all: Vec<Vec<f32>> = all
        .iter()
        .map(|t| Vec::<f32>::try_from(t).unwrap())
        .collect();
    assert_eq!(all, [vec![0.0, 0.0], vec![1.0, 10.0]]);
    // Uneven all-to-all: rank r holds rows tagged 100·r + i; rank 0 sends 1
    // row to itself and 2 to rank 1, rank 1 sends 3 to rank 0 and 1 to itself.
    let send: [[i64; 2]; 2] = [[1, 2], [3, 1]];
    let r = rank as usize;
    let n: i64 = send[r].iter().sum();
    let rows = Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) + 100.0 * rank;
    let rows = rows.view([n, 1]).repeat([1, 2]);
    let recv = [send[0][r], send[1][r]];
    let got = group.all_to_all(&rows, &send[r], &recv).unwrap();
    let got: Vec<f32> = Vec::<f32>::try_from(got.select(1, 0)).unwrap();
    let want: Vec<f32> = if r == 0 {
        vec![0.0, 100.0, 101.0, 102.0]
    } else {
        vec![1.0, 2.0, 103.0]
    };
    assert_eq!(got, want);
    let err = group
        .all_to_all(&rows, &[1, 1], &recv)
        .unwrap_err()
        .to_string();
    assert!(err.contains("split as [1, 1]"), "{err}");
    group.barrier().unwrap();
    assert_eq!(world, 2);
    println!("collectives ok");
}

#[test]
fn a_rank_whose_peer_never_comes_gives_up_at_the_timeout() {
    if skip_without_c10d() {
        return;
    }
    let port = free_port();
    let start = Instant::now();
    let out = rank_process("joining_alone_as_a_rank", 0, 2, port)
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("gave up: distributed: rank 0: joining the job failed"),
        "{text}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

/// Rank 0 of a job of two whose rank 1 never starts.
#[test]
#[ignore = "run as a rank by a_rank_whose_peer_never_comes_gives_up_at_the_timeout"]
fn joining_alone_as_a_rank() {
    let launch = Launch::from_env().unwrap().expect("torchrun's variables");
    match ProcessGroup::gloo(&launch, Duration::from_secs(3)) {
        Ok(_) => panic!("joined a job whose other rank never started"),
        Err(e) => println!("gave up: {e}"),
    }
}

/// NCCL is compiled in wherever the linked libtorch has CUDA. On a machine
/// with a GPU, a job of one rank over NCCL all-reduces, all-gathers and
/// all-to-alls a CUDA tensor and a CPU one (staged through the GPU); without
/// one, joining says so instead of crashing.
#[test]
fn nccl_is_built_where_libtorch_has_cuda_and_runs_on_a_gpu() {
    if skip_without_c10d() {
        return;
    }
    let torch_lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/libtorch/lib");
    if torch_lib.join("libtorch_cuda.so").exists() {
        assert!(
            ProcessGroup::nccl_available(),
            "libtorch has CUDA, but this build has no NCCL"
        );
    }
    if !ProcessGroup::nccl_available() {
        println!("SKIPPED: this build has no NCCL (libtorch without CUDA)");
        return;
    }
    let launch = Launch {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        agent_store: false,
        interface: None,
    };
    let joined = ProcessGroup::nccl(&launch, 0, Duration::from_secs(60));
    if !tch::Cuda::is_available() {
        let err = joined.err().expect("NCCL joined without a GPU").to_string();
        assert!(err.contains("CUDA device 0"), "{err}");
        println!("SKIPPED: no GPU here, so NCCL ran no collective ({err})");
        return;
    }
    let group = joined.unwrap();
    let mut on_gpu = Tensor::arange(6, (Kind::Float, tch::Device::Cuda(0)));
    group.all_reduce_sum(&mut on_gpu).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(on_gpu.to_device(tch::Device::Cpu)).unwrap(),
        [0., 1., 2., 3., 4., 5.]
    );
    let mut on_cpu = Tensor::from_slice(&[2.5f64]);
    group.all_reduce_sum(&mut on_cpu).unwrap();
    assert_eq!(on_cpu.double_value(&[0]), 2.5);
    let gathered = group.all_gather(&Tensor::from_slice(&[7i64])).unwrap();
    assert_eq!(gathered.len(), 1);
    assert_eq!(gathered[0].int64_value(&[0]), 7);
    let moved = group
        .all_to_all(
            &Tensor::arange(4, (Kind::Float, tch::Device::Cpu)),
            &[4],
            &[4],
        )
        .unwrap();
    assert_eq!(Vec::<f32>::try_from(moved).unwrap(), [0., 1., 2., 3.]);
    group.barrier().unwrap();
}

/// A rank must not die of SIGPIPE: Gloo writes to a peer that has exited
/// with `writev`, and the rank should report that peer, not vanish without
/// a word. `saescope` as rank 0 of two, waiting for its peer, ignores it.
#[test]
fn a_saescope_rank_ignores_sigpipe() {
    if skip_without_c10d() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rank = Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(["train", "--hook", "blocks.0.hook_resid_post", "--store"])
        .arg(dir.path())
        .args(["--out"])
        .arg(dir.path().join("out"))
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port().to_string())
        .env("SAESCOPE_DIST_TIMEOUT", "30")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", rank.id());
    // SigIgn is a hexadecimal mask; signal n is bit n - 1.
    let ignored = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .map(|mask| mask & (1 << (libc::SIGPIPE - 1)) != 0)
    };
    // The disposition is set before any thread starts; give exec a moment.
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&status).unwrap_or_default();
    rank.kill().unwrap();
    let out = rank.wait_with_output().unwrap();
    assert_eq!(
        ignored(&text),
        Some(true),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
