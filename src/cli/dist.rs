//! Joining a multi-process job when a launcher (torchrun, `saescope launch`)
//! set its variables.

use std::rc::Rc;
use std::time::Duration;

use saescope::dist::{Launch, ProcessGroup};

/// The job's process group, when `WORLD_SIZE` is set: NCCL on CUDA device
/// `cuda` when the work is there (unless `SAESCOPE_DIST_BACKEND=gloo`), else
/// Gloo; operations give up after
/// `SAESCOPE_DIST_TIMEOUT` seconds (default 300).
pub fn join_from_env(cuda: Option<usize>) -> anyhow::Result<Option<Rc<ProcessGroup>>> {
    let Some(launch) = Launch::from_env()? else {
        return Ok(None);
    };
    let seconds: f64 = match std::env::var("SAESCOPE_DIST_TIMEOUT") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s > 0.0)
            .ok_or_else(|| {
                anyhow::anyhow!("SAESCOPE_DIST_TIMEOUT={v:?} is not a number of seconds")
            })?,
        Err(_) => 300.0,
    };
    let timeout = Duration::from_secs_f64(seconds);
    let backend = std::env::var("SAESCOPE_DIST_BACKEND").ok();
    let group = match (backend.as_deref(), cuda) {
        (_, None) | (Some("gloo"), _) => ProcessGroup::gloo(&launch, timeout)?,
        (Some("nccl") | None, Some(index)) => ProcessGroup::nccl(&launch, index, timeout)?,
        (Some(other), _) => {
            anyhow::bail!("SAESCOPE_DIST_BACKEND={other:?}: use gloo or nccl")
        }
    };
    Ok(Some(Rc::new(group)))
}
