#![no_main]
//! Fuzzes `saescope_fuzz::train_toml`: see `fuzz/src/lib.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = saescope_fuzz::train_toml(data, saescope_fuzz::work_dir());
});
