#![no_main]
//! Fuzzes `saescope_fuzz::corpus`: see `fuzz/src/lib.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = saescope_fuzz::corpus(data, saescope_fuzz::work_dir());
});
