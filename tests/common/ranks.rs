//! Helpers for tests that start several ranks of a c10d job.

use std::process::Command;

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

/// `saescope ARGS` as each of `world` ranks, all at once; every rank's
/// output, after all exit.
pub fn as_ranks(args: &[String], world: usize) -> Vec<(bool, String)> {
    ranks_of(world, "127.0.0.1", |_| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_saescope"));
        command.args(args);
        command
    })
}

/// `command(rank)` for each of `world` ranks, all at once, with torchrun's
/// variables (rendezvous at `master_addr`); every rank's success and output,
/// after all exit.
pub fn ranks_of(
    world: usize,
    master_addr: &str,
    command: impl Fn(usize) -> Command,
) -> Vec<(bool, String)> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            spawn_piped(
                command(rank)
                    .env("RANK", rank.to_string())
                    .env("WORLD_SIZE", world.to_string())
                    .env("MASTER_ADDR", master_addr)
                    .env("MASTER_PORT", &port)
                    .env("SAESCOPE_DIST_TIMEOUT", "120"),
            )
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            // The exit status too: a rank killed by a signal prints nothing.
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
                + &format!("\n[{}]", out.status);
            (out.status.success(), text)
        })
        .collect()
}

/// `command` started with its output captured.
pub fn spawn_piped(command: &mut Command) -> std::process::Child {
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}
