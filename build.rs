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
    println!("cargo:rustc-check-cfg=cfg(saescope_c10d)");
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
}
