//! Causal self-attention kernels: the fused path through libtorch's
//! `scaled_dot_product_attention`, and the explicit path that materialises the
//! attention pattern when a hook wants to see or change it.

use tch::{Device, Kind, Tensor};

use crate::model::cpu::fused_ops;

/// Which keys each query may attend to in one forward call.
pub enum AttentionMask {
    /// Plain causal mask over this call's tokens (no cache, no padding).
    Causal,
    /// Every key visible (a single query after the cached past, no padding).
    All,
    /// `[batch or 1, 1, seq_q, seq_k]` boolean, true = may attend.
    Explicit(Tensor),
}

impl AttentionMask {
    /// The mask for `seq` new queries after `past` cached positions, given an
    /// optional key-padding mask `[batch, past + seq]` (1 = real token).
    pub fn build(past: i64, seq: i64, padding: Option<&Tensor>, device: Device) -> AttentionMask {
        match padding {
            None if past == 0 => AttentionMask::Causal,
            None if seq == 1 => AttentionMask::All,
            _ => {
                let total = past + seq;
                let q_pos = Tensor::arange_start(past, total, (Kind::Int64, device)).view([seq, 1]);
                let k_pos = Tensor::arange(total, (Kind::Int64, device)).view([1, total]);
                let causal = k_pos.le_tensor(&q_pos).view([1, 1, seq, total]);
                match padding {
                    None => AttentionMask::Explicit(causal),
                    Some(pad) => {
                        let keep = pad.to_device(device).to_kind(Kind::Bool);
                        let b = keep.size()[0];
                        let visible = causal.logical_and(&keep.view([b, 1, 1, total]));
                        // A padding query would see no key at all (NaN softmax); let every
                        // query see itself. Padding outputs are never used.
                        let diagonal = k_pos.eq_tensor(&q_pos).view([1, 1, seq, total]);
                        AttentionMask::Explicit(visible.logical_or(&diagonal))
                    }
                }
            }
        }
    }

    /// The mask as an explicit boolean tensor `[.., .., seq_q, seq_k]`.
    fn explicit(&self, seq_q: i64, seq_k: i64, device: Device) -> Option<Tensor> {
        match self {
            AttentionMask::All => None,
            AttentionMask::Explicit(m) => Some(m.shallow_clone()),
            AttentionMask::Causal => {
                let past = seq_k - seq_q;
                let q_pos =
                    Tensor::arange_start(past, seq_k, (Kind::Int64, device)).view([seq_q, 1]);
                let k_pos = Tensor::arange(seq_k, (Kind::Int64, device)).view([1, seq_k]);
                Some(k_pos.le_tensor(&q_pos).view([1, 1, seq_q, seq_k]))
            }
        }
    }
}

/// `q [batch, n_heads, seq_q, d_head]`, `k`/`v [batch, n_kv_heads, seq_k, d_head]`
/// → `[batch, n_heads, seq_q, d_head]`, through the fused kernel.
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask) -> Tensor {
    // Grouped-query attention is native to the kernel: no copies of repeated heads.
    let gqa = q.size()[1] != k.size()[1];
    if matches!(mask, AttentionMask::All) && q.size()[2] == 1 && q.size()[0] > 1 {
        return single_query_attention(q, k, v);
    }
    let (explicit, causal) = match mask {
        AttentionMask::Causal => (None, true),
        AttentionMask::All => (None, false),
        AttentionMask::Explicit(m) => (Some(m), false),
    };
    Tensor::scaled_dot_product_attention(q, k, v, explicit, 0.0, causal, None, gqa)
}

/// One new query per sequence against every cached key (a batched decode
/// step), as two batched matmuls with the query heads grouped by their
/// key/value head: for several sequences this takes ~70% of the time of
/// libtorch's fused CPU kernel, which is faster only for a single sequence.
fn single_query_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (b, h, d) = (q.size()[0], q.size()[1], q.size()[3]);
    let (kv, len) = (k.size()[1], k.size()[2]);
    let q = q.reshape([b * kv, h / kv, d]) * (1.0 / (d as f64).sqrt());
    let k = k.reshape([b * kv, len, d]);
    let v = v.reshape([b * kv, len, d]);
    q.bmm(&k.transpose(1, 2))
        .softmax(-1, q.kind())
        .bmm(&v)
        .view([b, h, 1, d])
}

/// Causal attention over this call's tokens through two batched matmuls, for
/// CPU: in bf16/f16 it takes about half the time of libtorch's fused kernel
/// (whose inner products do not use the bf16 matmul units), in f32 over short
/// sequences somewhat less. The queries
/// of the heads that share a key/value head are stacked along the sequence, so
/// grouped-query attention needs no copies of repeated heads.
/// `q [batch, n_heads, seq, d_head]`, `k`/`v [batch, n_kv_heads, seq, d_head]`.
pub fn causal_attention_bmm(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (b, h, s, d) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
    let kv = k.size()[1];
    let rep = h / kv;
    let q = q.contiguous().view([b * kv, rep * s, d]);
    let k = k.contiguous().view([b * kv, s, d]);
    let v = v.contiguous().view([b * kv, s, d]);
    let scale = 1.0 / (d as f64).sqrt();
    if fused_ops::applies(&q) && fused_ops::applies(&k) {
        // [b·kv, rep·s, s], softmaxed in place over the visible keys.
        let scores = q.bmm(&k.transpose(1, 2));
        fused_ops::causal_softmax_(&scores, s as usize, scale);
        return scores.bmm(&v).view([b, h, s, d]);
    }
    let q_pos = Tensor::arange(s, (Kind::Int64, q.device())).view([s, 1]);
    let k_pos = Tensor::arange(s, (Kind::Int64, q.device())).view([1, s]);
    // [rep·s, s] additive mask: 0 where visible, -inf above the diagonal.
    let mask = Tensor::zeros([s, s], (q.kind(), q.device()))
        .masked_fill(&k_pos.gt_tensor(&q_pos), f64::NEG_INFINITY)
        .repeat([rep, 1]);
    // scores = mask + scale · q kᵀ, in one call: [b·kv, rep·s, s]
    let scores = mask.baddbmm(&q, &k.transpose(1, 2), 1.0, scale);
    scores.softmax(-1, q.kind()).bmm(&v).view([b, h, s, d])
}

/// The attention probabilities `[batch, n_heads, seq_q, seq_k]`, softmax in f32.
pub fn attention_pattern(q: &Tensor, k: &Tensor, mask: &AttentionMask) -> Tensor {
    let (n_heads, d_head) = (q.size()[1], q.size()[3]);
    let k = repeat_kv(k, n_heads / k.size()[1]);
    let scores = q.matmul(&k.transpose(-1, -2)).to_kind(Kind::Float) / (d_head as f64).sqrt();
    let scores = match mask.explicit(q.size()[2], k.size()[2], q.device()) {
        Some(m) => scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY),
        None => scores,
    };
    scores.softmax(-1, Kind::Float).to_kind(q.kind())
}

/// Applies a pattern to the values: `[batch, n_heads, seq_q, d_head]`.
pub fn apply_pattern(pattern: &Tensor, v: &Tensor) -> Tensor {
    let v = repeat_kv(v, pattern.size()[1] / v.size()[1]);
    pattern.matmul(&v)
}

/// Repeats each key/value head `rep` times (head `h` of the queries uses
/// key/value head `h / rep`), as grouped-query attention defines.
fn repeat_kv(x: &Tensor, rep: i64) -> Tensor {
    if rep == 1 {
        return x.shallow_clone();
    }
    let size = x.size();
    let (b, kv, s, d) = (size[0], size[1], size[2], size[3]);
    x.unsqueeze(2)
        .expand([b, kv, rep, s, d], false)
        .reshape([b, kv * rep, s, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qkv(b: i64, h: i64, kv: i64, s: i64) -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(3);
        let o = (Kind::Float, Device::Cpu);
        (
            Tensor::randn([b, h, s, 16], o),
            Tensor::randn([b, kv, s, 16], o),
            Tensor::randn([b, kv, s, 16], o),
        )
    }

    #[test]
    fn bmm_attention_equals_the_fused_kernel_with_grouped_heads() {
        for (h, kv) in [(4, 4), (6, 2), (4, 1)] {
            let (q, k, v) = qkv(2, h, kv, 9);
            let fused = fused_attention(&q, &k, &v, &AttentionMask::Causal);
            let bmm = causal_attention_bmm(&q, &k, &v);
            let diff = (&fused - &bmm).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "h={h} kv={kv}: {diff}");
        }
    }

    #[test]
    fn explicit_pattern_equals_the_fused_kernel_under_every_mask() {
        let (q, k, v) = qkv(2, 4, 2, 7);
        let pad = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]).view([2, 7]);
        for mask in [
            AttentionMask::Causal,
            AttentionMask::build(0, 7, Some(&pad), Device::Cpu),
        ] {
            let fused = fused_attention(&q, &k, &v, &mask);
            let explicit = apply_pattern(&attention_pattern(&q, &k, &mask), &v);
            let diff = (&fused - &explicit).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{diff}");
        }
        // One query after a cached past sees every key.
        let (q1, k1, v1) = (q.narrow(2, 6, 1), k.shallow_clone(), v.shallow_clone());
        let all = AttentionMask::build(6, 1, None, Device::Cpu);
        let diff = (fused_attention(&q1, &k1, &v1, &all)
            - fused_attention(&q, &k, &v, &AttentionMask::Causal).narrow(2, 6, 1))
        .abs()
        .max()
        .double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }
}
