//! libtorch's view of the machine: its version, the CPU capability ATen
//! dispatches on (`ATEN_CPU_CAPABILITY` lowers it), the MKL and oneDNN builds,
//! and the instruction set oneDNN will use (`ONEDNN_MAX_CPU_ISA` lowers it).
//! The first four come from libtorch itself through `libtorch_info.cpp`.

use std::ffi::{c_char, c_int, c_long};

use serde::Serialize;

extern "C" {
    /// Defined in `libtorch_info.cpp`: copies the answer to `which` into `buf`
    /// and returns its full length, or -1.
    fn saescope_libtorch_info(which: c_int, buf: *mut c_char, len: c_long) -> c_long;
}

/// Answers longer than this are cut (show_config is about 2 KB).
const MAX_ANSWER: usize = 64 * 1024;

fn query(which: c_int) -> Option<String> {
    // SAFETY: a null buffer asks only for the length.
    let len = unsafe { saescope_libtorch_info(which, std::ptr::null_mut(), 0) };
    let len = usize::try_from(len).ok()?.min(MAX_ANSWER);
    let mut buf = vec![0u8; len + 1];
    // SAFETY: `buf` holds `len + 1` bytes, the answer and its NUL.
    let written =
        unsafe { saescope_libtorch_info(which, buf.as_mut_ptr().cast(), buf.len() as c_long) };
    if written < 0 {
        return None;
    }
    buf.truncate(len);
    Some(String::from_utf8_lossy(&buf).trim().to_string())
}

/// What libtorch reports, plus the oneDNN ISA derived from the CPU.
#[derive(Debug, Clone, Serialize)]
pub struct LibtorchInfo {
    /// `TORCH_VERSION` from libtorch's build settings, e.g. `2.11.0`.
    pub version: Option<String>,
    /// ATen's kernel tier: `DEFAULT`, `AVX2` or `AVX512` on x86-64.
    pub aten_cpu_capability: Option<String>,
    pub mkl: Option<String>,
    pub onednn: Option<String>,
    /// The ISA oneDNN's kernels will use (see [`onednn_isa`]).
    pub onednn_isa: String,
    /// Whether this libtorch was built with CUDA.
    pub built_with_cuda: bool,
    /// libtorch's intra-op threads.
    pub threads: i32,
}

impl LibtorchInfo {
    pub fn collect(cpu_flags: &[String]) -> LibtorchInfo {
        let config = query(0).unwrap_or_default();
        let setting = |key: &str| {
            config
                .split([',', '\n'])
                .find_map(|part| part.trim().strip_prefix(key).map(str::to_string))
        };
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        LibtorchInfo {
            version: setting("TORCH_VERSION="),
            aten_cpu_capability: nonempty(query(3)),
            mkl: nonempty(query(1)),
            onednn: nonempty(query(2)),
            onednn_isa: onednn_isa(
                cpu_flags,
                std::env::var("ONEDNN_MAX_CPU_ISA").ok().as_deref(),
            ),
            built_with_cuda: setting("USE_CUDA=").is_some_and(|v| v == "ON"),
            threads: tch::get_num_threads(),
        }
    }
}

/// oneDNN's x86 ISAs that matter for these kernels, lowest first, with the
/// CPU flags (as Linux spells them) each needs on top of the previous one.
const ONEDNN_ISAS: [(&str, &[&str]); 8] = [
    ("SSE41", &["sse4_1"]),
    ("AVX", &["avx"]),
    ("AVX2", &["avx2", "fma"]),
    ("AVX2_VNNI", &["avx_vnni"]),
    (
        "AVX512_CORE",
        &["avx512f", "avx512bw", "avx512vl", "avx512dq"],
    ),
    ("AVX512_CORE_VNNI", &["avx512_vnni"]),
    ("AVX512_CORE_BF16", &["avx512_bf16"]),
    ("AVX512_CORE_AMX", &["amx_bf16", "amx_int8", "amx_tile"]),
];

/// The highest ISA of [`ONEDNN_ISAS`] the CPU's `flags` support, capped by
/// `max_isa` (`ONEDNN_MAX_CPU_ISA`, case-insensitive; `ALL` or an unknown
/// name caps nothing), as oneDNN picks its kernels. AVX2_VNNI is skipped
/// over on AVX-512 CPUs, which may lack it. Derived here because libtorch
/// does not export oneDNN's own query.
pub fn onednn_isa(flags: &[String], max_isa: Option<&str>) -> String {
    let has = |f: &&str| flags.iter().any(|g| g == f);
    let cap = max_isa
        .and_then(|m| {
            ONEDNN_ISAS
                .iter()
                .position(|(name, _)| name.eq_ignore_ascii_case(m.trim()))
        })
        .unwrap_or(ONEDNN_ISAS.len() - 1);
    let mut best = None;
    for (name, needs) in ONEDNN_ISAS.iter().take(cap + 1) {
        if needs.iter().all(has) {
            best = Some(*name);
        } else if *name != "AVX2_VNNI" {
            break;
        }
    }
    best.unwrap_or("none").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(names: &str) -> Vec<String> {
        names.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn onednn_isa_follows_the_flags_and_the_cap() {
        let zen5 =
            flags("sse4_1 avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16");
        assert_eq!(onednn_isa(&zen5, None), "AVX512_CORE_BF16");
        assert_eq!(onednn_isa(&zen5, Some("avx2")), "AVX2");
        assert_eq!(onednn_isa(&zen5, Some("ALL")), "AVX512_CORE_BF16");
        let zen3 = flags("sse4_1 avx avx2 fma");
        assert_eq!(onednn_isa(&zen3, None), "AVX2");
        assert_eq!(onednn_isa(&flags("sse2"), None), "none");
    }

    #[test]
    fn libtorch_reports_its_version_and_capability() {
        let info = LibtorchInfo::collect(&[]);
        let version = info.version.expect("TORCH_VERSION in show_config");
        assert!(version.starts_with("2."), "{version}");
        let capability = info.aten_cpu_capability.expect("a CPU capability");
        match std::env::var("ATEN_CPU_CAPABILITY") {
            Ok(forced) if !forced.is_empty() => {
                assert!(
                    capability.eq_ignore_ascii_case(&forced),
                    "{capability} vs {forced}"
                )
            }
            _ if crate::machine::cpu::detected() >= crate::machine::CpuTier::Avx512 => {
                assert_eq!(capability, "AVX512")
            }
            _ => assert!(
                ["DEFAULT", "AVX2", "NO AVX"].contains(&capability.as_str()),
                "{capability}"
            ),
        }
        assert!(info.threads > 0);
    }
}
