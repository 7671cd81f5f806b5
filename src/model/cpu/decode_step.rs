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

use super::fused_ops::{rms_norm_rows, HostRotary};
use super::gemv::{round_bf16, Element, WeightSlice};
use super::host::narrow_to_bf16;
pub use super::host::{
    host_f32, host_i64, host_to_tensor, weight_slice, HostBlock, HostCache, HostModel, HostNorm,
};
use super::step_ops::{
    activate_run, add_into, attend_head, rotate_head, round_all, REDUNDANT_ACTIVATION_ROWS,
};
use super::team::{Readers, Team};
use crate::error::{Error, Result};
use crate::hooks::{BlockEdits, BlockSite, ProductWeights, RowProducts};
use crate::model::config::{Activation, ModelConfig, NormKind};

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

/// The team's products, for interventions that compute their row edits
/// (an SAE's encoder over the step's rows, shared out like a block's).
struct TeamProducts<'a, 'b>(&'a Team<'b>);

impl RowProducts for TeamProducts<'_, '_> {
    fn product(&self, x: &[f32], m: usize, w: ProductWeights) -> Vec<f32> {
        let w = match w {
            ProductWeights::F32(w) => WeightSlice::F32(w),
            ProductWeights::Bf16(w) => WeightSlice::Bf16(w),
        };
        self.0.product(x, m, w, None, Readers::All)
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
                    out.iter().map(|b| Element::widen(*b)).collect()
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

    /// Stores `x` in the model's precision.
    fn round_one(&self, x: f32) -> f32 {
        if self.bf16 {
            round_bf16(x)
        } else {
            x
        }
    }

    /// One block for every row of `resid [batch, d_model]`, in place; writes
    /// this position's keys and values into the block's `cache` layer.
    /// `edits` (interventions) change the residual-stream sites on the way.
    pub fn block(
        &self,
        team: &Team,
        cfg: &ModelConfig,
        w: &HostBlock,
        cache: &HostCache,
        resid: &mut Vec<f32>,
        edits: &BlockEdits,
    ) {
        let round = |x| self.round_one(x);
        let products = &TeamProducts(team);
        let d = cfg.d_model as usize;
        edits.apply(BlockSite::ResidPre, resid, d, round, products);
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
        let mut z = self.attend(team, &qkv, cache, (n_heads, n_kv, dh));
        edits.apply(BlockSite::AttnZ, &mut z, q_width, round, products);
        let mut attn_out = self.linear(team, (&z, rows), w.out_w, w.out_b, Readers::All);
        edits.apply(BlockSite::AttnOut, &mut attn_out, d, round, products);
        let mut resid_mid = self.add(resid, &attn_out);
        edits.apply(BlockSite::ResidMid, &mut resid_mid, d, round, products);
        let mlp_in = if cfg.parallel_residual {
            self.norm(cfg, &w.ln2, resid)
        } else {
            self.norm(cfg, &w.ln2, &resid_mid)
        };
        let pre = self.linear(team, (&mlp_in, rows), w.mlp_in_w, w.mlp_in_b, Readers::All);
        let post = self.activate(team, cfg, &pre);
        let mut mlp_out = self.linear(team, (&post, rows), w.mlp_out_w, w.mlp_out_b, Readers::All);
        edits.apply(BlockSite::MlpOut, &mut mlp_out, d, round, products);
        *resid = self.add(&resid_mid, &mlp_out);
        edits.apply(BlockSite::ResidPost, resid, d, round, products);
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
