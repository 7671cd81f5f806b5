//! The decode step fused on the CPU: the new tokens of a few sequences (one
//! per sequence while decoding, or a short prompt) go through whole blocks,
//! and the last positions through the final norm and unembedding, in plain
//! Rust over the model's weights, with the matrix–vector products of
//! [`super::gemv`] shared out by a [`super::team::Team`].
//!
//! Why: a decode step through libtorch is ~40 small operator calls per block,
//! and at batch 1 their dispatch costs about as much as streaming the weights.
//! The forward pass uses this path only for blocks where no hook is wanted, so
//! hooks and interventions see exactly the libtorch path.
//!
//! It reproduces that path's arithmetic: where the libtorch path stores a bf16
//! tensor, this path rounds to bf16 at the same point, so the two differ only in
//! the order of f32 sums and the last bits of `exp`. Shapes: the residual is
//! `[batch·seq, d_model]`, row-major.

use tch::{Device, Kind, Tensor};

use super::fused_ops::{exp, rms_norm_rows, vectorized_fn, HostRotary};
use super::gemv::{round_bf16, Element, WeightSlice};
use super::team::{Readers, Team};
use crate::error::{Error, Result};
use crate::model::config::{Activation, ModelConfig, NormKind};
use crate::model::kv_cache::KvCache;
use crate::model::weights::{BlockWeights, ModelWeights, NormWeights};

/// The most rows (sequences × new positions) a fused step takes in `kind`.
/// Past it, each weight row's products outlast its load and libtorch's
/// blocked matmul is faster. Measured on 2 cores (prompt of one sequence,
/// fused against libtorch): bf16 8 rows 11.5 against 17.7 ms, 16 rows 18
/// against 25 ms, 32 rows 33 against 25.5 ms; f32 8 rows 32 against 52 ms,
/// 16 rows 76 against 67 ms. A batch of 8 sequences decodes fused.
pub fn max_rows(kind: Kind) -> i64 {
    if kind == Kind::BFloat16 {
        16
    } else {
        8
    }
}

/// Whether the fused step can run `cfg` in `kind` on `device`. GELU with erf
/// (GPT-NeoX) and f16/f64 models keep the libtorch path.
pub fn supported(cfg: &ModelConfig, kind: Kind, device: Device) -> bool {
    device == Device::Cpu
        && matches!(kind, Kind::Float | Kind::BFloat16)
        && cfg.activation != Activation::Gelu
}

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
    ln1: HostNorm<'a>,
    qkv_w: WeightSlice<'a>,
    qkv_b: Option<WeightSlice<'a>>,
    out_w: WeightSlice<'a>,
    out_b: Option<WeightSlice<'a>>,
    ln2: HostNorm<'a>,
    mlp_in_w: WeightSlice<'a>,
    mlp_in_b: Option<WeightSlice<'a>>,
    mlp_out_w: WeightSlice<'a>,
    mlp_out_b: Option<WeightSlice<'a>>,
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
    gain: WeightSlice<'a>,
    bias: Option<WeightSlice<'a>>,
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
    keys: *mut f32,
    values: *mut f32,
    len: usize,
    capacity: usize,
    _cache: std::marker::PhantomData<&'a KvCache>,
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
    fn history(
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
    fn write(&self, at: (usize, usize, usize), n_kv: usize, k: &[f32], v: &[f32]) {
        let dh = k.len();
        let o = self.offset(at, n_kv, dh);
        // SAFETY: in bounds (checked); no thread reads this position from the cache.
        unsafe {
            std::slice::from_raw_parts_mut(self.keys.add(o), dh).copy_from_slice(k);
            std::slice::from_raw_parts_mut(self.values.add(o), dh).copy_from_slice(v);
        }
    }
}

/// `a · b` over 16 partial sums, which the compiler keeps in vector registers.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut partial = [0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..16 {
            partial[l] += x[l] * y[l];
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// Up to this many rows, each thread of the team computes the MLP activation
/// of every row itself rather than sharing it out.
const REDUNDANT_ACTIVATION_ROWS: usize = 8;

/// Cached keys and values `[past, d_head]` of one (sequence, kv head), and
/// which of them the query may see (`None`: all).
type History<'k> = (&'k [f32], &'k [f32], Option<&'k [bool]>);

vectorized_fn! {
    /// `out = Σ_t p_t·v_t` with `p = softmax(scale · q·k_t)` over the visible
    /// cached positions, then this call's visible `(key, value)` pairs `new`.
    /// `scores` has room for all of them.
    fn attend_head['k](
        q: &[f32],
        history: History<'k>,
        new: &[(&'k [f32], &'k [f32])],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let (keys, values, visible) = history;
        let dh = q.len();
        let past = keys.len() / dh.max(1);
        let (cached, fresh) = scores.split_at_mut(past);
        for (t, (score, k)) in cached.iter_mut().zip(keys.chunks_exact(dh)).enumerate() {
            *score = if visible.is_none_or(|v| v[t]) {
                dot(q, k) * scale
            } else {
                f32::NEG_INFINITY
            };
        }
        for (score, (k, _)) in fresh.iter_mut().zip(new) {
            *score = dot(q, k) * scale;
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
        let mut denom = 0f32;
        for score in scores.iter_mut() {
            // Masked scores are -inf, whose exp is 0.
            *score = exp(*score - max);
            denom += *score;
        }
        out.fill(0.0);
        let values = values.chunks_exact(dh).chain(new.iter().map(|(_, v)| *v));
        for (p, v) in scores.iter().zip(values) {
            if *p > 0.0 {
                let weight = p / denom;
                for (o, x) in out.iter_mut().zip(v) {
                    *o += weight * x;
                }
            }
        }
    }
}

vectorized_fn! {
    /// The MLP activation of a run `x` of one row, times the matching run
    /// `up` in a gated MLP, each result stored in the model's precision.
    fn activate_run[](
        x: &[f32],
        up: Option<&[f32]>,
        activation: Activation,
        bf16: bool,
        out: &mut [f32],
    ) {
        let r = |v: f32| if bf16 { round_bf16(v) } else { v };
        match activation {
            Activation::Silu => {
                for (o, v) in out.iter_mut().zip(x) {
                    *o = r(v / (1.0 + exp(-v)));
                }
            }
            Activation::GeluTanh => {
                for (o, v) in out.iter_mut().zip(x) {
                    let inner = (2.0f32 / std::f32::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
                    *o = r(0.5 * v * (1.0 + inner.tanh()));
                }
            }
            // Refused by `supported`; erf-GELU stays on the libtorch path.
            Activation::Gelu => out.fill(f32::NAN),
        }
        if let Some(up) = up {
            for (o, u) in out.iter_mut().zip(up) {
                *o = r(*o * u);
            }
        }
    }
}

vectorized_fn! {
    /// A bf16 model rounds where libtorch stores a bf16 tensor; f32 never does.
    fn round_all[](bf16: bool, xs: &mut [f32]) {
        if bf16 {
            xs.iter_mut().for_each(|x| *x = round_bf16(*x));
        }
    }
}

vectorized_fn! {
    /// `out = a + b`, rounded as [`round_all`] does.
    fn add_into[](a: &[f32], b: &[f32], bf16: bool, out: &mut [f32]) {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = if bf16 { round_bf16(x + y) } else { x + y };
        }
    }
}

vectorized_fn! {
    /// Rotates `head` (half-split layout, `2·cos.len()` rotated dimensions)
    /// by the angles whose cos and sin are given: `x·cos + rotate_half(x)·sin`,
    /// each product stored in the model's precision as in the libtorch path.
    fn rotate_head[](head: &mut [f32], cos: &[f32], sin: &[f32], bf16: bool) {
        let r = |v: f32| if bf16 { round_bf16(v) } else { v };
        let (first, second) = head.split_at_mut(cos.len());
        for (((x1, x2), c), s) in first.iter_mut().zip(second.iter_mut()).zip(cos).zip(sin) {
            let (a, b) = (*x1, *x2);
            *x1 = r(r(a * c) + r(-b * s));
            *x2 = r(r(b * c) + r(a * s));
        }
    }
}

/// The per-call state of one step: `seq` new positions of each of `batch`
/// sequences after `past` cached ones (a decode step has `seq` = 1; a short
/// prompt is a step too). Its rows are `[batch, seq]` flattened.
pub struct DecodeStep {
    batch: usize,
    seq: usize,
    past: usize,
    /// `[batch·seq, past + seq]`: key `t` is visible to a row (causal, and
    /// padding is not), when padding or several positions need a mask.
    visible: Option<Vec<bool>>,
    /// `[batch·seq, rotary_dim / 2]` cos and sin of each row's angles, in the
    /// model's precision.
    cos: Vec<f32>,
    sin: Vec<f32>,
    half_rotary: usize,
    bf16: bool,
}

impl DecodeStep {
    /// `padding [batch, past + seq]` (1 = real token), `rotary` the call's
    /// rotary tables when the model has them.
    pub fn new(
        (batch, seq, past): (usize, usize, usize),
        padding: Option<&Tensor>,
        rotary: Option<&HostRotary>,
        kind: Kind,
    ) -> Result<Self> {
        let bf16 = kind == Kind::BFloat16;
        let total = past + seq;
        if let Some(r) = rotary.filter(|r| r.seq != seq || (r.rows != 1 && r.rows != batch)) {
            return Err(Error::InvalidArgument(format!(
                "fused step: rotary tables for {}×{} positions, not {batch}×{seq}",
                r.rows, r.seq
            )));
        }
        let padding = match padding {
            Some(mask) => {
                let mask = Vec::<i64>::try_from(mask.to_device(Device::Cpu).reshape([-1]))?;
                if mask.len() != batch * total {
                    return Err(Error::InvalidArgument(format!(
                        "fused step: padding mask of {} entries for {batch}×{total}",
                        mask.len()
                    )));
                }
                Some(mask)
            }
            None => None,
        };
        // Causal, without padding keys; a query always sees itself, as in the
        // libtorch mask.
        let visible = (padding.is_some() || seq > 1).then(|| {
            let mut visible = Vec::with_capacity(batch * seq * total);
            for b in 0..batch {
                for s in 0..seq {
                    let now = past + s;
                    visible.extend((0..total).map(|t| {
                        t == now
                            || (t < now && padding.as_ref().is_none_or(|m| m[b * total + t] != 0))
                    }));
                }
            }
            visible
        });
        // Each row's angles, from the tables the libtorch path's kernels use.
        let half_rotary = rotary.map_or(0, |r| r.half);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        if let Some(r) = rotary {
            for row in 0..batch * seq {
                let (c, s) = r.at(row / seq, row % seq);
                cos.extend_from_slice(c);
                sin.extend_from_slice(s);
            }
        }
        Ok(DecodeStep {
            batch,
            seq,
            past,
            visible,
            cos,
            sin,
            half_rotary,
            bf16,
        })
    }

    /// New positions per sequence.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// Rows of the step, `batch·seq`.
    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }

    fn round(&self, xs: &mut [f32]) {
        round_all(self.bf16, xs);
    }

    /// `a + b`, stored in the model's precision.
    fn add(&self, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut sum = vec![0f32; a.len()];
        add_into(a, b, self.bf16, &mut sum);
        sum
    }

    /// `x [batch, k] · Wᵀ + b`, stored in the model's precision.
    fn linear(
        &self,
        team: &Team,
        (x, m): (&[f32], usize),
        w: WeightSlice,
        b: Option<WeightSlice>,
        readers: Readers,
    ) -> Vec<f32> {
        let mut out = team.product(x, m, w, b, readers);
        self.round(&mut out);
        out
    }

    /// The block's norm of each row of `x [batch, d]`.
    fn norm(&self, cfg: &ModelConfig, w: &HostNorm, x: &[f32]) -> Vec<f32> {
        let d = cfg.d_model as usize;
        let eps = cfg.norm_eps as f32;
        if cfg.norm == NormKind::RmsNorm {
            // The batched forward's kernel, on the rows in their stored type
            // (a bf16 model's rows hold bf16 values exactly).
            return match w.gain {
                WeightSlice::F32(gain) => {
                    let mut out = vec![0f32; x.len()];
                    rms_norm_rows::<f32>(x, gain, eps, &mut out);
                    out
                }
                WeightSlice::Bf16(gain) => {
                    let mut bits = vec![0u16; x.len()];
                    narrow_to_bf16(x, &mut bits);
                    let mut out = vec![0u16; x.len()];
                    rms_norm_rows::<u16>(&bits, gain, eps, &mut out);
                    out.iter().map(|b| b.widen()).collect()
                }
            };
        }
        // LayerNorm, with one rounding at the end, as libtorch's fused layer norm does.
        let gain = w.gain.to_f32();
        let bias = w.bias.map_or_else(|| vec![0f32; d], |b| b.to_f32());
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(d) {
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            out.extend(
                row.iter()
                    .zip(gain.iter().zip(&bias))
                    .map(|(v, (g, b))| (v - mean) * rstd * g + b),
            );
        }
        self.round(&mut out);
        out
    }

    /// Rotates the first `2·half_rotary` dimensions of `head` (half-split
    /// layout) by row `b`'s angles: `x·cos + rotate_half(x)·sin`, each product
    /// stored in the model's precision as in the libtorch path.
    fn rotate(&self, row: usize, head: &mut [f32]) {
        let half = self.half_rotary;
        let cos = &self.cos[row * half..(row + 1) * half];
        let sin = &self.sin[row * half..(row + 1) * half];
        rotate_head(&mut head[..2 * half], cos, sin, self.bf16);
    }

    /// One block for every row of `resid [batch, d_model]`, in place; writes
    /// this position's keys and values into the block's `cache` layer.
    pub fn block(
        &self,
        team: &Team,
        cfg: &ModelConfig,
        w: &HostBlock,
        cache: &HostCache,
        resid: &mut Vec<f32>,
    ) {
        let (n_heads, n_kv, dh) = (
            cfg.n_heads as usize,
            cfg.n_kv_heads as usize,
            cfg.d_head as usize,
        );
        let (q_width, kv_width) = (n_heads * dh, n_kv * dh);
        let row_width = q_width + 2 * kv_width;
        let rows = self.rows();

        let attn_in = self.norm(cfg, &w.ln1, resid);
        let mut qkv = self.linear(team, (&attn_in, rows), w.qkv_w, w.qkv_b, Readers::All);
        if self.half_rotary > 0 {
            for (r, row) in qkv.chunks_exact_mut(row_width).enumerate() {
                // Query heads, then key heads.
                for head in row[..q_width + kv_width].chunks_exact_mut(dh) {
                    self.rotate(r, head);
                }
            }
        }
        let z = self.attend(team, &qkv, cache, (n_heads, n_kv, dh));
        let attn_out = self.linear(team, (&z, rows), w.out_w, w.out_b, Readers::All);
        let resid_mid = self.add(resid, &attn_out);
        let mlp_in = if cfg.parallel_residual {
            self.norm(cfg, &w.ln2, resid)
        } else {
            self.norm(cfg, &w.ln2, &resid_mid)
        };
        let pre = self.linear(team, (&mlp_in, rows), w.mlp_in_w, w.mlp_in_b, Readers::All);
        let post = self.activate(team, cfg, &pre);
        let mlp_out = self.linear(team, (&post, rows), w.mlp_out_w, w.mlp_out_b, Readers::All);
        *resid = self.add(&resid_mid, &mlp_out);
    }

    /// The MLP's activation of `pre [batch, d_mlp or 2·d_mlp]` → `[batch, d_mlp]`.
    fn activate(&self, team: &Team, cfg: &ModelConfig, pre: &[f32]) -> Vec<f32> {
        let d_mlp = cfg.d_mlp as usize;
        let width = if cfg.gated_mlp { 2 * d_mlp } else { d_mlp };
        if self.rows() <= REDUNDANT_ACTIVATION_ROWS {
            // Every thread computes the whole activation: a few microseconds,
            // less than the barrier that sharing it would need.
            let mut out = vec![0f32; self.rows() * d_mlp];
            for (row, run) in out.chunks_exact_mut(d_mlp).enumerate() {
                let x = &pre[row * width..row * width + d_mlp];
                let up = cfg
                    .gated_mlp
                    .then(|| &pre[row * width + d_mlp..(row + 1) * width]);
                activate_run(x, up, cfg.activation, self.bf16, run);
            }
            return out;
        }
        team.split(self.rows() * d_mlp, 1, 64, |items, mut out| {
            // The items' runs within each row.
            let mut i = items.start;
            while i < items.end {
                let (row, j) = (i / d_mlp, i % d_mlp);
                let n = (d_mlp - j).min(items.end - i);
                let (run, rest) = out.split_at_mut(n);
                let x = &pre[row * width + j..row * width + j + n];
                let up = cfg
                    .gated_mlp
                    .then(|| &pre[row * width + d_mlp + j..row * width + d_mlp + j + n]);
                activate_run(x, up, cfg.activation, self.bf16, run);
                out = rest;
                i += n;
            }
        })
    }

    /// Writes the new keys and values (the leader), then attends, the (row,
    /// head) pairs split evenly over the team: every thread gets `z [rows,
    /// n_heads·d_head]` in the model's precision.
    /// Keys, values and scores are f32, as in the libtorch path's f32 cache;
    /// this position's key and value come from `qkv`.
    fn attend(
        &self,
        team: &Team,
        qkv: &[f32],
        cache: &HostCache,
        (n_heads, n_kv, dh): (usize, usize, usize),
    ) -> Vec<f32> {
        let (q_width, kv_width) = (n_heads * dh, n_kv * dh);
        let row_width = q_width + 2 * kv_width;
        let total = self.past + self.seq;
        let scale = 1.0 / (dh as f32).sqrt();
        let group = n_heads / n_kv;
        // This call's key and value of kv head `g` at row `r` of `qkv`.
        let new_kv = |r: usize, g: usize| {
            let row = &qkv[r * row_width..(r + 1) * row_width];
            (
                &row[q_width + g * dh..q_width + (g + 1) * dh],
                &row[q_width + kv_width + g * dh..q_width + kv_width + (g + 1) * dh],
            )
        };
        if team.is_leader() {
            for r in 0..self.rows() {
                let (b, now) = (r / self.seq, self.past + r % self.seq);
                for g in 0..n_kv {
                    let (k, v) = new_kv(r, g);
                    cache.write((b, g, now), n_kv, k, v);
                }
            }
        }
        // One item per (row, head), shared by the team.
        let attend_items = |items: std::ops::Range<usize>, out: &mut [f32]| {
            let mut scores = vec![0f32; total];
            let mut new = Vec::with_capacity(self.seq);
            for (i, out) in items.zip(out.chunks_exact_mut(dh)) {
                let (r, h) = (i / n_heads, i % n_heads);
                let (b, g) = (r / self.seq, h / group);
                let q = &qkv[r * row_width + h * dh..r * row_width + (h + 1) * dh];
                let (keys, values) = cache.history((b, g), self.past, n_kv, dh);
                // This row's mask over every position: cached ones, then this call's.
                let visible = self
                    .visible
                    .as_ref()
                    .map(|v| &v[r * total..(r + 1) * total]);
                new.clear();
                new.extend(
                    (0..self.seq)
                        .filter(|s| match visible {
                            Some(v) => v[self.past + s],
                            None => *s <= r % self.seq,
                        })
                        .map(|s| new_kv(b * self.seq + s, g)),
                );
                let history = (keys, values, visible.map(|v| &v[..self.past]));
                let scores = &mut scores[..self.past + new.len()];
                attend_head(q, history, &new, scale, scores, out);
            }
        };
        let mut z = team.split_even(self.rows() * n_heads, dh, attend_items);
        self.round(&mut z);
        z
    }

    /// Final norm and unembedding of each sequence's last position: logits
    /// `[batch, vocab]` in the model's precision, for the team's leader only
    /// (the other threads get an empty vector).
    pub fn logits(
        &self,
        team: &Team,
        cfg: &ModelConfig,
        ln_final: &HostNorm,
        unembed: WeightSlice,
        resid: &[f32],
    ) -> Vec<f32> {
        // Each sequence's last position.
        let d = cfg.d_model as usize;
        let last: Vec<f32> = resid
            .chunks_exact(d * self.seq)
            .flat_map(|sequence| &sequence[d * (self.seq - 1)..])
            .copied()
            .collect();
        let normed = self.norm(cfg, ln_final, &last);
        self.linear(team, (&normed, self.batch), unembed, None, Readers::Leader)
    }
}

vectorized_fn! {
    /// `bits` = the bf16 bits of `values`, rounded to nearest even.
    fn narrow_to_bf16[](values: &[f32], bits: &mut [u16]) {
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
