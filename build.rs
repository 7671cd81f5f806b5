//! Embeds an rpath to libtorch's `lib` folder so that `saescope` runs without
//! `LD_LIBRARY_PATH` (torch-sys reports that folder through its `links`
//! metadata), and compiles the small C++ shim through which libtorch reports
//! its version and CPU capability (`src/machine/libtorch_info.cpp`).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    let shim = "src/machine/libtorch_info.cpp";
    println!("cargo:rerun-if-changed={shim}");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .file(shim)
        .compile("saescope_libtorch_info");
    build_c10d_shim();
}

/// The c10d shim (`src/dist/c10d_shim.cpp`), against the headers of the
/// libtorch tch links and Gloo's headers (Debian's libgloo-dev). Without
/// Gloo's headers (or with `SAESCOPE_NO_C10D` set) it is left out,
/// `cfg(saescope_c10d)` is unset, and the distributed calls report that this
/// build has no c10d.
fn build_c10d_shim() {
    let shim = "src/dist/c10d_shim.cpp";
    println!("cargo:rerun-if-changed={shim}");
    println!("cargo:rerun-if-changed=src/dist/c10d_shim.h");
    println!("cargo:rustc-check-cfg=cfg(saescope_c10d)");
    println!("cargo:rustc-check-cfg=cfg(saescope_nccl)");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=no libtorch folder from torch-sys: building without c10d");
        return;
    };
    let root = std::path::Path::new(&lib_dir).join("..");
    println!("cargo:rerun-if-env-changed=SAESCOPE_NO_C10D");
    if std::env::var_os("SAESCOPE_NO_C10D").is_some() {
        println!("cargo:warning=SAESCOPE_NO_C10D is set: building without c10d");
        return;
    }
    let gloo = std::path::Path::new("/usr/include/gloo/allreduce.h");
    if !gloo.exists() {
        println!(
            "cargo:warning=Gloo headers missing (apt install libgloo-dev): building without c10d"
        );
        return;
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-w")
        .file(shim)
        .compile("saescope_c10d");
    println!("cargo:rustc-cfg=saescope_c10d");
    build_nccl_shim(&root);
}

/// The NCCL half of the shim (`src/dist/nccl_shim.cpp`), where the libtorch
/// has CUDA and the headers of NCCL and the CUDA runtime are found: beside
/// the torch wheel (`site-packages/nvidia/{nccl,cu13}/include`), or under
/// `SAESCOPE_NCCL_INCLUDE` / `CUDA_HOME`. Sets `cfg(saescope_nccl)`.
fn build_nccl_shim(torch: &std::path::Path) {
    let shim = "src/dist/nccl_shim.cpp";
    println!("cargo:rerun-if-changed={shim}");
    println!("cargo:rerun-if-changed=src/dist/c10d_shim.h");
    println!("cargo:rerun-if-env-changed=SAESCOPE_NCCL_INCLUDE");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if !torch.join("lib/libtorch_cuda.so").exists() {
        return;
    }
    let nvidia = torch.join("../nvidia");
    let candidates = |extra: Option<std::ffi::OsString>, wheel: &str| {
        extra
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain(std::iter::once(nvidia.join(wheel)))
            .collect::<Vec<_>>()
    };
    let find = |dirs: Vec<std::path::PathBuf>, header: &str| {
        dirs.into_iter()
            .map(|d| {
                if d.ends_with("include") {
                    d
                } else {
                    d.join("include")
                }
            })
            .find(|d| d.join(header).exists())
    };
    let nccl = find(
        candidates(std::env::var_os("SAESCOPE_NCCL_INCLUDE"), "nccl"),
        "nccl.h",
    );
    let cuda = find(
        candidates(std::env::var_os("CUDA_HOME"), "cu13"),
        "cuda_runtime_api.h",
    );
    let (Some(nccl), Some(cuda)) = (nccl, cuda) else {
        println!(
            "cargo:warning=libtorch has CUDA but nccl.h or cuda_runtime_api.h was not found: building without NCCL"
        );
        return;
    };
    // The runtime wheel lacks the `crt/` headers that `cuda_runtime.h`
    // includes (they ship with nvcc); Triton, which the torch wheel installs,
    // carries them.
    let crt = [
        cuda.clone(),
        torch.join("../triton/backends/nvidia/include"),
    ]
    .into_iter()
    .find(|d| d.join("crt/host_config.h").exists());
    if !cuda.join("nv/target").exists() {
        println!(
            "cargo:warning=libtorch has CUDA but CCCL's headers (nv/target) are missing (pip install nvidia-cuda-cccl, as scripts/setup.sh does): building without NCCL"
        );
        return;
    }
    let Some(crt) = crt else {
        println!(
            "cargo:warning=libtorch has CUDA but the CUDA `crt/` headers were not found (set CUDA_HOME): building without NCCL"
        );
        return;
    };
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_NCCL", None)
        .define("USE_CUDA", None)
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .include(nccl)
        .include(cuda)
        .include(crt)
        .flag_if_supported("-w")
        .file(shim)
        .compile("saescope_nccl");
    // `c10::cuda::set_device` lives in c10_cuda, which tch does not link.
    println!("cargo:rustc-link-lib=dylib=c10_cuda");
    println!("cargo:rustc-cfg=saescope_nccl");
}
