//! Reader for GGUF containers, versions 2 and 3 (llama.cpp's single-file model
//! format: a header, typed key/value metadata, a table of tensor descriptions,
//! then the aligned tensor data).
//!
//! We write this ourselves: no well-kept crate reads GGUF without pulling in a
//! whole ML framework (candle, burn, llama.cpp bindings). The format is small;
//! the reference is llama.cpp's `docs/gguf.md` and `ggml/src/gguf.cpp`.
//!
//! The file is memory-mapped and treated as untrusted input: every count and
//! length is checked against the bytes that remain before anything is
//! allocated, dimension products use checked arithmetic, and each tensor's data
//! range must lie inside the file at an offset that respects
//! `general.alignment`. Any violation is an [`Error::Malformed`] naming the
//! reason and the byte position; nothing in here panics on a bad file.
//!
//! Dequantisation lives in [`crate::model::load::gguf::quant`]; the tokenizer stored in the
//! metadata is rebuilt by [`crate::model::load::gguf::tokenizer`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::header::parse_header;
pub use super::header::{GgufTensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use super::quant;
pub use super::quant::GgmlType;
pub use super::value::GgufValue;
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An opened GGUF file: parsed metadata and tensor table over the mapped bytes.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("data_start", &self.data_start)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 4 {
            return Err(Error::malformed(
                path,
                format!("{len} bytes is too short for a GGUF file"),
            ));
        }
        // SAFETY: the map is read-only and private to this value. Like every
        // reader of a memory-mapped model file we rely on the file not being
        // truncated or rewritten while it is open; all parsing below treats
        // the bytes as untrusted.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.to_path_buf(), Storage::Mapped(mmap))
    }

    /// Parses a GGUF held in memory. `name` stands in for the path in errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Self> {
        let header = parse_header(&path, storage.bytes())?;
        Ok(GgufFile {
            path,
            storage,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            index: header.index,
            alignment: header.alignment,
            data_start: header.data_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::malformed(&self.path, reason)
    }

    fn meta_required(&self, key: &str) -> Result<&GgufValue> {
        self.metadata
            .get(key)
            .ok_or_else(|| self.bad(format!("missing metadata key `{key}`")))
    }

    fn wrong_type(&self, key: &str, value: &GgufValue, expected: &str) -> Error {
        self.bad(format!(
            "metadata key `{key}` holds a {}, expected {expected}",
            value.type_name()
        ))
    }

    /// A required non-negative integer.
    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        let v = self.meta_required(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer"))
    }

    /// A required number (float, or integer converted).
    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        let v = self.meta_required(key)?;
        v.as_f64()
            .ok_or_else(|| self.wrong_type(key, v, "a number"))
    }

    /// A required string.
    pub fn meta_str(&self, key: &str) -> Result<&str> {
        let v = self.meta_required(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, v, "a string"))
    }

    /// A required boolean.
    pub fn meta_bool(&self, key: &str) -> Result<bool> {
        let v = self.meta_required(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, v, "a bool"))
    }

    /// A required array.
    pub fn meta_array(&self, key: &str) -> Result<&[GgufValue]> {
        let v = self.meta_required(key)?;
        v.as_array()
            .ok_or_else(|| self.wrong_type(key, v, "an array"))
    }

    /// An optional non-negative integer: `Ok(None)` when absent, an error
    /// when present with another type.
    pub fn meta_opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.metadata
            .get(key)
            .map_or(Ok(None), |_| self.meta_u64(key).map(Some))
    }

    /// An optional number.
    pub fn meta_opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.metadata
            .get(key)
            .map_or(Ok(None), |_| self.meta_f64(key).map(Some))
    }

    /// An optional string.
    pub fn meta_opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.metadata
            .get(key)
            .map_or(Ok(None), |_| self.meta_str(key).map(Some))
    }

    /// An optional boolean.
    pub fn meta_opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.metadata
            .get(key)
            .map_or(Ok(None), |_| self.meta_bool(key).map(Some))
    }

    /// An optional array.
    pub fn meta_opt_array(&self, key: &str) -> Result<Option<&[GgufValue]>> {
        self.metadata
            .get(key)
            .map_or(Ok(None), |_| self.meta_array(key).map(Some))
    }

    /// The raw bytes of a tensor's data (checked at open time to lie inside
    /// the file; unknown layouts give an error).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let n_bytes = info.n_bytes().ok_or_else(|| {
            self.bad(format!(
                "tensor `{}` has {}, whose block layout is unknown",
                info.name, info.ggml_type
            ))
        })?;
        let start = self.data_start.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        let bytes = self.storage.bytes();
        match (start, end) {
            (Some(s), Some(e)) if e <= bytes.len() as u64 => Ok(&bytes[s as usize..e as usize]),
            _ => Err(self.bad(format!("tensor `{}` data lies outside the file", info.name))),
        }
    }

    /// Dequantised values in row-major order and the PyTorch-order shape
    /// (dims reversed).
    pub fn dequantize(&self, name: &str) -> Result<(Vec<f32>, Vec<i64>)> {
        let info = self.tensor_info(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            source_desc: self.path.display().to_string(),
        })?;
        self.dequantize_info(info)
    }

    /// [`Self::dequantize`] for a tensor already looked up.
    pub fn dequantize_info(&self, info: &GgufTensorInfo) -> Result<(Vec<f32>, Vec<i64>)> {
        if !info.ggml_type.can_dequantize() {
            return Err(Error::Config(format!(
                "{}: tensor `{}` is stored as {}, which saescope cannot dequantise \
                 (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)",
                self.path.display(),
                info.name,
                info.ggml_type
            )));
        }
        let data = self.tensor_bytes(info)?;
        let n = usize::try_from(info.n_elements())
            .map_err(|_| self.bad(format!("tensor `{}` is too large", info.name)))?;
        let values = quant::dequantize(info.ggml_type, data, n)
            .map_err(|reason| self.bad(format!("tensor `{}`: {reason}", info.name)))?;
        Ok((values, info.shape()))
    }
}

// Test-only writer, shared with the quant and tokenizer tests.
// ---------------------------------------------------------------------------

#[cfg(test)]
#[path = "file_tests.rs"]
pub(crate) mod gguf_tests;
#[cfg(test)]
pub(crate) use gguf_tests::testutil;
