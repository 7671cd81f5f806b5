#![no_main]
//! Fuzzes `saescope_fuzz::intervention`: see `fuzz/src/lib.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = saescope_fuzz::intervention(data, saescope_fuzz::work_dir());
});
