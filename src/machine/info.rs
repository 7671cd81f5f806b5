//! One record of the machine: the CPU (model, instruction tiers, cores), the
//! tier saescope's kernels use, libtorch's view, the CUDA devices, and the
//! variables that emulate a lower tier. `saescope info` prints it, and every
//! benchmark record stores it as JSON.

use std::fmt;

use serde::Serialize;

use super::cpu::{self, CpuTier};
use super::cuda::CudaInfo;
use super::libtorch::LibtorchInfo;

/// The variables that lower a tier, for our kernels and for libtorch's.
pub const TIER_VARIABLES: [&str; 4] = [
    cpu::TIER_ENV,
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
];

/// Instruction sets worth naming, as Linux spells them in `/proc/cpuinfo`.
const NAMED_FLAGS: [&str; 10] = [
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "avx_vnni",
];

#[derive(Debug, Clone, Serialize)]
pub struct CpuInfo {
    pub model: String,
    pub arch: &'static str,
    /// The named instruction sets this CPU has (`neon` on aarch64).
    pub flags: Vec<String>,
    pub physical_cores: usize,
    pub logical_cpus: usize,
    /// The best tier the CPU supports.
    pub detected_tier: CpuTier,
    /// The tier saescope's kernels use (`SAESCOPE_CPU` may lower it).
    pub tier: CpuTier,
    /// Native bf16 arithmetic at that tier: what `--dtype auto` follows.
    pub native_bf16: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    pub saescope_version: &'static str,
    pub cpu: CpuInfo,
    pub libtorch: LibtorchInfo,
    pub cuda: CudaInfo,
    /// The tier variables that are set, `NAME=value`.
    pub tier_variables: Vec<String>,
}

impl MachineInfo {
    pub fn collect() -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let all_flags = cpu_flags(&cpuinfo);
        let tier = cpu::configured();
        let cpu = CpuInfo {
            model: field(&cpuinfo, &["model name", "Model", "Hardware"])
                .unwrap_or_else(|| "unknown".into()),
            arch: std::env::consts::ARCH,
            flags: if cfg!(target_arch = "aarch64") {
                vec!["neon".into()]
            } else {
                NAMED_FLAGS
                    .iter()
                    .filter(|f| all_flags.iter().any(|g| g == *f))
                    .map(|f| f.to_string())
                    .collect()
            },
            physical_cores: physical_cores(&cpuinfo),
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            detected_tier: cpu::detected(),
            tier,
            native_bf16: tier.has_native_bf16(),
        };
        MachineInfo {
            saescope_version: env!("CARGO_PKG_VERSION"),
            libtorch: LibtorchInfo::collect(&all_flags),
            cuda: CudaInfo::collect(),
            tier_variables: TIER_VARIABLES
                .iter()
                .filter_map(|v| std::env::var(v).ok().map(|value| format!("{v}={value}")))
                .collect(),
            cpu,
        }
    }
}

/// The first of `keys` present in `/proc/cpuinfo`'s text.
fn field(cpuinfo: &str, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| {
        cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == *key).then(|| v.trim().to_string())
        })
    })
}

/// Every flag of the first processor (`flags` on x86, `Features` on Arm).
fn cpu_flags(cpuinfo: &str) -> Vec<String> {
    field(cpuinfo, &["flags", "Features"])
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Distinct (package, core) pairs; the logical count where cpuinfo has none.
fn physical_cores(cpuinfo: &str) -> usize {
    let mut cores = std::collections::HashSet::new();
    let mut package = String::new();
    for line in cpuinfo.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "physical id" => package = v.trim().to_string(),
                "core id" => {
                    cores.insert((package.clone(), v.trim().to_string()));
                }
                _ => {}
            }
        }
    }
    if cores.is_empty() {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cores.len()
    }
}

impl fmt::Display for MachineInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.cpu;
        let unknown = || "unknown".to_string();
        writeln!(f, "saescope {}", self.saescope_version)?;
        writeln!(f, "CPU        {} ({})", c.model, c.arch)?;
        writeln!(f, "  flags    {}", c.flags.join(" "))?;
        writeln!(
            f,
            "  cores    {} physical, {} logical",
            c.physical_cores, c.logical_cpus
        )?;
        let forced = if c.tier < c.detected_tier {
            " (lowered by SAESCOPE_CPU)"
        } else {
            ""
        };
        writeln!(
            f,
            "  tier     {}{forced}; the CPU supports {}",
            c.tier, c.detected_tier
        )?;
        writeln!(
            f,
            "  bf16     {}",
            if c.native_bf16 {
                "native: --dtype auto picks bf16"
            } else {
                "not native: --dtype auto picks f32"
            }
        )?;
        let t = &self.libtorch;
        writeln!(
            f,
            "libtorch   {}",
            t.version.clone().unwrap_or_else(unknown)
        )?;
        writeln!(
            f,
            "  ATen CPU capability  {}",
            t.aten_cpu_capability.clone().unwrap_or_else(unknown)
        )?;
        writeln!(
            f,
            "  oneDNN ISA           {} ({})",
            t.onednn_isa,
            t.onednn.clone().unwrap_or_else(unknown)
        )?;
        writeln!(
            f,
            "  MKL                  {}",
            t.mkl.clone().unwrap_or_else(|| "none".into())
        )?;
        writeln!(f, "  threads              {}", t.threads)?;
        writeln!(
            f,
            "  built with CUDA      {}",
            if t.built_with_cuda { "yes" } else { "no" }
        )?;
        match (&self.cuda.absent_reason, self.cuda.devices.is_empty()) {
            (Some(reason), true) => writeln!(f, "CUDA       none: {reason}")?,
            _ => {
                writeln!(
                    f,
                    "CUDA       driver {}, {} device(s) usable by libtorch",
                    self.cuda.driver_version.clone().unwrap_or_else(unknown),
                    self.cuda.libtorch_devices
                )?;
                for d in &self.cuda.devices {
                    writeln!(
                        f,
                        "  cuda:{}  {}, compute capability {}, {:.1} GiB",
                        d.index,
                        d.name,
                        d.compute_capability,
                        d.memory_bytes as f64 / (1u64 << 30) as f64
                    )?;
                }
            }
        }
        if !self.tier_variables.is_empty() {
            writeln!(f, "emulating  {}", self.tier_variables.join(" "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XEON: &str = "processor\t: 0\nphysical id\t: 0\ncore id\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 fma avx512f amx_bf16\n\nprocessor\t: 1\nphysical id\t: 0\ncore id\t: 0\n\nprocessor\t: 2\nphysical id\t: 0\ncore id\t: 1\n";

    #[test]
    fn cpuinfo_fields_flags_and_cores() {
        assert_eq!(field(XEON, &["model name"]).as_deref(), Some("Xeon"));
        assert!(cpu_flags(XEON).contains(&"amx_bf16".to_string()));
        // Two hyperthreads of core 0 and one of core 1.
        assert_eq!(physical_cores(XEON), 2);
    }

    #[test]
    fn the_record_serialises_and_prints_the_tier() {
        let info = MachineInfo::collect();
        let json = serde_json::to_value(&info).unwrap();
        assert!(json["cpu"]["tier"].is_string() && json["libtorch"]["onednn_isa"].is_string());
        let text = info.to_string();
        assert!(text.contains("ATen CPU capability") && text.contains(info.cpu.tier.name()));
    }
}
