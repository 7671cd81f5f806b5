//! Causal self-attention kernels: the fused path through libtorch's
//! `scaled_dot_product_attention`, and the explicit path that materialises the
//! attention pattern when a hook wants to see or change it.

use tch::{Device, Kind, Tensor};

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
                let q_pos = Tensor::arange_start(past, seq_k, (Kind::Int64, device)).view([seq_q, 1]);
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
    let (explicit, causal) = match mask {
        AttentionMask::Causal => (None, true),
        AttentionMask::All => (None, false),
        AttentionMask::Explicit(m) => (Some(m), false),
    };
    Tensor::scaled_dot_product_attention(q, k, v, explicit, 0.0, causal, None, gqa)
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
    x.unsqueeze(2).expand([b, kv, rep, s, d], false).reshape([b, kv * rep, s, d])
}
