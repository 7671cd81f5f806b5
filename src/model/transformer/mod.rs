//! The one transformer. GPT-2, the Llama family and GPT-NeoX differ only in
//! their [`ModelConfig`]; the forward pass calls the hook points of
//! [`crate::hooks`] at every site and can stop after the last one it needs.
//!
//! Shapes: `batch` sequences of `seq` new tokens after `past` cached ones.

use std::cell::OnceCell;

use tch::{Device, Kind, Tensor};

use super::config::{ModelConfig, PositionKind};
use super::kv_cache::KvCache;
use super::weights::ModelWeights;
use crate::error::{Error, Result};
use crate::hooks::{BlockEdits, BlockSite, HookContext, HookPoint, Hooks};
use crate::machine::memory::bytes_of;
use crate::model::cpu::decode_step::{self, DecodeStep, HostModel};
use crate::model::layers::attention::AttentionMask;
use crate::model::layers::linear::linear;
use crate::model::layers::rotary::Rotary;

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

    /// Block `layer`'s interventions as row edits for the fused step (none
    /// when it has no hooks); `None` past the last block, or when a hook
    /// there needs libtorch.
    fn block_edits(
        &mut self,
        layer: usize,
        (n_layers, shape): (usize, ((usize, usize), usize)),
    ) -> Result<Option<BlockEdits>> {
        if layer >= n_layers {
            Ok(None)
        } else if !self.wants_block(layer) {
            Ok(Some(BlockEdits::default()))
        } else {
            self.hooks.block_edits(layer, shape, &self.ctx)
        }
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

mod block;
mod fused;

use fused::Residual;

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
        if stop == StopAt::Logits(LogitsFor::All) {
            // `[batch, seq, vocab]` logits, known before any work.
            let vocab = self.cfg.vocab_size;
            let shape = [batch, seq, vocab, 4].map(|d| d.max(0) as u64);
            crate::machine::memory::ensure_fits(bytes_of(&shape), || {
                format!("logits for {batch} × {seq} tokens over a vocabulary of {vocab}")
            })?;
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
        if let Some(rows) = cache.as_ref().map(|c| c.rows()).filter(|&r| r != batch) {
            return Err(Error::InvalidArgument(format!(
                "the KV cache is in use for {rows} sequences, the tokens are {batch}"
            )));
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
                model_kind: self.kind,
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
                // The run of blocks whose hooks (if any) the fused step can
                // apply as row edits, and the logits when it reaches them, go
                // through the fused step in one call.
                let mut edits = Vec::new();
                let z_width = (self.cfg.n_heads * self.cfg.d_head) as usize;
                let widths = (self.cfg.d_model as usize, z_width);
                let shape = (n_layers, (widths, batch as usize));
                while let Some(e) = pass.block_edits(layer + edits.len(), shape)? {
                    edits.push(e);
                }
                if !edits.is_empty() {
                    let end = layer + edits.len();
                    let with_logits = end == n_layers && !pass.wants(HookPoint::LnFinal);
                    let rows = self.host_rows(resid)?;
                    let (rows, logits) =
                        self.fused_blocks(step, cache, layer, &edits, rows, with_logits)?;
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
