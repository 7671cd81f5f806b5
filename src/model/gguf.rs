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
//! Dequantisation lives in [`super::gguf_quant`]; the tokenizer stored in the
//! metadata is rebuilt by [`super::gguf_tokenizer`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::gguf_quant;
pub use super::gguf_quant::GgmlType;
use crate::error::{Error, Result};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor's offset when the file
/// does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Nesting limit for arrays of arrays in the metadata (real files use one level).
const MAX_ARRAY_DEPTH: usize = 8;
/// Limit on the number of metadata values, all arrays included. The largest
/// real vocabularies (~260k tokens, with token types, scores and merges) are
/// ~1M values; this bounds the memory a hostile header can make us allocate
/// (each value is 32 bytes) to a few hundred MB.
const MAX_METADATA_VALUES: usize = 1 << 23;

// ---------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------

/// One metadata value, with the type the file stored it as.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer: any integer type that holds a
    /// non-negative value. Floats and booleans give `None`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer: any integer type whose value fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float: floats, and integers converted.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the stored type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "uint8",
            GgufValue::I8(_) => "int8",
            GgufValue::U16(_) => "uint16",
            GgufValue::I16(_) => "int16",
            GgufValue::U32(_) => "uint32",
            GgufValue::I32(_) => "int32",
            GgufValue::U64(_) => "uint64",
            GgufValue::I64(_) => "int64",
            GgufValue::F32(_) => "float32",
            GgufValue::F64(_) => "float64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }
}

// GGUF metadata value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// The fewest bytes a value of this type can occupy, `None` for an unknown
/// type id. Used to reject element counts that cannot fit in what remains.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        T_STRING => 8,
        T_ARRAY => 12,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Tensor descriptions
// ---------------------------------------------------------------------------

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (ne\[0\]) varies fastest. A `[out, in]` PyTorch
    /// weight is stored as `dims == [in, out]`.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of elements (checked at open time to fit in i64; saturates
    /// for a hand-built info that does not).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// The PyTorch-order shape: `dims` reversed.
    pub fn shape(&self) -> Vec<i64> {
        // Each dim was checked at open time to fit in i64.
        self.dims
            .iter()
            .rev()
            .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
            .collect()
    }

    /// Size of the data in bytes, when the type's layout is known.
    pub fn n_bytes(&self) -> Option<u64> {
        let block = self.ggml_type.block_size()? as u64;
        let bytes = self.ggml_type.block_bytes()? as u64;
        (self.n_elements() / block).checked_mul(bytes)
    }
}

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
        let values = gguf_quant::dequantize(info.ggml_type, data, n)
            .map_err(|reason| self.bad(format!("tensor `{}`: {reason}", info.name)))?;
        Ok((values, info.shape()))
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

struct Header {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    values_left: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn err(&self, reason: impl std::fmt::Display) -> Error {
        Error::malformed(self.path, format!("at byte {}: {reason}", self.pos))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes, {} remain",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in what remains when each item takes at least
    /// `min_item_bytes`. `what` names it in errors (built only on error).
    fn count(&mut self, min_item_bytes: usize, what: impl Fn() -> String) -> Result<usize> {
        let at = self.pos;
        let Ok(bytes) = self.array::<8>("count") else {
            return Err(self.err(format!(
                "truncated: {} needs 8 bytes, {} remain",
                what(),
                self.remaining()
            )));
        };
        let n = u64::from_le_bytes(bytes);
        let fits = self.remaining() / min_item_bytes.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= fits => Ok(n),
            _ => Err(Error::malformed(
                self.path,
                format!(
                    "at byte {at}: {} is {n}, but only {} bytes remain (room for at most {fits})",
                    what(),
                    self.remaining()
                ),
            )),
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.count(1, || format!("length of {what}"))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::malformed(
                self.path,
                format!("at byte {at}: {what} is not valid UTF-8"),
            )
        })
    }

    fn value(&mut self, ty: u32, depth: usize, what: &str) -> Result<GgufValue> {
        if self.values_left == 0 {
            return Err(self.err(format!(
                "more than {MAX_METADATA_VALUES} metadata values in total"
            )));
        }
        self.values_left -= 1;
        Ok(match ty {
            T_U8 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            T_I8 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            T_U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            T_I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            T_U32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            T_I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            T_U64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            T_I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            T_F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            T_F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            T_BOOL => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    self.pos -= 1;
                    return Err(self.err(format!("{what}: bool byte is {b}, not 0 or 1")));
                }
            },
            T_STRING => GgufValue::String(self.string(what)?),
            T_ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem_ty = self.u32(what)?;
                let min = min_value_size(elem_ty).ok_or_else(|| {
                    self.err(format!("{what}: unknown array element type {elem_ty}"))
                })?;
                let n = self.count(min, || format!("element count of {what}"))?;
                if n > self.values_left {
                    return Err(self.err(format!(
                        "{what}: {n} elements would exceed the limit of \
                         {MAX_METADATA_VALUES} metadata values"
                    )));
                }
                // Grow as elements actually parse rather than trusting `n`.
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1, what)?);
                }
                GgufValue::Array(items)
            }
            other => {
                return Err(self.err(format!("{what}: unknown value type {other}")));
            }
        })
    }
}

fn parse_header(path: &Path, buf: &[u8]) -> Result<Header> {
    let mut r = Reader {
        buf,
        path,
        pos: 0,
        values_left: MAX_METADATA_VALUES,
    };
    let magic: [u8; 4] = r.array("magic")?;
    if magic != GGUF_MAGIC {
        return Err(Error::malformed(
            path,
            format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\""),
        ));
    }
    let version = r.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::malformed(
                path,
                "GGUF version 1 is not supported (only versions 2 and 3)",
            ))
        }
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(Error::malformed(
                path,
                format!(
                    "big-endian GGUF (version {}) is not supported",
                    v.swap_bytes()
                ),
            ))
        }
        v => {
            return Err(Error::malformed(
                path,
                format!("unsupported GGUF version {v} (only versions 2 and 3)"),
            ))
        }
    }
    // Each tensor description takes at least 24 bytes (name length, n_dims,
    // type, offset); each key/value pair at least 13 (key length, type, one byte).
    let n_tensors = r.count(24, || "tensor count".into())?;
    let n_kv = r.count(13, || "metadata count".into())?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let at = r.pos;
        let key = r.string(&format!("key of metadata entry {i}"))?;
        let ty = r.u32(&format!("type of metadata `{key}`"))?;
        let value = r.value(ty, 0, &format!("metadata `{key}`"))?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(Error::malformed(
                path,
                format!("at byte {at}: duplicate metadata key `{key}`"),
            ));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 30 => a,
            _ => {
                return Err(Error::malformed(
                    path,
                    format!("general.alignment is {v:?}, not a power of two"),
                ))
            }
        },
    };

    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors.min(1 << 12));
    let mut index = HashMap::with_capacity(n_tensors.min(1 << 12));
    for i in 0..n_tensors {
        let at = r.pos;
        let name = r.string(&format!("name of tensor {i}"))?;
        let n_dims = r.u32(&format!("n_dims of tensor `{name}`"))? as usize;
        if n_dims > MAX_DIMS {
            return Err(r.err(format!(
                "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(r.u64(&format!("dims of tensor `{name}`"))?);
        }
        let ggml_type = GgmlType::from_id(r.u32(&format!("type of tensor `{name}`"))?);
        let offset = r.u64(&format!("offset of tensor `{name}`"))?;
        let bad = |reason: String| {
            Error::malformed(path, format!("at byte {at}: tensor `{name}` {reason}"))
        };

        let mut n_elements: u64 = 1;
        for &d in &dims {
            if d > i64::MAX as u64 {
                return Err(bad(format!("has dimension {d}, beyond i64")));
            }
            n_elements = n_elements
                .checked_mul(d)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| bad(format!("has dims {dims:?} whose product overflows")))?;
        }
        if let Some(block) = ggml_type.block_size() {
            let row = dims.first().copied().unwrap_or(1);
            if row % block as u64 != 0 {
                return Err(bad(format!(
                    "is {ggml_type} with rows of {row} elements, not a multiple of its block of {block}"
                )));
            }
        }
        if offset % alignment != 0 {
            return Err(bad(format!(
                "has offset {offset}, not a multiple of the alignment {alignment}"
            )));
        }
        if index.insert(name.clone(), tensors.len()).is_some() {
            return Err(bad("appears twice".to_string()));
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    let end_of_header = r.pos as u64;
    let data_start = end_of_header.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    if !tensors.is_empty() && data_start > file_len {
        return Err(Error::malformed(
            path,
            format!(
                "truncated: data section would start at byte {data_start}, the file has {file_len}"
            ),
        ));
    }
    for t in &tensors {
        // The byte size overflows only for absurd dims, caught here too.
        let Some(n_bytes) = t.n_bytes() else { continue };
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(Error::malformed(
                    path,
                    format!(
                        "truncated: tensor `{}` ({}, dims {:?}) needs bytes {}..{} of the data \
                         section at {data_start}, but the file has {file_len} bytes",
                        t.name,
                        t.ggml_type,
                        t.dims,
                        t.offset,
                        t.offset as u128 + n_bytes as u128
                    ),
                ))
            }
        }
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        index,
        alignment,
        data_start,
    })
}

// ---------------------------------------------------------------------------
// Test-only writer, shared with the quant and tokenizer tests.
// ---------------------------------------------------------------------------

#[cfg(test)]
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

#[cfg(test)]
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
