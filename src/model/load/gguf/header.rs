//! Parsing a GGUF header from untrusted bytes: the version, the metadata
//! and the tensor table, every count and length checked against the bytes
//! that remain before anything is allocated.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::quant::GgmlType;
use super::value::*;
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

pub(super) struct Header {
    pub(super) version: u32,
    pub(super) metadata: BTreeMap<String, GgufValue>,
    pub(super) tensors: Vec<GgufTensorInfo>,
    pub(super) index: HashMap<String, usize>,
    pub(super) alignment: u64,
    pub(super) data_start: u64,
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

pub(super) fn parse_header(path: &Path, buf: &[u8]) -> Result<Header> {
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
