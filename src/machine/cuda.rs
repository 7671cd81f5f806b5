//! The CUDA devices the NVIDIA driver sees, with their compute capability and
//! memory, read through the driver API (`libcuda.so.1`, opened at run time so
//! that machines without a driver simply have no devices). Its few C entry
//! points have kept their signatures since CUDA 3.2; no maintained crate
//! offers them without a CUDA toolkit at build time.
//!
//! Also loads libtorch's CUDA half on demand: the linker drops
//! `libtorch_cuda.so` from the binary (nothing names its symbols; its kernels
//! register themselves when it loads), so [`usable_devices`] opens it from
//! beside `libtorch_cpu.so` before asking libtorch for devices.

use std::ffi::{c_char, c_int, c_void, CStr};

use serde::Serialize;

/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR` / `_MINOR`.
const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;

#[derive(Debug, Clone, Serialize)]
pub struct CudaDevice {
    pub index: usize,
    pub name: String,
    /// `major.minor`, e.g. `9.0` for an H100.
    pub compute_capability: String,
    pub memory_bytes: u64,
    /// Native bf16 arithmetic (compute capability 8.0 or later).
    pub bf16: bool,
}

/// The driver's devices, or why there are none.
#[derive(Debug, Clone, Serialize)]
pub struct CudaInfo {
    pub driver_version: Option<String>,
    pub devices: Vec<CudaDevice>,
    /// Devices libtorch itself can use (0 for a CPU-only libtorch).
    pub libtorch_devices: i64,
    /// Why no device is listed, when none is.
    pub absent_reason: Option<String>,
}

type Status = c_int;

/// Loads `libtorch_cuda.so` once, from the folder that holds `libtorch_cpu.so`.
fn load_libtorch_cuda() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            // A libtorch function this binary links, to find libtorch's folder.
            let anchor = c"_ZN2at11show_configB5cxx11Ev";
            // SAFETY: dlsym/dladdr with a constant name and a zeroed out-struct.
            let folder = unsafe {
                let ptr = libc::dlsym(libc::RTLD_DEFAULT, anchor.as_ptr());
                let mut info: libc::Dl_info = std::mem::zeroed();
                if ptr.is_null() || libc::dladdr(ptr, &mut info) == 0 || info.dli_fname.is_null() {
                    return Err("cannot locate libtorch_cpu.so".to_string());
                }
                let path = CStr::from_ptr(info.dli_fname)
                    .to_string_lossy()
                    .into_owned();
                std::path::Path::new(&path)
                    .parent()
                    .map(|p| p.to_path_buf())
            };
            let lib = folder
                .map(|f| f.join("libtorch_cuda.so"))
                .filter(|p| p.exists())
                .ok_or("this libtorch has no libtorch_cuda.so (a CPU-only build)")?;
            let name = std::ffi::CString::new(lib.to_string_lossy().as_bytes())
                .map_err(|e| e.to_string())?;
            // SAFETY: loading a library by path; it stays loaded for the process.
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                // SAFETY: dlerror returns a NUL-terminated message or null.
                let why = unsafe {
                    let e = libc::dlerror();
                    if e.is_null() {
                        "unknown".into()
                    } else {
                        CStr::from_ptr(e).to_string_lossy().into_owned()
                    }
                };
                return Err(format!("loading {}: {why}", lib.display()));
            }
            Ok(())
        })
        .clone()
}

/// CUDA devices libtorch can use: 0 without a driver or a CUDA libtorch.
/// The reason comes back with 0 when one is known.
pub fn usable_devices() -> (usize, Option<String>) {
    if let Err(reason) = query_driver() {
        return (0, Some(reason));
    }
    if let Err(reason) = load_libtorch_cuda() {
        return (0, Some(reason));
    }
    (tch::Cuda::device_count().max(0) as usize, None)
}

impl CudaInfo {
    pub fn collect() -> CudaInfo {
        let libtorch_devices = usable_devices().0 as i64;
        match query_driver() {
            Ok((driver_version, devices)) => CudaInfo {
                absent_reason: devices
                    .is_empty()
                    .then(|| "the driver lists no device".into()),
                driver_version: Some(driver_version),
                devices,
                libtorch_devices,
            },
            Err(reason) => CudaInfo {
                driver_version: None,
                devices: Vec::new(),
                libtorch_devices,
                absent_reason: Some(reason),
            },
        }
    }
}

/// Whether device `index` does bf16 arithmetic natively; false when unknown.
pub fn device_has_bf16(index: usize) -> bool {
    query_driver()
        .ok()
        .and_then(|(_, devices)| devices.into_iter().find(|d| d.index == index))
        .is_some_and(|d| d.bf16)
}

/// Looks up `name` in the driver library.
///
/// # Safety
/// `T` must be the C function type of that symbol.
unsafe fn symbol<T: Copy>(lib: *mut c_void, name: &CStr) -> Result<T, String> {
    let ptr = unsafe { libc::dlsym(lib, name.as_ptr()) };
    if ptr.is_null() {
        return Err(format!("the driver lacks {}", name.to_string_lossy()));
    }
    debug_assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    Ok(unsafe { std::mem::transmute_copy(&ptr) })
}

fn query_driver() -> Result<(String, Vec<CudaDevice>), String> {
    // SAFETY: dlopen with a constant name; the handle is never closed, as
    // libtorch may hold the same library.
    let lib = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if lib.is_null() {
        return Err("no NVIDIA driver (libcuda.so.1 not found)".into());
    }
    // SAFETY: each type is the driver API's documented signature.
    let (init, version, count, get_name, attribute, total_mem) = unsafe {
        (
            symbol::<unsafe extern "C" fn(u32) -> Status>(lib, c"cuInit")?,
            symbol::<unsafe extern "C" fn(*mut c_int) -> Status>(lib, c"cuDriverGetVersion")?,
            symbol::<unsafe extern "C" fn(*mut c_int) -> Status>(lib, c"cuDeviceGetCount")?,
            symbol::<unsafe extern "C" fn(*mut c_char, c_int, c_int) -> Status>(
                lib,
                c"cuDeviceGetName",
            )?,
            symbol::<unsafe extern "C" fn(*mut c_int, c_int, c_int) -> Status>(
                lib,
                c"cuDeviceGetAttribute",
            )?,
            symbol::<unsafe extern "C" fn(*mut usize, c_int) -> Status>(
                lib,
                c"cuDeviceTotalMem_v2",
            )?,
        )
    };
    let check = |status: Status, what: &str| {
        if status == 0 {
            Ok(())
        } else {
            Err(format!("{what} failed with CUDA error {status}"))
        }
    };
    // SAFETY: out-pointers to live locals and a buffer of the size passed.
    unsafe {
        check(init(0), "cuInit")?;
        let mut v = 0;
        check(version(&mut v), "cuDriverGetVersion")?;
        let mut n = 0;
        check(count(&mut n), "cuDeviceGetCount")?;
        let mut devices = Vec::new();
        // Ordinals equal the CUdevice handles for every driver to date.
        for dev in 0..n.max(0) {
            let mut name = [0 as c_char; 256];
            check(
                get_name(name.as_mut_ptr(), name.len() as c_int, dev),
                "cuDeviceGetName",
            )?;
            let (mut major, mut minor, mut bytes) = (0, 0, 0usize);
            check(
                attribute(&mut major, ATTR_CC_MAJOR, dev),
                "cuDeviceGetAttribute",
            )?;
            check(
                attribute(&mut minor, ATTR_CC_MINOR, dev),
                "cuDeviceGetAttribute",
            )?;
            check(total_mem(&mut bytes, dev), "cuDeviceTotalMem")?;
            devices.push(CudaDevice {
                index: dev as usize,
                name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                compute_capability: format!("{major}.{minor}"),
                memory_bytes: bytes as u64,
                bf16: major >= 8,
            });
        }
        Ok((format!("{}.{}", v / 1000, (v % 1000) / 10), devices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorchs_cuda_half_loads_where_it_ships() {
        // A CPU-only libtorch has no libtorch_cuda.so: then loading must say so.
        match load_libtorch_cuda() {
            Ok(()) => assert!(tch::Cuda::device_count() >= 0),
            Err(reason) => assert!(reason.contains("libtorch_cuda"), "{reason}"),
        }
    }

    #[test]
    fn no_driver_gives_a_reason_not_a_crash() {
        let info = CudaInfo::collect();
        if info.devices.is_empty() {
            assert!(info.absent_reason.is_some());
            assert!(!device_has_bf16(0));
        } else {
            eprintln!("CUDA present: {} device(s)", info.devices.len());
            assert!(info.devices.iter().all(|d| d.memory_bytes > 0));
        }
    }
}
