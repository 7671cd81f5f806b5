#![no_main]
//! Fuzzes `saescope_fuzz::task_jsonl`: see `fuzz/src/lib.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = saescope_fuzz::task_jsonl(data, saescope_fuzz::work_dir());
});
