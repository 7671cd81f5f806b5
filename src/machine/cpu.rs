//! The CPU's instruction tier: which of the hand-written kernels' compiled
//! paths may run. Detected once from the CPU, it can be lowered (never
//! raised) with `SAESCOPE_CPU=portable|avx2|avx512|avx512bf16`, so that tests
//! and benchmarks exercise the paths a smaller CPU would take.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use serde::Serialize;

use crate::error::{Error, Result};

/// The environment variable that lowers the tier.
pub const TIER_ENV: &str = "SAESCOPE_CPU";

/// Instruction tiers, lowest first. Each includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuTier {
    /// Whatever the compile target guarantees: SSE2 on x86-64, NEON on aarch64.
    Portable,
    /// AVX2 with FMA (AMD Zen 1–3, Intel Haswell and later client CPUs).
    Avx2,
    /// AVX-512 F/BW/VL with FMA (Intel Skylake-SP, Ice Lake).
    Avx512,
    /// AVX-512 plus AVX512-BF16's bf16 dot products (AMD Zen 4/5, Intel
    /// Cooper Lake, Sapphire Rapids and later).
    Avx512Bf16,
}

impl CpuTier {
    pub const ALL: [CpuTier; 4] = [
        CpuTier::Portable,
        CpuTier::Avx2,
        CpuTier::Avx512,
        CpuTier::Avx512Bf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CpuTier::Portable => "portable",
            CpuTier::Avx2 => "avx2",
            CpuTier::Avx512 => "avx512",
            CpuTier::Avx512Bf16 => "avx512bf16",
        }
    }

    /// Whether bf16 arithmetic runs natively at this tier (the test `auto`
    /// precision applies on the CPU).
    pub fn has_native_bf16(self) -> bool {
        self >= CpuTier::Avx512Bf16
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<CpuTier> {
        CpuTier::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl FromStr for CpuTier {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        CpuTier::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown CPU tier `{name}` (expected portable, avx2, avx512 or avx512bf16)"
                ))
            })
    }
}

impl fmt::Display for CpuTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The best tier this CPU supports.
pub fn detected() -> CpuTier {
    static DETECTED: OnceLock<CpuTier> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuTier {
    use std::arch::is_x86_feature_detected as has;
    let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma");
    if avx512 && has!("avx512bf16") {
        CpuTier::Avx512Bf16
    } else if avx512 {
        CpuTier::Avx512
    } else if has!("avx2") && has!("fma") {
        CpuTier::Avx2
    } else {
        CpuTier::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuTier {
    CpuTier::Portable
}

/// The tier `SAESCOPE_CPU` asks for, if set: an error for an unknown name.
pub fn requested() -> Result<Option<CpuTier>> {
    match std::env::var(TIER_ENV) {
        Ok(name) if !name.trim().is_empty() => Ok(Some(name.trim().parse()?)),
        _ => Ok(None),
    }
}

/// The tier from the environment: the detected one, lowered to
/// `SAESCOPE_CPU` when that is lower. An unknown name is ignored here;
/// [`check_environment`] reports it. Unlike [`active`], a test's
/// [`with_tier`] does not change it, so precision choices stay put.
pub fn configured() -> CpuTier {
    static TIER: OnceLock<CpuTier> = OnceLock::new();
    *TIER.get_or_init(|| match requested() {
        Ok(Some(tier)) => tier.min(detected()),
        _ => detected(),
    })
}

/// A clear error for a misspelt `SAESCOPE_CPU`, and a note (not an error)
/// when it asks for more than the CPU has. The CLI calls this at start-up.
pub fn check_environment() -> Result<Option<String>> {
    Ok(requested()?.and_then(|tier| {
        (tier > detected()).then(|| {
            format!(
                "{TIER_ENV}={tier} asks for more than this CPU has; using {}",
                detected()
            )
        })
    }))
}

/// 0 = no override; else `CpuTier::code`.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// The tier the kernels run at now: a test's override, else the environment's.
#[inline]
pub fn active() -> CpuTier {
    CpuTier::from_code(FORCED.load(Ordering::Relaxed)).unwrap_or_else(configured)
}

/// Runs `f` with the kernels forced to `tier` (lowered to the detected tier),
/// one caller at a time, and restores the previous setting. For tests and
/// benchmarks that compare paths within one process.
pub fn with_tier<T>(tier: CpuTier, f: impl FnOnce() -> T) -> T {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.store(self.0, Ordering::Relaxed);
        }
    }
    let _restore = Restore(FORCED.swap(tier.min(detected()).code(), Ordering::Relaxed));
    f()
}

/// The tiers this CPU can run, lowest first.
pub fn available() -> Vec<CpuTier> {
    CpuTier::ALL
        .into_iter()
        .filter(|t| *t <= detected())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_order_and_never_exceed_the_cpu() {
        for tier in CpuTier::ALL {
            assert_eq!(tier.name().parse::<CpuTier>().unwrap(), tier);
        }
        let err = "sse9".parse::<CpuTier>().unwrap_err().to_string();
        assert!(
            err.contains("portable, avx2, avx512 or avx512bf16"),
            "{err}"
        );
        assert!(CpuTier::Portable < CpuTier::Avx2 && CpuTier::Avx512 < CpuTier::Avx512Bf16);
        assert!(CpuTier::Avx512Bf16.has_native_bf16() && !CpuTier::Avx512.has_native_bf16());
        assert_eq!(available().last().copied(), Some(detected()));
        // Forcing a tier above the CPU's runs the CPU's, never an illegal instruction.
        with_tier(CpuTier::Avx512Bf16, || assert!(active() <= detected()));
        with_tier(CpuTier::Portable, || {
            assert_eq!(active(), CpuTier::Portable)
        });
    }
}
