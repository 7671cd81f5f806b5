//! Tests of the GGUF reader, and the in-memory GGUF writer other modules'
//! tests use to build files.

use super::*;
use crate::model::load::gguf::value::*;

pub(crate) mod testutil {
    use super::*;

    /// Builds GGUF bytes: metadata in insertion order, tensors laid out in
    /// order at aligned offsets.
    pub(crate) struct GgufBuilder {
        pub version: u32,
        pub alignment: u64,
        pub kvs: Vec<(String, GgufValue)>,
        pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    }

    impl GgufBuilder {
        pub fn new() -> Self {
            GgufBuilder {
                version: 3,
                alignment: DEFAULT_ALIGNMENT,
                kvs: Vec::new(),
                tensors: Vec::new(),
            }
        }

        pub fn kv(mut self, key: &str, value: GgufValue) -> Self {
            self.kvs.push((key.to_string(), value));
            self
        }

        pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
            self.tensors
                .push((name.to_string(), dims.to_vec(), ty.id(), data));
            self
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(b"GGUF");
            out.extend_from_slice(&self.version.to_le_bytes());
            out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
            for (k, v) in &self.kvs {
                write_str(&mut out, k);
                out.extend_from_slice(&type_id(v).to_le_bytes());
                write_value(&mut out, v);
            }
            let mut offset = 0u64;
            let mut offsets = Vec::new();
            for (name, dims, ty, data) in &self.tensors {
                write_str(&mut out, name);
                out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                offsets.push(offset);
                offset = (offset + data.len() as u64).div_ceil(self.alignment) * self.alignment;
            }
            if !self.tensors.is_empty() {
                pad(&mut out, self.alignment);
            }
            let base = out.len();
            for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
                out.resize(base + off as usize, 0);
                out.extend_from_slice(data);
            }
            out
        }
    }

    fn pad(out: &mut Vec<u8>, alignment: u64) {
        let len = (out.len() as u64).div_ceil(alignment) * alignment;
        out.resize(len as usize, 0);
    }

    fn write_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    pub fn type_id(v: &GgufValue) -> u32 {
        match v {
            GgufValue::U8(_) => T_U8,
            GgufValue::I8(_) => T_I8,
            GgufValue::U16(_) => T_U16,
            GgufValue::I16(_) => T_I16,
            GgufValue::U32(_) => T_U32,
            GgufValue::I32(_) => T_I32,
            GgufValue::U64(_) => T_U64,
            GgufValue::I64(_) => T_I64,
            GgufValue::F32(_) => T_F32,
            GgufValue::F64(_) => T_F64,
            GgufValue::Bool(_) => T_BOOL,
            GgufValue::String(_) => T_STRING,
            GgufValue::Array(_) => T_ARRAY,
        }
    }

    fn write_value(out: &mut Vec<u8>, v: &GgufValue) {
        match v {
            GgufValue::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::Bool(x) => out.push(u8::from(*x)),
            GgufValue::String(s) => write_str(out, s),
            GgufValue::Array(items) => {
                let elem = items.first().map_or(T_U32, type_id);
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    write_value(out, item);
                }
            }
        }
    }

    pub fn strings(items: &[&str]) -> GgufValue {
        GgufValue::Array(
            items
                .iter()
                .map(|s| GgufValue::String(s.to_string()))
                .collect(),
        )
    }

    pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// The real model for the `#[ignore]`d checks: `$SAESCOPE_TEST_GGUF`, or
    /// SmolLM2-135M-Instruct Q4_1 under `.cache/models/` of the repository.
    pub fn real_model() -> Option<std::path::PathBuf> {
        let path = std::env::var_os("SAESCOPE_TEST_GGUF").map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(".cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
            },
            PathBuf::from,
        );
        let found = path.is_file();
        if !found {
            eprintln!("skipping: {} is absent", path.display());
        }
        found.then_some(path)
    }

    /// A Python with `gguf` and `transformers`: `$SAESCOPE_TEST_PYTHON`, or
    /// the repository's `.venv`.
    pub fn reference_python() -> Option<std::path::PathBuf> {
        let path = std::env::var_os("SAESCOPE_TEST_PYTHON").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
            PathBuf::from,
        );
        let found = path.is_file();
        if !found {
            eprintln!("skipping: no reference Python at {}", path.display());
        }
        found.then_some(path)
    }

    /// Runs `script` with `args`, returning its stdout; panics with its
    /// stderr on failure.
    pub fn run_python(python: &Path, script: &str, args: &[&str], stdin: &str) -> String {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(python)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("run python");
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }
}

mod tests {
    use super::testutil::*;
    use super::*;
    use std::time::Instant;

    fn small_file() -> Vec<u8> {
        GgufBuilder::new()
            .kv("general.architecture", GgufValue::String("llama".into()))
            .kv("llama.block_count", GgufValue::U32(2))
            .kv("llama.rope.freq_base", GgufValue::F32(10000.0))
            .kv("flag", GgufValue::Bool(true))
            .kv("neg", GgufValue::I32(-3))
            .kv("tokens", strings(&["a", "b", "ç"]))
            .kv(
                "nested",
                GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1)])]),
            )
            .tensor(
                "norm",
                &[4],
                GgmlType::F32,
                f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
            )
            .tensor(
                "w",
                &[3, 2],
                GgmlType::F32,
                f32_bytes(&[0.0, 1.0, 2.0, 10.0, 11.0, 12.0]),
            )
            .build()
    }

    fn parse(bytes: &[u8]) -> Result<GgufFile> {
        GgufFile::from_bytes("test.gguf", bytes.to_vec())
    }

    fn assert_malformed(bytes: &[u8], needle: &str) {
        match parse(bytes) {
            Err(Error::Malformed { reason, .. }) => {
                assert!(
                    reason.contains(needle),
                    "reason `{reason}` lacks `{needle}`"
                )
            }
            Err(e) => panic!("expected Malformed, got {e}"),
            Ok(_) => panic!("expected Malformed containing `{needle}`, parsed fine"),
        }
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let g = parse(&small_file()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.meta_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.meta_u64("llama.block_count").unwrap(), 2);
        assert_eq!(g.meta_f64("llama.rope.freq_base").unwrap(), 10000.0);
        assert!(g.meta_bool("flag").unwrap());
        assert_eq!(g.metadata()["neg"].as_i64(), Some(-3));
        assert_eq!(g.metadata()["neg"].as_u64(), None);
        let toks = g.meta_array("tokens").unwrap();
        assert_eq!(toks[2].as_str(), Some("ç"));
        assert_eq!(g.meta_opt_u64("absent").unwrap(), None);
        assert_eq!(g.meta_opt_u64("llama.block_count").unwrap(), Some(2));
        assert!(g.meta_opt_u64("general.architecture").is_err());
        match g.meta_u64("missing.key") {
            Err(Error::Malformed { reason, .. }) => assert!(reason.contains("missing.key")),
            other => panic!("{other:?}"),
        }
        assert_eq!(g.tensors().len(), 2);
        let w = g.tensor_info("w").unwrap();
        assert_eq!(w.dims, vec![3, 2]);
        assert_eq!(w.shape(), vec![2, 3]);
        let (values, shape) = g.dequantize("w").unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(values, vec![0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);
        assert_eq!(g.dequantize("norm").unwrap().0, vec![1.0, 2.0, 3.0, 4.0]);
        assert!(matches!(
            g.dequantize("nope"),
            Err(Error::MissingTensor { .. })
        ));
        assert_eq!(g.data_start() % 32, 0);
    }

    #[test]
    fn version_2_and_custom_alignment() {
        let mut b = GgufBuilder::new()
            .kv("general.alignment", GgufValue::U32(64))
            .tensor("a", &[1], GgmlType::F32, f32_bytes(&[5.0]))
            .tensor("b", &[2], GgmlType::F32, f32_bytes(&[6.0, 7.0]));
        b.version = 2;
        b.alignment = 64;
        let g = parse(&b.build()).unwrap();
        assert_eq!(g.version(), 2);
        assert_eq!(g.alignment(), 64);
        assert_eq!(g.tensor_info("b").unwrap().offset, 64);
        assert_eq!(g.dequantize("b").unwrap().0, vec![6.0, 7.0]);
    }

    #[test]
    fn open_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, small_file()).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.path(), path.as_path());
        assert_eq!(g.dequantize("w").unwrap().1, vec![2, 3]);
        let empty = dir.path().join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            GgufFile::open(&empty),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            GgufFile::open(&dir.path().join("absent.gguf")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = small_file();
        for cut in 0..bytes.len() {
            assert!(
                matches!(parse(&bytes[..cut]), Err(Error::Malformed { .. })),
                "cut at {cut} of {} did not give Malformed",
                bytes.len()
            );
        }
        assert!(parse(&bytes).is_ok());
    }

    #[test]
    fn bad_magic_and_versions() {
        let mut bytes = small_file();
        bytes[0] = b'X';
        assert_malformed(&bytes, "not a GGUF file");
        for (v, needle) in [
            (1u32, "version 1"),
            (4, "unsupported GGUF version 4"),
            (3u32.swap_bytes(), "big-endian"),
        ] {
            let mut bytes = small_file();
            bytes[4..8].copy_from_slice(&v.to_le_bytes());
            assert_malformed(&bytes, needle);
        }
    }

    /// Header with the given counts and then `rest`.
    fn header(n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&n_tensors.to_le_bytes());
        out.extend_from_slice(&n_kv.to_le_bytes());
        out.extend_from_slice(rest);
        out.resize(out.len() + 256, 0);
        out
    }

    fn kv_bytes(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (key.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn absurd_counts_fail_fast() {
        let start = Instant::now();
        let huge = 1u64 << 60;
        assert_malformed(&header(huge, 0, &[]), "tensor count");
        assert_malformed(&header(0, huge, &[]), "metadata count");
        assert_malformed(&header(u64::MAX, 0, &[]), "tensor count");
        // A key whose length is absurd.
        assert_malformed(&header(0, 1, &huge.to_le_bytes()), "length of key");
        // A string value whose length is absurd.
        assert_malformed(
            &header(0, 1, &kv_bytes("k", T_STRING, &huge.to_le_bytes())),
            "length of metadata `k`",
        );
        // An array whose element count is absurd, for every element type.
        for elem in [T_U8, T_U64, T_STRING, T_ARRAY] {
            let mut payload = elem.to_le_bytes().to_vec();
            payload.extend_from_slice(&huge.to_le_bytes());
            assert_malformed(
                &header(0, 1, &kv_bytes("arr", T_ARRAY, &payload)),
                "element count of metadata `arr`",
            );
        }
        // Unknown value types.
        assert_malformed(
            &header(0, 1, &kv_bytes("k", 99, &[0; 8])),
            "unknown value type 99",
        );
        let mut payload = 77u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&1u64.to_le_bytes());
        assert_malformed(
            &header(0, 1, &kv_bytes("k", T_ARRAY, &payload)),
            "unknown array element type 77",
        );
        // Deeply nested arrays.
        let mut payload = Vec::new();
        for _ in 0..100 {
            payload.extend_from_slice(&T_ARRAY.to_le_bytes());
            payload.extend_from_slice(&1u64.to_le_bytes());
        }
        assert_malformed(
            &header(0, 1, &kv_bytes("deep", T_ARRAY, &payload)),
            "nested",
        );
        assert_malformed(
            &header(0, 1, &kv_bytes("b", T_BOOL, &[7])),
            "bool byte is 7",
        );
        assert!(start.elapsed().as_secs_f64() < 1.0);
    }

    fn tensor_bytes(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
        let mut out = (name.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out
    }

    #[test]
    fn absurd_tensors_fail() {
        let huge = 1u64 << 60;
        assert_malformed(
            &header(1, 0, &tensor_bytes("t", &[huge, huge], 0, 0)),
            "overflows",
        );
        assert_malformed(
            &header(1, 0, &tensor_bytes("t", &[u64::MAX], 0, 0)),
            "beyond i64",
        );
        assert_malformed(
            &header(1, 0, &tensor_bytes("t", &[huge], 0, 0)),
            "truncated: tensor `t`",
        );
        assert_malformed(
            &header(1, 0, &tensor_bytes("t", &[4], 0, huge)),
            "truncated: tensor `t`",
        );
        assert_malformed(
            &header(1, 0, &tensor_bytes("t", &[4], 0, u64::MAX - 31)),
            "truncated: tensor `t`",
        );
        assert_malformed(&header(1, 0, &tensor_bytes("t", &[4], 0, 3)), "alignment");
        assert_malformed(
            &header(1, 0, &tensor_bytes("t", &[1, 1, 1, 1, 1], 0, 0)),
            "5 dimensions",
        );
        let mut n_dims_huge = tensor_bytes("t", &[], 0, 0);
        n_dims_huge[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_malformed(&header(1, 0, &n_dims_huge), "dimensions");
        // Q8_0 rows must be whole blocks of 32.
        assert_malformed(
            &header(1, 0, &tensor_bytes("t", &[33], 8, 0)),
            "block of 32",
        );
        let mut two = tensor_bytes("t", &[1], 0, 0);
        two.extend(tensor_bytes("t", &[1], 0, 32));
        assert_malformed(&header(2, 0, &two), "appears twice");
        let mut alignment = kv_bytes("general.alignment", T_U32, &7u32.to_le_bytes());
        alignment.extend(tensor_bytes("t", &[1], 0, 0));
        assert_malformed(&header(1, 1, &alignment), "power of two");
        let mut dup = kv_bytes("k", T_U8, &[1]);
        dup.extend(kv_bytes("k", T_U8, &[2]));
        assert_malformed(&header(0, 2, &dup), "duplicate metadata key `k`");
    }

    #[test]
    fn unknown_types_open_but_do_not_dequantize() {
        // ggml type 13 (Q5_K) has a known layout: the range is checked.
        let g = parse(&header(1, 0, &tensor_bytes("k5", &[256], 13, 0))).unwrap();
        let err = g.dequantize("k5").unwrap_err().to_string();
        assert!(err.contains("Q5_K (ggml type 13)"), "{err}");
        // A type id ggml does not have: opens, the error names it.
        let g = parse(&header(1, 0, &tensor_bytes("x", &[1 << 40], 200, 0))).unwrap();
        let err = g.dequantize("x").unwrap_err().to_string();
        assert!(err.contains("unknown (ggml type 200)"), "{err}");
    }

    /// Dequantises every tensor of the real model and compares with the `gguf`
    /// Python package's `gguf.quants.dequantize`. Run with
    /// `cargo test --lib gguf::tests::real_model -- --ignored --nocapture`
    /// (needs `.cache/models/smollm2-135m/*.gguf` and `.venv` with `gguf`).
    #[test]
    #[ignore = "needs the real model file and a Python with the gguf package"]
    fn real_model_matches_python_gguf() {
        let (Some(model), Some(python)) = (real_model(), reference_python()) else {
            return;
        };
        let g = GgufFile::open(&model).unwrap();
        println!(
            "GGUF v{}, {} metadata keys, {} tensors, data at byte {}",
            g.version(),
            g.metadata().len(),
            g.tensors().len(),
            g.data_start()
        );
        for (k, v) in g.metadata() {
            match v.as_array() {
                Some(a) => println!("  {k}: array of {}", a.len()),
                None => println!("  {k}: {v:?}"),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let script = r#"
import sys, json, numpy as np, gguf
r = gguf.GGUFReader(sys.argv[1])
shapes = {}
for i, t in enumerate(r.tensors):
    a = gguf.quants.dequantize(t.data, t.tensor_type).astype('<f4')
    a.tofile(f"{sys.argv[2]}/{i}.f32")
    shapes[t.name] = [i, list(a.shape), t.tensor_type.name]
print(json.dumps(shapes))
"#;
        let out = run_python(
            &python,
            script,
            &[model.to_str().unwrap(), dir.path().to_str().unwrap()],
            "",
        );
        let reference: BTreeMap<String, (usize, Vec<i64>, String)> =
            serde_json::from_str(&out).unwrap();
        assert_eq!(reference.len(), g.tensors().len());
        let mut worst = 0f32;
        for t in g.tensors() {
            let (i, shape, ty) = &reference[&t.name];
            assert_eq!(ty, t.ggml_type.name(), "{}", t.name);
            let (values, our_shape) = g.dequantize(&t.name).unwrap();
            assert_eq!(&our_shape, shape, "{}", t.name);
            let bytes = std::fs::read(dir.path().join(format!("{i}.f32"))).unwrap();
            assert_eq!(bytes.len(), 4 * values.len(), "{}", t.name);
            let diff = bytes
                .chunks_exact(4)
                .zip(&values)
                .map(|(b, v)| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) - v).abs())
                .fold(0f32, f32::max);
            if ["blk.0.attn_q.weight", "token_embd.weight"].contains(&t.name.as_str()) {
                println!(
                    "{} ({}): shape {our_shape:?}, max |diff| = {diff:e}",
                    t.name, t.ggml_type
                );
            }
            worst = worst.max(diff);
            assert!(diff < 1e-6, "{}: max |diff| {diff}", t.name);
        }
        println!("all {} tensors: max |diff| = {worst:e}", g.tensors().len());
    }

    /// Random byte corruptions of a valid file never panic: each either
    /// parses (and every tensor then dequantises or errs) or is an error.
    #[test]
    fn corrupted_files_never_panic() {
        let mut b = GgufBuilder::new()
            .kv("general.alignment", GgufValue::U32(32))
            .kv("tokens", strings(&["a", "bc"]));
        b = b.tensor("q", &[32, 2], GgmlType::Q8_0, vec![7; 68]);
        b = b.tensor("k", &[256], GgmlType::Q4_K, vec![9; 144]);
        let clean = b.build();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let mut bytes = clean.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            if let Ok(g) = parse(&bytes) {
                for t in g.tensors() {
                    let _ = g.dequantize(&t.name);
                }
            }
        }
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let mut key = kv_bytes("k", T_STRING, &2u64.to_le_bytes());
        key.extend_from_slice(&[0xff, 0xfe]);
        assert_malformed(&header(0, 1, &key), "UTF-8");
    }
}
