#![no_main]
//! Fuzzes `saescope_fuzz::sae_folder`: see `fuzz/src/lib.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = saescope_fuzz::sae_folder(data, saescope_fuzz::work_dir());
});
