//! The libtorch math of one block: norms, attention (with the head split
//! and rotary embeddings) and the MLP, each hook point called where
//! TransformerLens calls it. Shapes: `[batch, seq, d_model]` in and out.

use tch::{Kind, Tensor};

use super::{Pass, Transformer};
use crate::error::Result;
use crate::hooks::{BlockSite, HookPoint};
use crate::model::config::{Activation, NormKind};
use crate::model::cpu::fused_ops::{self, HeadShape};
use crate::model::kv_cache::KvCache;
use crate::model::layers::attention::{
    apply_pattern, attention_pattern, causal_attention_bmm, fused_attention, AttentionMask,
};
use crate::model::layers::linear::linear;
use crate::model::layers::rotary::RotaryTables;
use crate::model::weights::{BlockWeights, NormWeights};

impl Transformer {
    pub(super) fn norm(&self, x: &Tensor, w: &NormWeights) -> Tensor {
        let d = [self.cfg.d_model];
        match self.cfg.norm {
            NormKind::LayerNorm => x.layer_norm(
                d,
                Some(&w.weight),
                w.bias.as_ref(),
                self.cfg.norm_eps,
                false,
            ),
            // Computed in f32 and cast back before the gain, as transformers does;
            // also faster than libtorch's `rms_norm` for bf16 on CPU.
            NormKind::RmsNorm if fused_ops::applies(x) => {
                fused_ops::rms_norm(x, &w.weight, self.cfg.norm_eps)
            }
            NormKind::RmsNorm => {
                let wide = if x.kind() == Kind::Double {
                    Kind::Double
                } else {
                    Kind::Float
                };
                let xf = x.to_kind(wide);
                let variance = xf.square().mean_dim(-1, true, wide);
                (xf * (variance + self.cfg.norm_eps).rsqrt()).to_kind(x.kind()) * &w.weight
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn block(
        &self,
        layer: usize,
        w: &BlockWeights,
        resid_pre: Tensor,
        mask: &AttentionMask,
        rotary: Option<&RotaryTables>,
        cache: Option<(&mut KvCache, usize)>,
        pass: &mut Pass,
    ) -> Result<Option<Tensor>> {
        let site = |s| HookPoint::Block(layer, s);
        let resid_pre = hook!(pass, site(BlockSite::ResidPre), resid_pre);
        let attn_in = hook!(
            pass,
            site(BlockSite::Ln1Normalized),
            self.norm(&resid_pre, &w.ln1)
        );
        let attn_out = match self.attention(layer, w, &attn_in, mask, rotary, cache, pass)? {
            Some(a) => a,
            None => return Ok(None),
        };
        let attn_out = hook!(pass, site(BlockSite::AttnOut), attn_out);
        let resid_mid = hook!(pass, site(BlockSite::ResidMid), &resid_pre + &attn_out);
        let mlp_in = if self.cfg.parallel_residual {
            self.norm(&resid_pre, &w.ln2)
        } else {
            self.norm(&resid_mid, &w.ln2)
        };
        let mlp_in = hook!(pass, site(BlockSite::Ln2Normalized), mlp_in);
        let mlp_out = match self.mlp(layer, w, &mlp_in, pass)? {
            Some(m) => m,
            None => return Ok(None),
        };
        let mlp_out = hook!(pass, site(BlockSite::MlpOut), mlp_out);
        let resid_post = hook!(pass, site(BlockSite::ResidPost), resid_mid + mlp_out);
        Ok(Some(resid_post))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        w: &BlockWeights,
        x: &Tensor,
        mask: &AttentionMask,
        rotary: Option<&RotaryTables>,
        cache: Option<(&mut KvCache, usize)>,
        pass: &mut Pass,
    ) -> Result<Option<Tensor>> {
        let c = &self.cfg;
        let (batch, seq) = (x.size()[0], x.size()[1]);
        // [batch, seq, (n_heads + 2·n_kv)·d_head]
        let qkv = linear(x, &w.qkv_w, w.qkv_b.as_ref());
        let q_width = c.n_heads * c.d_head;
        let site = |s| HookPoint::Block(layer, s);
        let qkv = if [BlockSite::AttnQ, BlockSite::AttnK, BlockSite::AttnV]
            .iter()
            .any(|&s| pass.wants(site(s)))
        {
            // TransformerLens's `[batch, seq, heads, d_head]`, before rotary.
            let kv_width = c.n_kv_heads * c.d_head;
            let part = |start: i64, width: i64, heads: i64| {
                qkv.narrow(2, start, width)
                    .reshape([batch, seq, heads, c.d_head])
            };
            let q = hook!(pass, site(BlockSite::AttnQ), part(0, q_width, c.n_heads));
            let k = hook!(
                pass,
                site(BlockSite::AttnK),
                part(q_width, kv_width, c.n_kv_heads)
            );
            let v = hook!(
                pass,
                site(BlockSite::AttnV),
                part(q_width + kv_width, kv_width, c.n_kv_heads)
            );
            Tensor::cat(
                &[
                    q.reshape([batch, seq, -1]),
                    k.reshape([batch, seq, -1]),
                    v.reshape([batch, seq, -1]),
                ],
                2,
            )
        } else {
            qkv
        };
        let (q, k, v) = self.split_heads(&qkv, rotary);
        let (q, k, v) = match cache {
            Some((cache, l)) => {
                let (k, v) = cache.append(l, &k, &v)?;
                (q.to_kind(self.cache_kind()), k, v)
            }
            None => (q, k, v),
        };
        let pattern_hook = HookPoint::Block(layer, BlockSite::AttnPattern);
        // [batch, n_heads, seq, d_head]
        let z = if pass.wants(pattern_hook) {
            let pattern = attention_pattern(&q, &k, mask);
            let pattern = hook!(pass, pattern_hook, pattern);
            apply_pattern(&pattern, &v)
        } else if self.prefers_bmm_attention(mask, seq) {
            causal_attention_bmm(&q, &k, &v)
        } else {
            fused_attention(&q, &k, &v, mask)
        };
        // [batch, seq, n_heads, d_head], TransformerLens's hook_z layout
        let z = z.transpose(1, 2).to_kind(self.kind);
        let z = hook!(pass, HookPoint::Block(layer, BlockSite::AttnZ), z);
        let result_hook = HookPoint::Block(layer, BlockSite::AttnResult);
        if pass.wants(result_hook) {
            // Each head's share of the output projection:
            // [batch, seq, heads, d_head] × [d_model, heads, d_head] → [batch, seq, heads, d_model].
            let w_o = w.out_w.reshape([c.d_model, c.n_heads, c.d_head]);
            let result = Tensor::einsum("bshd,mhd->bshm", &[&z, &w_o], None::<i64>);
            let result = hook!(pass, result_hook, result);
            let summed = result.sum_dim_intlist([2i64].as_slice(), false, result.kind());
            return Ok(Some(match &w.out_b {
                Some(b) => summed + b,
                None => summed,
            }));
        }
        let z = z.reshape([batch, seq, q_width]);
        Ok(Some(linear(&z, &w.out_w, w.out_b.as_ref())))
    }

    /// Queries `[batch, n_heads, seq, d_head]`, keys and values `[batch,
    /// n_kv_heads, seq, d_head]` from `qkv [batch, seq, (n_heads +
    /// 2·n_kv_heads)·d_head]`, queries and keys rotated.
    fn split_heads(&self, qkv: &Tensor, rotary: Option<&RotaryTables>) -> (Tensor, Tensor, Tensor) {
        let c = &self.cfg;
        let host_rotary = rotary.and_then(|t| t.host());
        if fused_ops::applies(qkv) && (self.rotary.is_none() || host_rotary.is_some()) {
            let shape = HeadShape {
                n_heads: c.n_heads as usize,
                n_kv_heads: c.n_kv_heads as usize,
                d_head: c.d_head as usize,
            };
            return fused_ops::split_heads(qkv, shape, host_rotary);
        }
        let (batch, seq) = (qkv.size()[0], qkv.size()[1]);
        let q_width = c.n_heads * c.d_head;
        let kv_width = c.n_kv_heads * c.d_head;
        // → [batch, heads, seq, d_head]
        let heads = |t: Tensor, n: i64| t.view([batch, seq, n, c.d_head]).transpose(1, 2);
        // Queries and keys are rotated together: half the ops of doing each.
        let mut qk = heads(
            qkv.narrow(2, 0, q_width + kv_width),
            c.n_heads + c.n_kv_heads,
        );
        if let (Some(r), Some(tables)) = (&self.rotary, rotary) {
            qk = r.apply(&qk, tables);
        }
        let q = qk.narrow(1, 0, c.n_heads);
        let k = qk.narrow(1, c.n_heads, c.n_kv_heads);
        let v = heads(qkv.narrow(2, q_width + kv_width, kv_width), c.n_kv_heads);
        (q, k, v)
    }

    fn mlp(
        &self,
        layer: usize,
        w: &BlockWeights,
        x: &Tensor,
        pass: &mut Pass,
    ) -> Result<Option<Tensor>> {
        let c = &self.cfg;
        let pre = linear(x, &w.mlp_in_w, w.mlp_in_b.as_ref());
        let act = |t: &Tensor| match c.activation {
            Activation::GeluTanh => t.gelu("tanh"),
            Activation::Gelu => t.gelu("none"),
            Activation::Silu => t.silu(),
        };
        // [batch, seq, d_mlp]
        let post = if c.gated_mlp && c.activation == Activation::Silu && fused_ops::applies(&pre) {
            fused_ops::silu_mul(&pre)
        } else if c.gated_mlp {
            let gate = pre.narrow(2, 0, c.d_mlp);
            let up = pre.narrow(2, c.d_mlp, c.d_mlp);
            act(&gate) * up
        } else {
            act(&pre)
        };
        let post = hook!(pass, HookPoint::Block(layer, BlockSite::MlpPost), post);
        Ok(Some(linear(&post, &w.mlp_out_w, w.mlp_out_b.as_ref())))
    }
}
