//! `saescope launch`: starts this node's ranks of a job as child processes
//! with torchrun's variables, forwards SIGINT and SIGTERM to them, and ends
//! the job when one rank fails (the others are sent SIGTERM, then killed
//! after a grace period), naming that rank.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Where this node's ranks sit in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Ranks started on this node.
    pub nproc: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// How long ranks get to stop after SIGTERM before they are killed.
    pub grace: Duration,
}

impl LaunchPlan {
    fn check(&self) -> Result<()> {
        if self.nproc == 0 || self.nnodes == 0 || self.node_rank >= self.nnodes {
            return Err(Error::Distributed(format!(
                "launch: {} processes on node {} of {}",
                self.nproc, self.node_rank, self.nnodes
            )));
        }
        Ok(())
    }
}

/// The last signal received (0: none), set by the handler.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
}

/// Runs `program args` as this node's ranks and waits for all of them.
/// Fails, naming the first rank that failed, if any did.
pub fn launch(program: &std::path::Path, args: &[String], plan: &LaunchPlan) -> Result<()> {
    plan.check()?;
    // SAFETY: the handler only stores into an atomic.
    unsafe {
        libc::signal(libc::SIGINT, remember as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, remember as *const () as libc::sighandler_t);
    }
    let world = plan.nproc * plan.nnodes;
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(plan.nproc);
    for local in 0..plan.nproc {
        let rank = plan.node_rank * plan.nproc + local;
        let child = Command::new(program)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", plan.nproc.to_string())
            .env("MASTER_ADDR", &plan.master_addr)
            .env("MASTER_PORT", plan.master_port.to_string())
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop_all(&mut children, plan.grace);
                return Err(Error::Distributed(format!(
                    "launch: cannot start rank {rank} ({}): {e}",
                    program.display()
                )));
            }
        }
    }
    let mut failed: Option<(usize, String)> = None;
    let mut forwarded = 0;
    while !children.is_empty() {
        let signal = SIGNAL.load(Ordering::SeqCst);
        if signal != 0 && signal != forwarded {
            forwarded = signal;
            for (_, child) in &children {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, signal) };
            }
        }
        let mut still = Vec::with_capacity(children.len());
        for (rank, mut child) in children {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() && failed.is_none() => {
                    failed = Some((rank, status.to_string()));
                }
                Ok(Some(_)) => {}
                Ok(None) => still.push((rank, child)),
                Err(e) => failed = failed.or(Some((rank, e.to_string()))),
            }
        }
        children = still;
        if failed.is_some() && !children.is_empty() {
            stop_all(&mut children, plan.grace);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match failed {
        Some((rank, status)) => Err(Error::Distributed(format!(
            "rank {rank} failed ({status}); the other ranks were stopped"
        ))),
        None => Ok(()),
    }
}

/// SIGTERM to every child, then SIGKILL to those still running after `grace`.
fn stop_all(children: &mut Vec<(usize, Child)>, grace: Duration) {
    for (_, child) in children.iter() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let start = Instant::now();
    while start.elapsed() < grace {
        children.retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
        if children.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    children.clear();
}
