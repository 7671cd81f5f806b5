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

use super::quant;
use crate::error::{Error, Result};
pub use crate::model::load::gguf::quant::GgmlType;

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
        let values = quant::dequantize(info.ggml_type, data, n)
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
#[path = "file_tests.rs"]
pub(crate) mod gguf_tests;
#[cfg(test)]
pub(crate) use gguf_tests::testutil;
