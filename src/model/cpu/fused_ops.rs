//! Fused CPU kernels for the batched forward. Each replaces a chain of
//! libtorch element-wise operators, and the memory traffic between them, with
//! one pass over the data on libtorch's own threads ([`torch_threads`]).
//!
//! They round to the model's dtype wherever the libtorch chain (and
//! transformers) stores an intermediate tensor, so a bf16 model computes the
//! same values up to the order of f32 sums and the last bit of `exp`.
//!
//! They apply to contiguous CPU tensors in f32 or bf16 that need no gradient
//! ([`applies`]); callers keep libtorch's operators otherwise.
//!
//! [`torch_threads`]: super::torch_threads

use tch::{Device, Kind, Tensor};

use super::gemv::Element;
use super::torch_threads::{for_each_part, SharedMut};
use crate::vectorized_fn;

/// Lanes of the hand-split reductions: one AVX-512 register of f32. Summing
/// lane-wise lets the compiler vectorise a reduction it may not reorder.
const LANES: usize = 16;

/// Whether the fused kernels may stand in for libtorch's operators on `t`.
pub fn applies(t: &Tensor) -> bool {
    t.device() == Device::Cpu
        && matches!(t.kind(), Kind::Float | Kind::BFloat16)
        && !t.requires_grad()
        && t.is_contiguous()
}

/// Calls `$f::<E>(args)` with `E` the element type of `$kind` (f32 or bf16).
macro_rules! by_kind {
    ($kind:expr, $f:ident($($arg:expr),*)) => {
        match $kind {
            Kind::BFloat16 => $f::<u16>($($arg),*),
            _ => $f::<f32>($($arg),*),
        }
    };
}

/// The elements of `t`.
///
/// # Safety
/// `t` is a contiguous CPU tensor whose dtype `E` stands for, and nothing
/// writes to it while the slice lives.
unsafe fn elements<E>(t: &Tensor) -> &[E] {
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const E, t.numel()) }
}

/// The elements of `t`, for writing.
///
/// # Safety
/// As [`elements`], and nothing else reads or writes `t` meanwhile.
#[allow(clippy::mut_from_ref)]
unsafe fn elements_mut<E>(t: &Tensor) -> &mut [E] {
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut E, t.numel()) }
}

/// A fresh tensor of `size` with `like`'s dtype on the CPU.
fn empty_like_kind(like: &Tensor, size: &[i64]) -> Tensor {
    Tensor::empty(size, (like.kind(), Device::Cpu))
}

/// `e^x` in f32 without a libm call, so that loops over it vectorise:
/// `2^n · e^r` with `n = round(x / ln 2)` and `|r| ≤ ln 2 / 2`, where the
/// Taylor series to `r^7` is within 1e-8 relative (below f32's resolution).
/// Inputs are clamped to [-87, 88], the range of normal f32 results, and
/// results below it are 0 (so `exp(-inf) = 0`); NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let underflows = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // The low mantissa bits of `shifted` hold n; 2^n is n + 127 in the exponent.
    let n_int = shifted.to_bits() as i32 - SHIFT.to_bits() as i32;
    let e = p * f32::from_bits(((n_int + 127) << 23) as u32);
    if underflows {
        0.0
    } else {
        e
    }
}

/// `lanes` folded pairwise by `f` (4 vector steps, not 15 dependent scalar ones).
#[inline(always)]
fn fold_lanes(mut lanes: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] = f(lanes[i], lanes[i + width]);
        }
        width /= 2;
    }
    lanes[0]
}

/// SwiGLU's `silu(gate) · up` of `pre [.., 2·d_mlp]` (gate first, then up) →
/// `[.., d_mlp]`. `silu(gate)` is rounded to the dtype before the product, as
/// it is when libtorch stores it.
pub fn silu_mul(pre: &Tensor) -> Tensor {
    let mut size = pre.size();
    let d = size.last().copied().unwrap_or(0) / 2;
    if let Some(last) = size.last_mut() {
        *last = d;
    }
    let out = empty_like_kind(pre, &size);
    by_kind!(pre.kind(), silu_mul_typed(pre, &out, d as usize));
    out
}

fn silu_mul_typed<E: Element>(pre: &Tensor, out: &Tensor, d: usize) {
    // SAFETY: `applies` holds for `pre` (the caller's contract) and `out` is
    // fresh, of the same dtype.
    let (pre, out) = unsafe { (elements::<E>(pre), SharedMut::new(elements_mut::<E>(out))) };
    let rows = pre.len() / (2 * d).max(1);
    for_each_part(rows, 4, |part| {
        let pre = &pre[part.start * 2 * d..part.end * 2 * d];
        // SAFETY: parts are disjoint.
        silu_mul_rows::<E>(pre, d, unsafe { out.part(part.start * d..part.end * d) });
    });
}

vectorized_fn! {
    fn silu_mul_rows[E: Element](pre: &[E], d: usize, out: &mut [E]) {
        for (row, dst) in pre.chunks_exact(2 * d).zip(out.chunks_exact_mut(d)) {
            let (gate, up) = row.split_at(d);
            for ((o, g), u) in dst.iter_mut().zip(gate).zip(up) {
                let g = g.widen();
                let act = E::round(g / (1.0 + exp(-g)));
                *o = E::narrow(act * u.widen());
            }
        }
    }
}

/// RMSNorm of `x [.., d]` with gain `w [d]`: the mean square in f32, the
/// normalised value rounded to the dtype, then times the gain (transformers'
/// `LlamaRMSNorm`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let out = empty_like_kind(x, &x.size());
    let w = w.to_kind(x.kind()).contiguous();
    by_kind!(x.kind(), rms_norm_typed(x, &w, eps as f32, &out));
    out
}

fn rms_norm_typed<E: Element>(x: &Tensor, w: &Tensor, eps: f32, out: &Tensor) {
    // SAFETY: `applies` holds for `x`; `w` was made contiguous in the same
    // dtype; `out` is fresh.
    let (x, w, out) = unsafe {
        (
            elements::<E>(x),
            elements::<E>(w),
            SharedMut::new(elements_mut::<E>(out)),
        )
    };
    let d = w.len();
    for_each_part(x.len() / d.max(1), 16, |part| {
        let x = &x[part.start * d..part.end * d];
        // SAFETY: parts are disjoint.
        rms_norm_rows::<E>(x, w, eps, unsafe { out.part(part.start * d..part.end * d) });
    });
}

vectorized_fn! {
    /// RMSNorm of each row of `x [rows, d]` with gain `w [d]` into `out`:
    /// `x · rsqrt(mean x² + eps)` in f32, stored in `E`, then times the gain.
    pub(crate) fn rms_norm_rows[E: Element](x: &[E], w: &[E], eps: f32, out: &mut [E]) {
        let d = w.len();
        for (src, dst) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mut lanes = [0f32; LANES];
            let chunks = src.chunks_exact(LANES);
            let tail: f32 = chunks.remainder().iter().map(|v| v.widen() * v.widen()).sum();
            for chunk in chunks {
                for (acc, v) in lanes.iter_mut().zip(chunk) {
                    *acc += v.widen() * v.widen();
                }
            }
            let mean = (fold_lanes(lanes, |a, b| a + b) + tail) / d as f32;
            let inv = 1.0 / (mean + eps).sqrt();
            for ((o, v), g) in dst.iter_mut().zip(src).zip(w) {
                *o = E::narrow(E::round(v.widen() * inv) * g.widen());
            }
        }
    }
}

/// Softmax over the keys of causal attention scores, in place.
/// `scores [groups, rows, seq]` holds raw `q·k` products; row `r` is the
/// query at position `r % seq` (the heads of a group stacked along the rows).
/// Scores are multiplied by `scale` (> 0) first, and keys after the query get 0.
pub fn causal_softmax_(scores: &Tensor, seq: usize, scale: f64) {
    by_kind!(
        scores.kind(),
        causal_softmax_typed(scores, seq, scale as f32)
    );
}

fn causal_softmax_typed<E: Element>(scores: &Tensor, seq: usize, scale: f32) {
    // SAFETY: `applies` holds for `scores`, which the caller owns alone.
    let scores = SharedMut::new(unsafe { elements_mut::<E>(scores) });
    let rows = scores.len() / seq.max(1);
    for_each_part(rows, 64, |part| {
        let mut exps = vec![0f32; seq];
        // SAFETY: parts are disjoint.
        let rows = unsafe { scores.part(part.start * seq..part.end * seq) };
        causal_softmax_rows::<E>(rows, part.start, seq, scale, &mut exps);
    });
}

vectorized_fn! {
    fn causal_softmax_rows[E: Element](
        rows: &mut [E],
        first_row: usize,
        seq: usize,
        scale: f32,
        exps: &mut [f32],
    ) {
        let hide = E::narrow(f32::NEG_INFINITY);
        for (row, x) in (first_row..).zip(rows.chunks_exact_mut(seq)) {
            let visible = row % seq + 1;
            // Whole vectors up to the one holding the last visible key, its
            // hidden keys set to -inf (weight 0), rather than a scalar tail
            // per row; only a length that is no multiple of 16 leaves a tail.
            let end = visible.next_multiple_of(LANES).min(seq);
            let (body, hidden) = x.split_at_mut(end);
            body[visible..].fill(hide);
            let mut lanes = [f32::NEG_INFINITY; LANES];
            let chunks = body.chunks_exact(LANES);
            let tail = chunks
                .remainder()
                .iter()
                .fold(f32::NEG_INFINITY, |m, v| m.max(v.widen()));
            for chunk in chunks {
                for (m, v) in lanes.iter_mut().zip(chunk) {
                    *m = m.max(v.widen());
                }
            }
            let max = fold_lanes(lanes, f32::max).max(tail) * scale;
            let exps = &mut exps[..end];
            for (e, v) in exps.iter_mut().zip(body.iter()) {
                *e = exp(v.widen() * scale - max);
            }
            let mut lanes = [0f32; LANES];
            let chunks = exps.chunks_exact(LANES);
            let tail: f32 = chunks.remainder().iter().sum();
            for chunk in chunks {
                for (s, e) in lanes.iter_mut().zip(chunk) {
                    *s += e;
                }
            }
            let inv = 1.0 / (fold_lanes(lanes, |a, b| a + b) + tail);
            for (v, e) in body.iter_mut().zip(exps.iter()) {
                *v = E::narrow(e * inv);
            }
            hidden.fill(E::narrow(0.0));
        }
    }
}

/// Head counts and width of an attention layer.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
}

/// Rotary cos/sin per position, `[rows, seq, rotary_dim / 2]` f32 (rows is
/// the batch, or 1 when every sequence has the same positions), holding
/// values of the model's dtype as transformers' tables do.
pub struct HostRotary {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub rows: usize,
    pub seq: usize,
    pub half: usize,
}

impl HostRotary {
    /// cos and sin `[half]` of position `pos` (of this call) in sequence `batch_row`.
    pub fn at(&self, batch_row: usize, pos: usize) -> (&[f32], &[f32]) {
        let row = if self.rows == 1 { 0 } else { batch_row };
        let at = (row * self.seq + pos) * self.half;
        (&self.cos[at..at + self.half], &self.sin[at..at + self.half])
    }
}

/// Queries, keys and values from a fused projection `qkv [batch, seq,
/// (n_heads + 2·n_kv_heads)·d_head]`, with the rotary embedding applied to
/// queries and keys (`rotate_half` layout, the first `2·half` dimensions of
/// each head), as contiguous `[batch, heads, seq, d_head]` tensors. Each rotary
/// product and sum is rounded to the dtype, as transformers' `q·cos +
/// rotate_half(q)·sin` stores them.
pub fn split_heads(
    qkv: &Tensor,
    heads: HeadShape,
    rotary: Option<&HostRotary>,
) -> (Tensor, Tensor, Tensor) {
    let size = qkv.size();
    let (batch, seq) = (size[0], size[1]);
    let dh = heads.d_head as i64;
    let q = empty_like_kind(qkv, &[batch, heads.n_heads as i64, seq, dh]);
    let k = empty_like_kind(qkv, &[batch, heads.n_kv_heads as i64, seq, dh]);
    let v = empty_like_kind(qkv, &[batch, heads.n_kv_heads as i64, seq, dh]);
    by_kind!(
        qkv.kind(),
        split_heads_typed(qkv, heads, rotary, seq as usize, [&q, &k, &v])
    );
    (q, k, v)
}

fn split_heads_typed<E: Element>(
    qkv: &Tensor,
    heads: HeadShape,
    rotary: Option<&HostRotary>,
    seq: usize,
    outs: [&Tensor; 3],
) {
    // SAFETY: `applies` holds for `qkv`; the outputs are fresh, of its dtype.
    let src = unsafe { elements::<E>(qkv) };
    let outs = outs.map(|t| SharedMut::new(unsafe { elements_mut::<E>(t) }));
    let width = (heads.n_heads + 2 * heads.n_kv_heads) * heads.d_head;
    for_each_part(src.len() / width.max(1), 8, |part| {
        split_tokens::<E>(src, heads, rotary, seq, part, &outs);
    });
}

vectorized_fn! {
    fn split_tokens[E: Element](
        src: &[E],
        heads: HeadShape,
        rotary: Option<&HostRotary>,
        seq: usize,
        tokens: std::ops::Range<usize>,
        outs: &[SharedMut<E>; 3],
    ) {
        let HeadShape { n_heads, n_kv_heads, d_head: dh } = heads;
        let width = (n_heads + 2 * n_kv_heads) * dh;
        let [q, k, v] = outs;
        for token in tokens {
            let (b, pos) = (token / seq, token % seq);
            let row = &src[token * width..(token + 1) * width];
            let table = rotary.map(|r| r.at(b, pos));
            // (destination, its heads, first head's offset in the row, rotated)
            for (dst, n, offset, rotated) in [
                (q, n_heads, 0, true),
                (k, n_kv_heads, n_heads * dh, true),
                (v, n_kv_heads, (n_heads + n_kv_heads) * dh, false),
            ] {
                for h in 0..n {
                    let x = &row[offset + h * dh..offset + (h + 1) * dh];
                    let at = ((b * n + h) * seq + pos) * dh;
                    // SAFETY: every (b, h, pos) slot belongs to one token.
                    let out = unsafe { dst.part(at..at + dh) };
                    match table.filter(|_| rotated) {
                        Some((cos, sin)) => rotate::<E>(x, cos, sin, out),
                        None => out.copy_from_slice(x),
                    }
                }
            }
        }
    }
}

/// One head through the rotary embedding: for `i < half`,
/// `out[i] = x[i]·cos[i] − x[i+half]·sin[i]` and
/// `out[i+half] = x[i+half]·cos[i] + x[i]·sin[i]`; dimensions past `2·half`
/// pass through.
#[inline(always)]
fn rotate<E: Element>(x: &[E], cos: &[f32], sin: &[f32], out: &mut [E]) {
    let half = cos.len();
    let (x1, rest) = x.split_at(half);
    let (x2, passed) = rest.split_at(half);
    let (o1, rest) = out.split_at_mut(half);
    let (o2, o_passed) = rest.split_at_mut(half);
    // Zipped iterators rather than indices: no bounds checks, so the loop vectorises.
    let pairs = o1.iter_mut().zip(o2.iter_mut()).zip(x1.iter().zip(x2));
    for (((o1, o2), (a, b)), (c, s)) in pairs.zip(cos.iter().zip(sin)) {
        let (a, b) = (a.widen(), b.widen());
        *o1 = E::narrow(E::round(a * c) + E::round(-b * s));
        *o2 = E::narrow(E::round(b * c) + E::round(a * s));
    }
    o_passed.copy_from_slice(passed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[])
    }

    #[test]
    fn exp_matches_the_library_exp_to_f32_precision() {
        let mut worst = 0f64;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "{worst}");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1e4) == 0.0 && exp(f32::NEG_INFINITY) == 0.0 && exp(1e4) > 1e38);
    }

    #[test]
    fn silu_mul_matches_libtorch_in_both_dtypes() {
        tch::manual_seed(1);
        let pre = Tensor::randn([3, 5, 2 * 37], (Kind::Float, Device::Cpu)) * 4.0;
        for kind in [Kind::Float, Kind::BFloat16] {
            let pre = pre.to_kind(kind);
            let (gate, up) = (pre.narrow(2, 0, 37), pre.narrow(2, 37, 37));
            let reference = gate.silu() * up;
            let fused = silu_mul(&pre);
            assert_eq!(fused.size(), [3, 5, 37]);
            assert_eq!(fused.kind(), kind);
            // Relative to the value: bf16 differs at most by its last bit
            // where `exp` does.
            let rel = ((&fused - &reference).to_kind(Kind::Float).abs()
                / (reference.to_kind(Kind::Float).abs() + 1e-3))
                .max()
                .double_value(&[]);
            let tol = if kind == Kind::Float { 1e-6 } else { 8e-3 };
            assert!(rel <= tol, "{kind:?}: {rel}");
        }
    }

    #[test]
    fn rms_norm_matches_the_libtorch_chain() {
        tch::manual_seed(2);
        let x = Tensor::randn([4, 3, 40], (Kind::Float, Device::Cpu)) * 3.0;
        let w = Tensor::randn([40], (Kind::Float, Device::Cpu));
        for kind in [Kind::Float, Kind::BFloat16] {
            let (x, w) = (x.to_kind(kind), w.to_kind(kind));
            let xf = x.to_kind(Kind::Float);
            let var = xf.square().mean_dim(-1, true, Kind::Float);
            let reference = (xf * (var + 1e-5).rsqrt()).to_kind(kind) * &w;
            let diff = close(&rms_norm(&x, &w, 1e-5), &reference);
            // bf16: at most one rounding step apart (sum order of the mean).
            let tol = if kind == Kind::Float { 1e-5 } else { 0.07 };
            assert!(diff <= tol, "{kind:?}: {diff}");
        }
    }

    #[test]
    fn causal_softmax_matches_masked_softmax() {
        tch::manual_seed(3);
        let (groups, rep, seq) = (3, 2, 21);
        let scores = Tensor::randn([groups, rep * seq, seq], (Kind::Float, Device::Cpu)) * 5.0;
        let q_pos = Tensor::arange(seq, (Kind::Int64, Device::Cpu))
            .repeat([rep])
            .view([rep * seq, 1]);
        let k_pos = Tensor::arange(seq, (Kind::Int64, Device::Cpu)).view([1, seq]);
        let masked = (&scores * 0.25).masked_fill(&k_pos.gt_tensor(&q_pos), f64::NEG_INFINITY);
        let reference = masked.softmax(-1, Kind::Float);
        for kind in [Kind::Float, Kind::BFloat16] {
            // A copy: `to_kind` to the same dtype would alias `scores`.
            let fused = scores.to_kind(kind).copy();
            causal_softmax_(&fused, seq as usize, 0.25);
            let tol = if kind == Kind::Float { 1e-6 } else { 4e-3 };
            let diff = close(&fused, &reference);
            assert!(diff <= tol, "{kind:?}: {diff}");
            // Keys after the query weigh exactly nothing, also within the
            // vector that holds the last visible key.
            let hidden = fused
                .to_kind(Kind::Float)
                .masked_select(&k_pos.gt_tensor(&q_pos).expand_as(&fused));
            assert_eq!(hidden.abs().max().double_value(&[]), 0.0, "{kind:?}");
        }
    }

    #[test]
    fn every_cpu_path_gives_the_portable_paths_bits() {
        use crate::machine::cpu::{available, with_tier, CpuTier};
        tch::manual_seed(5);
        let pre = Tensor::randn([2, 7, 2 * 45], (Kind::Float, Device::Cpu)) * 3.0;
        let x = Tensor::randn([3, 5, 45], (Kind::Float, Device::Cpu)) * 3.0;
        let gain = Tensor::randn([45], (Kind::Float, Device::Cpu));
        let scores = Tensor::randn([2, 2 * 19, 19], (Kind::Float, Device::Cpu)) * 4.0;
        let qkv = Tensor::randn([2, 19, 8 * 16], (Kind::Float, Device::Cpu));
        let angles: Vec<f32> = (0..19 * 8).map(|i| i as f32 * 0.37).collect();
        let table = HostRotary {
            cos: angles.iter().map(|a| a.cos()).collect(),
            sin: angles.iter().map(|a| a.sin()).collect(),
            rows: 1,
            seq: 19,
            half: 8,
        };
        let heads = HeadShape {
            n_heads: 4,
            n_kv_heads: 2,
            d_head: 16,
        };
        for kind in [Kind::Float, Kind::BFloat16] {
            let run = || {
                let softmax = scores.to_kind(kind).copy();
                causal_softmax_(&softmax, 19, 0.3);
                let (q, k, v) = split_heads(&qkv.to_kind(kind), heads, Some(&table));
                [
                    silu_mul(&pre.to_kind(kind)),
                    rms_norm(&x.to_kind(kind), &gain, 1e-5),
                    softmax,
                    q,
                    k,
                    v,
                ]
            };
            let portable = with_tier(CpuTier::Portable, run);
            for tier in available() {
                for (i, (got, want)) in with_tier(tier, run).iter().zip(&portable).enumerate() {
                    assert_eq!(close(got, want), 0.0, "{tier} {kind:?} kernel {i}");
                }
            }
        }
    }

    #[test]
    fn split_heads_rotates_like_rotate_half() {
        tch::manual_seed(4);
        let (b, s, nh, nkv, dh, rot) = (2usize, 5usize, 4usize, 2usize, 8usize, 6usize);
        let half = rot / 2;
        let qkv = Tensor::randn(
            [b as i64, s as i64, ((nh + 2 * nkv) * dh) as i64],
            (Kind::Float, Device::Cpu),
        );
        // Sequence 1 starts two positions later than sequence 0.
        let positions: Vec<f32> = (0..b * s).map(|i| (i % s + 2 * (i / s)) as f32).collect();
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / (1 + i) as f32).collect();
        let angles: Vec<f32> = positions
            .iter()
            .flat_map(|p| inv.iter().map(move |f| p * f))
            .collect();
        let table = HostRotary {
            cos: angles.iter().map(|a| a.cos()).collect(),
            sin: angles.iter().map(|a| a.sin()).collect(),
            rows: b,
            seq: s,
            half,
        };
        let (q, k, v) = split_heads(
            &qkv,
            HeadShape {
                n_heads: nh,
                n_kv_heads: nkv,
                d_head: dh,
            },
            Some(&table),
        );
        // Reference: libtorch ops on the [b, heads, s, dh] views.
        let heads = |from: i64, n: i64| {
            qkv.narrow(2, from * dh as i64, n * dh as i64)
                .view([b as i64, s as i64, n, dh as i64])
                .transpose(1, 2)
        };
        let cos = Tensor::from_slice(&table.cos).view([b as i64, 1, s as i64, half as i64]);
        let sin = Tensor::from_slice(&table.sin).view([b as i64, 1, s as i64, half as i64]);
        let (cos, sin) = (Tensor::cat(&[&cos, &cos], 3), Tensor::cat(&[&sin, &sin], 3));
        let rotate_ref = |x: Tensor| {
            let r = x.narrow(3, 0, rot as i64);
            let (x1, x2) = (
                r.narrow(3, 0, half as i64),
                r.narrow(3, half as i64, half as i64),
            );
            let rotated = &r * &cos + Tensor::cat(&[x2.neg(), x1], 3) * &sin;
            Tensor::cat(&[rotated, x.narrow(3, rot as i64, (dh - rot) as i64)], 3)
        };
        assert!(close(&q, &rotate_ref(heads(0, nh as i64))) < 1e-6);
        assert!(close(&k, &rotate_ref(heads(nh as i64, nkv as i64))) < 1e-6);
        assert!(close(&v, &heads((nh + nkv) as i64, nkv as i64)) == 0.0);
        assert!(q.is_contiguous() && k.is_contiguous() && v.is_contiguous());
    }
}
