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
}
