//! Seeded mutations of a tiny but complete llama GGUF (config, tokenizer and
//! weights, as `load_model` reads them): each must load or fail with an
//! error, never panic. Includes the case a mutation fuzzer once found, a
//! tensor dimension edited to 1 in the header with the data left as it was.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::file::testutil::{f32_bytes, strings, GgufBuilder};
use super::file::GgufFile;
use super::load::{gguf_config, gguf_tokenizer, gguf_weights};
use super::quant::GgmlType;
use super::value::GgufValue;

/// `(name, GGUF dims [columns, rows])` of a 1-block llama: d_model 8,
/// 2 heads of 4 (1 KV head), d_mlp 16, a vocabulary of 6.
const TENSORS: [(&str, [u64; 2]); 11] = [
    ("token_embd.weight", [8, 6]),
    ("output_norm.weight", [8, 1]),
    ("blk.0.attn_norm.weight", [8, 1]),
    ("blk.0.attn_q.weight", [8, 8]),
    ("blk.0.attn_k.weight", [8, 4]),
    ("blk.0.attn_v.weight", [8, 4]),
    ("blk.0.attn_output.weight", [8, 8]),
    ("blk.0.ffn_norm.weight", [8, 1]),
    ("blk.0.ffn_gate.weight", [8, 16]),
    ("blk.0.ffn_up.weight", [8, 16]),
    ("blk.0.ffn_down.weight", [16, 8]),
];

/// The file, with tensor `edit.0`'s dimension `edit.1` set to `edit.2` (its
/// data unchanged) when given.
fn tiny_llama(edit: Option<(usize, usize, u64)>) -> Vec<u8> {
    let mut b = GgufBuilder::new()
        .kv("general.architecture", GgufValue::String("llama".into()))
        .kv("llama.embedding_length", GgufValue::U32(8))
        .kv("llama.block_count", GgufValue::U32(1))
        .kv("llama.feed_forward_length", GgufValue::U32(16))
        .kv("llama.attention.head_count", GgufValue::U32(2))
        .kv("llama.attention.head_count_kv", GgufValue::U32(1))
        .kv("llama.context_length", GgufValue::U32(32))
        .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .kv(
            "tokenizer.ggml.tokens",
            strings(&["a", "b", "c", "ab", "bc", "abc"]),
        )
        .kv("tokenizer.ggml.merges", strings(&["a b", "b c", "ab c"]))
        .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(0))
        .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(1));
    for (i, (name, dims)) in TENSORS.iter().enumerate() {
        let stored: Vec<u64> = if dims[1] == 1 {
            vec![dims[0]]
        } else {
            dims.to_vec()
        };
        let n = stored.iter().product::<u64>() as usize;
        let values: Vec<f32> = (0..n)
            .map(|j| ((i * 31 + j) % 17) as f32 / 17.0 - 0.5)
            .collect();
        let mut shape = stored.clone();
        if let Some((t, dim, value)) = edit {
            if t == i && dim < shape.len() {
                shape[dim] = value;
            }
        }
        b = b.tensor(name, &shape, GgmlType::F32, f32_bytes(&values));
    }
    b.build()
}

/// Loads `bytes` as `load_model` does; `Err` for a panic, with its message.
fn load(bytes: Vec<u8>) -> Result<bool, String> {
    catch_unwind(AssertUnwindSafe(|| {
        let Ok(gguf) = GgufFile::from_bytes("mutated.gguf", bytes) else {
            return false;
        };
        let Ok(cfg) = gguf_config(&gguf) else {
            return false;
        };
        let tokenizer = gguf_tokenizer(&gguf);
        gguf_weights(&gguf, &cfg).is_ok() && tokenizer.is_ok()
    }))
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

#[test]
fn the_tiny_llama_loads_whole() {
    assert_eq!(load(tiny_llama(None)), Ok(true));
}

#[test]
fn every_tensor_dimension_edited_in_the_header_is_an_error_not_a_panic() {
    for (t, (name, _)) in TENSORS.iter().enumerate() {
        for dim in 0..2 {
            for value in [0, 1, 2, 3, 1 << 40] {
                let outcome = load(tiny_llama(Some((t, dim, value))));
                assert!(
                    outcome.is_ok(),
                    "{name} dim {dim} = {value}: panic {outcome:?}"
                );
            }
        }
    }
}

#[test]
fn seeded_header_mutations_never_panic() {
    let clean = tiny_llama(None);
    // The header and metadata come before the first tensor's data.
    let header = clean.len()
        - TENSORS
            .iter()
            .map(|(_, d)| (d[0] * d[1] * 4) as usize)
            .sum::<usize>();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut loaded = 0;
    for i in 0..400 {
        let mut bytes = clean.clone();
        let at = (next() % header as u64) as usize;
        match next() % 3 {
            0 => bytes[at] ^= 1 << (next() % 8),
            1 => bytes[at] = next() as u8,
            _ => {
                let end = (at + 8).min(bytes.len());
                let value = [0u64, 1, 2, u32::MAX as u64, u64::MAX][(next() % 5) as usize];
                bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            }
        }
        match load(bytes) {
            Ok(true) => loaded += 1,
            Ok(false) => {}
            Err(panic) => panic!("mutation {i} at byte {at}: panic {panic}"),
        }
    }
    // Most single edits of a header break it; some (a value, a name's
    // letter) leave a loadable file.
    assert!(loaded < 400, "{loaded}");
}
