//! How much memory this process may still take, from every limit that can
//! stop it: the address-space limit (`ulimit -v`, `prlimit --as`) less what
//! is mapped already, the cgroup's memory limit (v2 or v1) less its usage,
//! and the memory the kernel reports available. Jobs that know a big
//! allocation's size up front (an SAE's training state, labelling's
//! vocabulary × features, a batch's logits) ask [`ensure_fits`] first, so
//! that a run under a limit stops with an error instead of being killed.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The tightest limit found: how many bytes are left under it, and which it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryHeadroom {
    pub bytes: u64,
    pub limit: String,
}

/// Below this, sizes are not worth checking (reading the limits costs a few
/// file reads).
const WORTH_CHECKING: u64 = 64 << 20;

/// The tightest of the limits this process runs under, if any can be read.
pub fn headroom() -> Option<MemoryHeadroom> {
    [address_space(), cgroup(), available_memory()]
        .into_iter()
        .flatten()
        .min_by_key(|h| h.bytes)
}

/// `Ok` when `bytes` fit under every limit, an [`Error::OutOfMemory`]
/// naming the limit and `what()` (what would allocate them) otherwise.
pub fn ensure_fits(bytes: u64, what: impl FnOnce() -> String) -> Result<()> {
    if bytes < WORTH_CHECKING {
        return Ok(());
    }
    match headroom() {
        Some(h) if bytes > h.bytes => Err(Error::OutOfMemory(format!(
            "{} needs {} but {} is left under {}; use smaller sizes or raise the limit",
            what(),
            human(bytes),
            human(h.bytes),
            h.limit
        ))),
        _ => Ok(()),
    }
}

/// `a × b × c …` bytes, saturating (a size too big to count never fits).
pub fn bytes_of(dims: &[u64]) -> u64 {
    dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
}

/// The address-space limit less the address space mapped now.
fn address_space() -> Option<MemoryHeadroom> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let mapped = status_kib("VmSize:")? * 1024;
    Some(MemoryHeadroom {
        bytes: limit.rlim_cur.saturating_sub(mapped),
        limit: format!(
            "the address-space limit of {} (ulimit -v)",
            human(limit.rlim_cur)
        ),
    })
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, field)
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `MemAvailable` of `/proc/meminfo`.
fn available_memory() -> Option<MemoryHeadroom> {
    let kib = kib_field(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )?;
    Some(MemoryHeadroom {
        bytes: kib * 1024,
        limit: "the memory available on this machine".into(),
    })
}

/// The cgroup memory limit less its usage: cgroup v2 (`memory.max`,
/// `memory.current`) or v1 (`memory.limit_in_bytes`, `memory.usage_in_bytes`).
fn cgroup() -> Option<MemoryHeadroom> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (limit_file, usage_file) = cgroup_files(&membership)?;
    let limit: u64 = std::fs::read_to_string(&limit_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // v1 reports "no limit" as a huge page-rounded number.
    if limit >= 1 << 60 {
        return None;
    }
    let usage: u64 = std::fs::read_to_string(usage_file)
        .ok()
        .and_then(|u| u.trim().parse().ok())
        .unwrap_or(0);
    Some(MemoryHeadroom {
        bytes: limit.saturating_sub(usage),
        limit: format!(
            "the cgroup memory limit of {} ({})",
            human(limit),
            limit_file.display()
        ),
    })
}

/// The limit and usage files of this process's cgroup, from `/proc/self/cgroup`.
fn cgroup_files(membership: &str) -> Option<(PathBuf, PathBuf)> {
    let root = PathBuf::from("/sys/fs/cgroup");
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            let dir = root.join(path);
            if dir.join("memory.max").is_file() {
                return Some((dir.join("memory.max"), dir.join("memory.current")));
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            for dir in [root.join("memory").join(path), root.join("memory")] {
                if dir.join("memory.limit_in_bytes").is_file() {
                    return Some((
                        dir.join("memory.limit_in_bytes"),
                        dir.join("memory.usage_in_bytes"),
                    ));
                }
            }
        }
    }
    None
}

/// `bytes` in GiB or MiB, for messages.
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_too_big_to_count_saturate_and_never_fit() {
        assert_eq!(bytes_of(&[4, 1 << 20, 64]), 1 << 28);
        assert_eq!(bytes_of(&[u64::MAX, 2]), u64::MAX);
        let err = ensure_fits(u64::MAX, || "a test allocation".into()).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory(_)), "{err}");
        assert!(err.to_string().contains("a test allocation"), "{err}");
        assert!(ensure_fits(1 << 20, || unreachable!("small sizes are not checked")).is_ok());
    }

    #[test]
    fn status_fields_and_cgroup_files_are_read() {
        assert_eq!(
            kib_field("Name: x\nVmSize:\t  765444 kB\n", "VmSize:"),
            Some(765444)
        );
        assert_eq!(kib_field("VmRSS: 1 kB", "VmSize:"), None);
        assert!(status_kib("VmSize:").is_some_and(|k| k > 0));
        assert!(
            headroom().is_some(),
            "MemAvailable is always there on Linux"
        );
        // No memory controller in the membership: no cgroup limit to read.
        assert_eq!(cgroup_files("3:cpu,cpuacct:/x\n"), None);
    }
}
