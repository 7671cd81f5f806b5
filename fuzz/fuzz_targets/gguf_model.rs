#![no_main]
//! Fuzzes `saescope_fuzz::gguf_model`: see `fuzz/src/lib.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = saescope_fuzz::gguf_model(data, saescope_fuzz::work_dir());
});
