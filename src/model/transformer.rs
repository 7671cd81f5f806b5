//! The one transformer. GPT-2, the Llama family and GPT-NeoX differ only in
//! their [`ModelConfig`]; the forward pass calls the hook points of
//! [`crate::hooks`] at every site and can stop after the last one it needs.
//!
//! Shapes: `batch` sequences of `seq` new tokens after `past` cached ones.

use std::cell::OnceCell;

use tch::{Device, Kind, Tensor};

use super::attention::{
    apply_pattern, attention_pattern, causal_attention_bmm, fused_attention, AttentionMask,
};
use super::config::{Activation, ModelConfig, NormKind, PositionKind};
use super::decode_step::{self, DecodeStep, HostCache, HostModel};
use super::fused_ops::{self, HeadShape};
use super::kv_cache::KvCache;
use super::linear::linear;
use super::rotary::{Rotary, RotaryTables};
use super::team;
use super::weights::{BlockWeights, ModelWeights, NormWeights};
use crate::error::{Error, Result};
use crate::hooks::{BlockSite, HookContext, HookPoint, Hooks};

/// The residual stream between blocks: a tensor, or host rows while
/// consecutive blocks run the fused decode step.
enum Residual {
    Tensor(Tensor),
    /// `[batch·seq, d_model]` f32 rows holding values of the model's dtype.
    Host(Vec<f32>),
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// `[batch, seq, vocab]`
    All,
    /// `[batch, 1, vocab]`, the last position only (generation).
    Last,
}

/// Where the forward pass ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAt {
    /// Run every block and the unembedding.
    Logits(LogitsFor),
    /// Return right after this hook point has run (no logits).
    After(HookPoint),
}

/// The inputs of one forward call.
pub struct ForwardInput<'a> {
    /// `[batch, seq]` int64 token ids.
    pub tokens: &'a Tensor,
    /// `[batch, seq]` absolute positions; default `past..past+seq` for every row.
    pub positions: Option<&'a Tensor>,
    /// `[batch, past + seq]` key-padding mask, 1 for real tokens, 0 for padding.
    pub attention_mask: Option<&'a Tensor>,
    /// Start at block `L` with this residual `[batch, seq, d_model]` as its
    /// `hook_resid_pre`, skipping the embedding and earlier blocks
    /// (TransformerLens's `start_at_layer`). `tokens` still gives the shape.
    pub start_at: Option<(usize, &'a Tensor)>,
}

impl<'a> ForwardInput<'a> {
    pub fn tokens(tokens: &'a Tensor) -> Self {
        ForwardInput {
            tokens,
            positions: None,
            attention_mask: None,
            start_at: None,
        }
    }
}

/// A loaded model on one device in one dtype.
pub struct Transformer {
    cfg: ModelConfig,
    weights: ModelWeights,
    rotary: Option<Rotary>,
    device: Device,
    kind: Kind,
    /// Decode steps may run blocks without hooks through [`DecodeStep`].
    fused_decode: bool,
    /// The weights as the fused step reads them, taken on its first use
    /// (`None`: they cannot be; see [`Transformer::host_model`]).
    host_model: OnceCell<Option<HostModel<'static>>>,
}

/// Runs the hook set at `$hook` on `$x`; returns early when the forward stops there.
macro_rules! hook {
    ($pass:expr, $hook:expr, $x:expr) => {
        match $pass.at($hook, $x)? {
            Some(t) => t,
            None => return Ok(None),
        }
    };
}

/// The per-call state shared by every hook site.
struct Pass<'h, 'a> {
    hooks: &'h mut Hooks<'a>,
    ctx: HookContext<'h>,
    stop: StopAt,
}

impl Pass<'_, '_> {
    fn wants(&self, hook: HookPoint) -> bool {
        self.hooks.wants(hook) || self.stop == StopAt::After(hook)
    }

    /// Whether any hook point of block `layer` is wanted.
    fn wants_block(&self, layer: usize) -> bool {
        BlockSite::all().any(|site| self.wants(HookPoint::Block(layer, site)))
    }

    /// Applies interventions at `hook`; `None` when the pass stops here.
    fn at(&mut self, hook: HookPoint, x: Tensor) -> Result<Option<Tensor>> {
        let x = if self.hooks.wants(hook) {
            self.hooks.run(hook, x, &self.ctx)?
        } else {
            x
        };
        Ok(if self.stop == StopAt::After(hook) {
            None
        } else {
            Some(x)
        })
    }
}

impl Transformer {
    /// Builds a model from validated weights, moving them to `device` and `kind`.
    pub fn new(
        cfg: ModelConfig,
        weights: &ModelWeights,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        cfg.validate()?;
        weights.validate(&cfg)?;
        if !matches!(
            kind,
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        ) {
            return Err(Error::InvalidArgument(format!(
                "unsupported model dtype {kind:?}"
            )));
        }
        let rotary = match cfg.positions {
            PositionKind::Rotary {
                base,
                rotary_dim,
                llama3_scaling,
            } => Some(Rotary::new(base, rotary_dim, llama3_scaling, device)),
            PositionKind::Learned => None,
        };
        let weights = tch::no_grad(|| weights.to(device, kind, cfg.tied_embeddings));
        let fused_decode = decode_step::supported(&cfg, kind, device);
        Ok(Transformer {
            cfg,
            weights,
            rotary,
            device,
            kind,
            fused_decode,
            host_model: OnceCell::new(),
        })
    }

    /// The weights as host slices for the fused decode step, taken once:
    /// borrowing ~300 tensors' storage costs a tenth of a millisecond per
    /// step otherwise.
    fn host_model(&self) -> Result<&HostModel<'_>> {
        self.host_model
            .get_or_init(|| {
                let model = HostModel::new(&self.weights).ok()?;
                // SAFETY: the slices point into the storage of tensors that
                // `self.weights` owns for the model's whole life and that no
                // method replaces or resizes; the result is only handed out
                // borrowed for as long as `self`.
                Some(unsafe { std::mem::transmute::<HostModel<'_>, HostModel<'static>>(model) })
            })
            .as_ref()
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "the fused decode step needs contiguous f32 or bf16 CPU weights".into(),
                )
            })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Turns the fused CPU decode step on or off (it is on wherever it is
    /// supported); with it off, every decode step runs through libtorch.
    pub fn set_fused_decode(&mut self, on: bool) {
        self.fused_decode = on && decode_step::supported(&self.cfg, self.kind, self.device);
    }

    /// The unembedding matrix `[vocab, d_model]` (e.g. for logit-lens analyses).
    pub fn unembed_weight(&self) -> &Tensor {
        &self.weights.unembed
    }

    /// Applies the final norm to `x [.., d_model]`.
    pub fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm(x, &self.weights.ln_final)
    }

    /// An empty KV cache sized for `capacity` positions of `batch` sequences.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        let c = &self.cfg;
        KvCache::new(
            c.n_layers,
            batch,
            c.n_kv_heads,
            c.d_head,
            capacity,
            self.cache_kind(),
            self.device,
        )
    }

    /// Plain causal attention on CPU goes through batched matmuls (see
    /// [`causal_attention_bmm`]) in bf16/f16, and in f32 over at most 256
    /// tokens: at 128 tokens that takes 20–35% less time than libtorch's fused
    /// kernel, at 256 as long, and beyond, computing the hidden half of the
    /// scores costs more than it saves.
    fn prefers_bmm_attention(&self, mask: &AttentionMask, seq: i64) -> bool {
        matches!(mask, AttentionMask::Causal)
            && self.device == Device::Cpu
            && match self.kind {
                Kind::BFloat16 | Kind::Half => true,
                Kind::Float => seq <= 256,
                _ => false,
            }
    }

    /// The dtype of cached keys and values, and of attention over them. On
    /// CPU, libtorch's attention kernel is ~4× slower in bf16/f16 than in f32
    /// for single-query decode steps, so a low-precision model keeps its cache
    /// and its cached attention in f32 there (slightly more precise, never less).
    fn cache_kind(&self) -> Kind {
        match (self.device, self.kind) {
            (Device::Cpu, Kind::BFloat16 | Kind::Half) => Kind::Float,
            (_, kind) => kind,
        }
    }

    /// Logits `[batch, seq, vocab]` (model dtype) of a plain forward with no hooks.
    pub fn logits(&self, tokens: &Tensor) -> Result<Tensor> {
        let mut hooks = Hooks::new();
        self.forward(
            &ForwardInput::tokens(tokens),
            None,
            &mut hooks,
            StopAt::Logits(LogitsFor::All),
        )?
        .ok_or_else(|| Error::InvalidArgument("forward stopped before the logits".into()))
    }

    /// One forward call. Returns logits in the model's dtype (as transformers
    /// does; convert the positions you need) when `stop` is `Logits`, `None`
    /// when it stops after a hook point (read what you need from a cache).
    /// With a `cache`, the call continues after the cached positions and
    /// appends its keys and values; it must then run to the logits.
    pub fn forward(
        &self,
        input: &ForwardInput,
        mut cache: Option<&mut KvCache>,
        hooks: &mut Hooks,
        stop: StopAt,
    ) -> Result<Option<Tensor>> {
        let tokens = input.tokens;
        let (batch, seq) = match tokens.size().as_slice() {
            [b, s] => (*b, *s),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "tokens must be [batch, seq], got {other:?}"
                )))
            }
        };
        if seq == 0 {
            return Err(Error::InvalidArgument("empty token sequence".into()));
        }
        if let StopAt::After(hook) = stop {
            if hook.layer().is_some_and(|l| l >= self.cfg.n_layers) {
                return Err(Error::UnknownHook {
                    name: hook.to_string(),
                    reason: format!("the model has {} blocks", self.cfg.n_layers),
                });
            }
            if cache.is_some() {
                return Err(Error::InvalidArgument(
                    "a forward that fills a KV cache must run to the logits".into(),
                ));
            }
        }
        let past = cache.as_ref().map_or(0, |c| c.len());
        let tokens = tokens.to_device(self.device);
        let positions = match input.positions {
            Some(p) => p.to_device(self.device),
            None => {
                Tensor::arange_start(past, past + seq, (Kind::Int64, self.device)).view([1, seq])
            }
        };
        self.check_token_range(&tokens, &positions, past + seq)?;
        // The mask (and the rotary tables, lazily themselves) are built only if a
        // block runs through libtorch.
        let mask = OnceCell::new();
        let mask = || {
            mask.get_or_init(|| AttentionMask::build(past, seq, input.attention_mask, self.device))
        };
        let tables = self
            .rotary
            .as_ref()
            .map(|r| r.tables(&positions, self.kind));
        let fused_step = match (&cache, stop) {
            (Some(_), StopAt::Logits(logits))
                if self.fused_decode
                    && (seq == 1 || logits == LogitsFor::Last)
                    && batch * seq <= decode_step::max_rows(self.kind)
                    && input.start_at.is_none() =>
            {
                // A rotary model whose tables cannot be read on the host keeps libtorch.
                match tables.as_ref().map(|t| t.host()) {
                    Some(None) => None,
                    rotary => Some(DecodeStep::new(
                        (batch as usize, seq as usize, past as usize),
                        input.attention_mask,
                        rotary.flatten(),
                        self.kind,
                    )?),
                }
            }
            _ => None,
        };
        let mut pass = Pass {
            hooks,
            ctx: HookContext {
                position_offset: past,
                positions: &positions,
                decode_step: past > 0 && seq == 1,
            },
            stop,
        };

        let (first_layer, resid) = match input.start_at {
            Some((layer, resid)) => {
                let expected = [batch, seq, self.cfg.d_model];
                if layer >= self.cfg.n_layers || resid.size() != expected {
                    return Err(Error::InvalidArgument(format!(
                        "start_at: layer {layer} of {} with residual {:?}, expected {expected:?}",
                        self.cfg.n_layers,
                        resid.size()
                    )));
                }
                (layer, resid.to_device(self.device).to_kind(self.kind))
            }
            None => match self.embed(&tokens, &positions, &mut pass)? {
                Some(resid) => (0, resid),
                None => return Ok(None),
            },
        };
        let fused_step = fused_step.filter(|_| !resid.requires_grad());
        let mut resid = Residual::Tensor(resid);
        let n_layers = self.cfg.n_layers;
        let mut layer = first_layer;
        while layer < n_layers {
            if let (Some(step), Some(cache)) = (&fused_step, cache.as_deref_mut()) {
                if !pass.wants_block(layer) {
                    // The run of blocks without hooks, and the logits when it
                    // reaches them, go through the fused step in one call.
                    let end = (layer..n_layers)
                        .find(|&l| pass.wants_block(l))
                        .unwrap_or(n_layers);
                    let with_logits = end == n_layers && !pass.wants(HookPoint::LnFinal);
                    let rows = self.host_rows(resid)?;
                    let (rows, logits) =
                        self.fused_blocks(step, cache, layer..end, rows, with_logits)?;
                    if let Some(logits) = logits {
                        cache.advance(seq);
                        return decode_step::host_to_tensor(
                            &logits,
                            [batch, 1, self.cfg.vocab_size],
                            self.kind,
                        )
                        .map(Some);
                    }
                    resid = Residual::Host(rows);
                    layer = end;
                    continue;
                }
            }
            let block_in = self.tensor_of(resid, (batch, seq))?;
            let cache_layer = cache.as_deref_mut().map(|c| (c, layer));
            resid = match self.block(
                layer,
                &self.weights.blocks[layer],
                block_in,
                mask(),
                tables.as_ref(),
                cache_layer,
                &mut pass,
            )? {
                Some(r) => Residual::Tensor(r),
                None => return Ok(None),
            };
            layer += 1;
        }
        if let Some(c) = cache {
            c.advance(seq);
        }
        let resid = self.tensor_of(resid, (batch, seq))?;
        let resid = match stop {
            StopAt::Logits(LogitsFor::Last) => resid.narrow(1, seq - 1, 1),
            _ => resid,
        };
        let normed = self.final_norm(&resid);
        let normed = hook!(pass, HookPoint::LnFinal, normed);
        Ok(Some(linear(&normed, &self.weights.unembed, None)))
    }

    /// Runs `layers` through the fused decode step, then the final norm and
    /// unembedding when `with_logits`: `(rows, logits)`. Every thread of
    /// libtorch's team runs the whole run as one [`team`].
    fn fused_blocks(
        &self,
        step: &DecodeStep,
        cache: &KvCache,
        layers: std::ops::Range<usize>,
        rows: Vec<f32>,
        with_logits: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let host = self.host_model()?;
        let mut blocks = Vec::with_capacity(layers.len());
        for layer in layers {
            blocks.push((
                &host.blocks[layer],
                HostCache::new(cache, layer, step.seq())?,
            ));
        }
        let head = with_logits.then_some((&host.ln_final, host.unembed));
        let cfg = &self.cfg;
        // Scratch for the widest product: the unembedding, or a block's.
        let widest = self
            .cfg
            .vocab_size
            .max(self.cfg.qkv_rows())
            .max(2 * self.cfg.d_mlp);
        let start = rows;
        let (rows, logits) = team::run(widest as usize * step.rows(), |team| {
            let mut rows = start.clone();
            for (block, layer_cache) in &blocks {
                step.block(team, cfg, block, layer_cache, &mut rows);
            }
            let logits = head
                .as_ref()
                .map(|(norm, unembed)| step.logits(team, cfg, norm, *unembed, &rows));
            (rows, logits)
        })
        .ok_or_else(|| Error::InvalidArgument("the fused step's team returned nothing".into()))?;
        Ok((rows, logits))
    }

    fn host_rows(&self, resid: Residual) -> Result<Vec<f32>> {
        match resid {
            Residual::Host(rows) => Ok(rows),
            Residual::Tensor(t) => decode_step::host_f32(&t),
        }
    }

    /// The residual as a `[batch, seq, d_model]` tensor.
    fn tensor_of(&self, resid: Residual, (batch, seq): (i64, i64)) -> Result<Tensor> {
        match resid {
            Residual::Tensor(t) => Ok(t),
            Residual::Host(rows) => {
                Ok(
                    decode_step::host_to_tensor(&rows, [batch, seq, self.cfg.d_model], self.kind)?
                        .to_device(self.device),
                )
            }
        }
    }

    /// Token (and learned position) embeddings, `[batch, seq, d_model]`.
    fn embed(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        pass: &mut Pass,
    ) -> Result<Option<Tensor>> {
        let (batch, seq) = (tokens.size()[0], tokens.size()[1]);
        let embed = self
            .weights
            .embed
            .index_select(0, &tokens.reshape([-1]))
            .view([batch, seq, -1]);
        let resid = hook!(pass, HookPoint::Embed, embed);
        match &self.weights.pos_embed {
            Some(pos_embed) => {
                let pos = pos_embed.index_select(0, &positions.reshape([-1])).view([
                    positions.size()[0],
                    seq,
                    -1,
                ]);
                let pos = hook!(pass, HookPoint::PosEmbed, pos);
                Ok(Some(resid + pos))
            }
            None => Ok(Some(resid)),
        }
    }

    /// Token ids must index the vocabulary and learned positions must fit.
    fn check_token_range(&self, tokens: &Tensor, positions: &Tensor, total: i64) -> Result<()> {
        let (min, max) = int_range(tokens);
        if min < 0 || max >= self.cfg.vocab_size {
            return Err(Error::InvalidArgument(format!(
                "token id out of range [0, {}): saw {min}..={max}",
                self.cfg.vocab_size
            )));
        }
        if self.cfg.positions == PositionKind::Learned {
            let max_pos = int_range(positions).1.max(total - 1);
            if max_pos >= self.cfg.max_context {
                return Err(Error::InvalidArgument(format!(
                    "position {max_pos} exceeds the model's {} learned positions",
                    self.cfg.max_context
                )));
            }
        }
        Ok(())
    }

    fn norm(&self, x: &Tensor, w: &NormWeights) -> Tensor {
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
    fn block(
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
        let attn_in = self.norm(&resid_pre, &w.ln1);
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

/// Smallest and largest element of an integer tensor. A CPU int64 tensor (a
/// decode step's few ids or positions) is read on the host, without two
/// libtorch reductions.
fn int_range(t: &Tensor) -> (i64, i64) {
    match decode_step::host_i64(t) {
        Some(values) => (
            values.iter().copied().min().unwrap_or(0),
            values.iter().copied().max().unwrap_or(0),
        ),
        None => (t.min().int64_value(&[]), t.max().int64_value(&[])),
    }
}
