//! Embeds an rpath to libtorch's `lib` folder so that `saescope` runs without
//! `LD_LIBRARY_PATH`. torch-sys reports that folder through its `links` metadata.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
}
