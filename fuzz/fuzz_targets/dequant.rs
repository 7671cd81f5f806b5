#![no_main]
//! Fuzzes `saescope_fuzz::dequant`: see `fuzz/src/lib.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = saescope_fuzz::dequant(data, saescope_fuzz::work_dir());
});
