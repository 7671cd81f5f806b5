//! The model's tensors as the fused CPU kernels read them: borrowed f32 or
//! bf16 weight slices ([`HostModel`], [`HostBlock`]), the KV cache's rows
//! ([`HostCache`]), and residual rows to and from tensors without a libtorch
//! kernel.

use tch::{Device, Kind, Tensor};

use super::gemv::{Element, WeightSlice};
use crate::error::{Error, Result};
use crate::model::kv_cache::KvCache;
use crate::model::weights::{BlockWeights, ModelWeights, NormWeights};
use crate::vectorized_fn;

/// Borrows a contiguous CPU tensor's f32 or bf16 elements.
pub fn weight_slice(t: &Tensor) -> Result<WeightSlice<'_>> {
    if t.device() != Device::Cpu || !t.is_contiguous() {
        return Err(Error::InvalidArgument(
            "the fused decode step needs contiguous CPU tensors".into(),
        ));
    }
    let n = t.numel();
    // SAFETY: the tensor is contiguous on the CPU with `n` elements of the
    // matched kind, and the borrow of `t` keeps its storage alive.
    Ok(unsafe {
        match t.kind() {
            Kind::Float => {
                WeightSlice::F32(std::slice::from_raw_parts(t.data_ptr() as *const f32, n))
            }
            Kind::BFloat16 => {
                WeightSlice::Bf16(std::slice::from_raw_parts(t.data_ptr() as *const u16, n))
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "the fused decode step has no {other:?} kernels"
                )))
            }
        }
    })
}

/// Borrows a contiguous CPU int64 tensor's elements (`None` for any other).
pub fn host_i64(t: &Tensor) -> Option<&[i64]> {
    if t.device() != Device::Cpu || t.kind() != Kind::Int64 || !t.is_contiguous() {
        return None;
    }
    // SAFETY: a contiguous CPU tensor of `numel` int64 elements, kept alive by
    // the borrow of `t`.
    Some(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const i64, t.numel()) })
}

/// One block's weights, borrowed from its tensors for the fused step
/// (plain slices, which the team's threads may share; tensors may not be).
pub struct HostBlock<'a> {
    pub(super) ln1: HostNorm<'a>,
    pub(super) qkv_w: WeightSlice<'a>,
    pub(super) qkv_b: Option<WeightSlice<'a>>,
    pub(super) out_w: WeightSlice<'a>,
    pub(super) out_b: Option<WeightSlice<'a>>,
    pub(super) ln2: HostNorm<'a>,
    pub(super) mlp_in_w: WeightSlice<'a>,
    pub(super) mlp_in_b: Option<WeightSlice<'a>>,
    pub(super) mlp_out_w: WeightSlice<'a>,
    pub(super) mlp_out_b: Option<WeightSlice<'a>>,
}

impl<'a> HostBlock<'a> {
    pub fn new(w: &'a BlockWeights) -> Result<Self> {
        let opt = |t: &'a Option<Tensor>| t.as_ref().map(weight_slice).transpose();
        Ok(HostBlock {
            ln1: HostNorm::new(&w.ln1)?,
            qkv_w: weight_slice(&w.qkv_w)?,
            qkv_b: opt(&w.qkv_b)?,
            out_w: weight_slice(&w.out_w)?,
            out_b: opt(&w.out_b)?,
            ln2: HostNorm::new(&w.ln2)?,
            mlp_in_w: weight_slice(&w.mlp_in_w)?,
            mlp_in_b: opt(&w.mlp_in_b)?,
            mlp_out_w: weight_slice(&w.mlp_out_w)?,
            mlp_out_b: opt(&w.mlp_out_b)?,
        })
    }
}

/// Every weight the fused step reads, borrowed once for the model's life.
pub struct HostModel<'a> {
    pub blocks: Vec<HostBlock<'a>>,
    pub ln_final: HostNorm<'a>,
    pub unembed: WeightSlice<'a>,
}

impl<'a> HostModel<'a> {
    pub fn new(w: &'a ModelWeights) -> Result<Self> {
        Ok(HostModel {
            blocks: w.blocks.iter().map(HostBlock::new).collect::<Result<_>>()?,
            ln_final: HostNorm::new(&w.ln_final)?,
            unembed: weight_slice(&w.unembed)?,
        })
    }
}

/// A norm's gain and optional bias.
pub struct HostNorm<'a> {
    pub(super) gain: WeightSlice<'a>,
    pub(super) bias: Option<WeightSlice<'a>>,
}

impl<'a> HostNorm<'a> {
    pub fn new(w: &'a NormWeights) -> Result<Self> {
        Ok(HostNorm {
            gain: weight_slice(&w.weight)?,
            bias: w.bias.as_ref().map(weight_slice).transpose()?,
        })
    }
}

/// One layer of the KV cache, `[batch, n_kv_heads, capacity, d_head]` f32:
/// the team's leader writes this step's position, every thread reads the
/// earlier ones.
pub struct HostCache<'a> {
    pub(super) keys: *mut f32,
    pub(super) values: *mut f32,
    pub(super) len: usize,
    pub(super) capacity: usize,
    pub(super) _cache: std::marker::PhantomData<&'a KvCache>,
}

// SAFETY: the leader writes only the current position, which no thread reads
// from the cache during the step (each has it in its own rows); other
// positions are only read.
unsafe impl Send for HostCache<'_> {}
unsafe impl Sync for HostCache<'_> {}

impl HostCache<'_> {
    /// Layer `layer` of `cache`, with room checked for `seq` more positions.
    pub fn new(cache: &KvCache, layer: usize, seq: usize) -> Result<HostCache<'_>> {
        let layer = cache.host_layer(layer, seq as i64)?;
        Ok(HostCache {
            keys: layer.keys,
            values: layer.values,
            len: layer.len,
            capacity: layer.capacity,
            _cache: std::marker::PhantomData,
        })
    }

    /// Element offset of `[b, g, t, 0]`, checked against the layer's size.
    fn offset(&self, (b, g, t): (usize, usize, usize), n_kv: usize, dh: usize) -> usize {
        let at = ((b * n_kv + g) * self.capacity + t) * dh;
        assert!(at + dh <= self.len, "KV cache index out of range");
        at
    }

    /// The cached keys and values of positions `0..len` of `(row, kv head)`,
    /// each `[len, d_head]`.
    pub(super) fn history(
        &self,
        (b, g): (usize, usize),
        len: usize,
        n_kv: usize,
        dh: usize,
    ) -> (&[f32], &[f32]) {
        if len == 0 {
            return (&[], &[]);
        }
        let start = self.offset((b, g, 0), n_kv, dh);
        self.offset((b, g, len - 1), n_kv, dh);
        // SAFETY: in bounds (both ends checked), and never written during the
        // step (see above).
        unsafe {
            (
                std::slice::from_raw_parts(self.keys.add(start), len * dh),
                std::slice::from_raw_parts(self.values.add(start), len * dh),
            )
        }
    }

    /// Stores this step's key and value; only the team's leader calls it.
    pub(super) fn write(&self, at: (usize, usize, usize), n_kv: usize, k: &[f32], v: &[f32]) {
        let dh = k.len();
        let o = self.offset(at, n_kv, dh);
        // SAFETY: in bounds (checked); no thread reads this position from the cache.
        unsafe {
            std::slice::from_raw_parts_mut(self.keys.add(o), dh).copy_from_slice(k);
            std::slice::from_raw_parts_mut(self.values.add(o), dh).copy_from_slice(v);
        }
    }
}

vectorized_fn! {
    /// `bits` = the bf16 bits of `values`, rounded to nearest even.
    pub(super) fn narrow_to_bf16[](values: &[f32], bits: &mut [u16]) {
        for (b, v) in bits.iter_mut().zip(values) {
            *b = u16::narrow(*v);
        }
    }
}

/// f32 `rows` as a tensor of `shape` and `kind`
/// (whose values they already hold exactly). Built on the host without a
/// libtorch kernel (tch's `from_slice` zero-fills first, which on large tensors
/// wakes libtorch's worker threads, and they then spin against the decode
/// step's own threads).
pub fn host_to_tensor(rows: &[f32], shape: [i64; 3], kind: Kind) -> Result<Tensor> {
    let n = rows.len() as i64;
    if shape.iter().product::<i64>() != n {
        return Err(Error::InvalidArgument(format!(
            "{n} values do not fill a {shape:?} tensor"
        )));
    }
    Ok(match kind {
        // tch 0.24 maps `half::bf16` to `Kind::Half`, so bf16 is written as its
        // bits and reinterpreted (a view, no kernel).
        Kind::BFloat16 => {
            let t = Tensor::empty([n], (Kind::Int16, Device::Cpu));
            // SAFETY: a fresh contiguous CPU tensor of `n` i16 elements.
            let bits =
                unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u16, rows.len()) };
            narrow_to_bf16(rows, bits);
            t.view_dtype(Kind::BFloat16).view(shape)
        }
        Kind::Float => {
            let t = Tensor::empty([n], (Kind::Float, Device::Cpu));
            // SAFETY: a fresh contiguous CPU tensor of `n` f32 elements.
            unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, rows.len()) }
                .copy_from_slice(rows);
            t.view(shape)
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "the fused decode step has no {other:?} kernels"
            )))
        }
    })
}

/// Every element of `t` as f32, row-major (a `[batch, 1, d]` residual gives
/// its rows `[batch, d]`). f32 and bf16 CPU tensors are read straight from
/// their storage: tch's `Vec::try_from` copies through a libtorch kernel, which
/// on large tensors wakes libtorch's worker threads, and they then spin against
/// the decode step's own threads.
pub fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.to_device(Device::Cpu).contiguous();
    match weight_slice(&t) {
        Ok(elements) => Ok(elements.to_f32()),
        Err(_) => Ok(Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1]))?),
    }
}
