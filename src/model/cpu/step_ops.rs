//! The per-row kernels of the fused decode step: one head's attention over
//! its cached and new keys, the MLP activation, residual adds and rotary
//! rotation, each rounding where the libtorch path stores a bf16 tensor.

use super::fused_ops::exp;
use super::gemv::round_bf16;
use crate::model::config::Activation;
use crate::vectorized_fn;

/// `a · b` over 16 partial sums, which the compiler keeps in vector registers.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
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
pub(super) const REDUNDANT_ACTIVATION_ROWS: usize = 8;

/// Cached keys and values `[past, d_head]` of one (sequence, kv head), and
/// which of them the query may see (`None`: all).
pub(super) type History<'k> = (&'k [f32], &'k [f32], Option<&'k [bool]>);

vectorized_fn! {
    /// `out = Σ_t p_t·v_t` with `p = softmax(scale · q·k_t)` over the visible
    /// cached positions, then this call's visible `(key, value)` pairs `new`.
    /// `scores` has room for all of them.
    pub(super) fn attend_head['k](
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
    pub(super) fn activate_run[](
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
    pub(super) fn round_all[](bf16: bool, xs: &mut [f32]) {
        if bf16 {
            xs.iter_mut().for_each(|x| *x = round_bf16(*x));
        }
    }
}

vectorized_fn! {
    /// `out = a + b`, rounded as [`round_all`] does.
    pub(super) fn add_into[](a: &[f32], b: &[f32], bf16: bool, out: &mut [f32]) {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = if bf16 { round_bf16(x + y) } else { x + y };
        }
    }
}

vectorized_fn! {
    /// Rotates `head` (half-split layout, `2·cos.len()` rotated dimensions)
    /// by the angles whose cos and sin are given: `x·cos + rotate_half(x)·sin`,
    /// each product stored in the model's precision as in the libtorch path.
    pub(super) fn rotate_head[](head: &mut [f32], cos: &[f32], sin: &[f32], bf16: bool) {
        let r = |v: f32| if bf16 { round_bf16(v) } else { v };
        let (first, second) = head.split_at_mut(cos.len());
        for (((x1, x2), c), s) in first.iter_mut().zip(second.iter_mut()).zip(cos).zip(sin) {
            let (a, b) = (*x1, *x2);
            *x1 = r(r(a * c) + r(-b * s));
            *x2 = r(r(b * c) + r(a * s));
        }
    }
}
