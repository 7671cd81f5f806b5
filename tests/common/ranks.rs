//! Helpers for tests that start several ranks of a c10d job.

use std::path::Path;

use saescope::dist::ProcessGroup;

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// True (after printing why) when this build has no c10d.
pub fn skip_without_c10d() -> bool {
    if !ProcessGroup::available() {
        println!("SKIPPED: this build has no c10d (apt install libgloo-dev, then rebuild)");
        return true;
    }
    false
}

/// `saescope launch --nproc N --grace-seconds 2 --master-port P -- COMMAND`.
pub fn launch_args(nproc: usize, command: Vec<String>) -> Vec<String> {
    let head = [
        "launch".to_string(),
        "--nproc".into(),
        nproc.to_string(),
        "--grace-seconds".into(),
        "2".into(),
        "--master-port".into(),
        free_port().to_string(),
        "--".into(),
    ];
    head.into_iter().chain(command).collect()
}

/// Runs `saescope ARGS` in one process (no launcher), panicking on failure.
pub fn train_alone(args: &[String], what: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(args)
        .output()
        .expect("run saescope");
    assert!(
        out.status.success(),
        "{}: {}",
        what.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
