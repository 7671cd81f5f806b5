//! Joining a multi-process job when a launcher (torchrun, `saescope launch`)
//! set its variables.

use std::rc::Rc;
use std::time::Duration;

use saescope::dist::{Launch, ProcessGroup};

/// The job's process group, when `WORLD_SIZE` is set; operations give up
/// after `SAESCOPE_DIST_TIMEOUT` seconds (default 300).
pub fn join_from_env() -> anyhow::Result<Option<Rc<ProcessGroup>>> {
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
    let group = ProcessGroup::gloo(&launch, Duration::from_secs_f64(seconds))?;
    Ok(Some(Rc::new(group)))
}
