//! The architecture-neutral description of a transformer. Every supported
//! architecture (GPT-2, the Llama family, GPT-NeoX) is one of these: the
//! differences between them are configuration, not code.

use crate::error::{Error, Result};
use crate::hooks::{BlockSite, HookPoint};

/// Which normalisation the blocks and the final norm use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm with weight and bias (GPT-2, GPT-NeoX).
    LayerNorm,
    /// RMSNorm with weight only (Llama family).
    RmsNorm,
}

/// The MLP's non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// tanh approximation of GELU (GPT-2's `gelu_new`).
    GeluTanh,
    /// exact erf GELU (GPT-NeoX's `gelu`).
    Gelu,
    /// SiLU / swish (Llama family, gated).
    Silu,
}

/// Llama-3 style frequency-dependent rotary scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// How positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PositionKind {
    /// A learned absolute position embedding added to the token embedding (GPT-2).
    Learned,
    /// Rotary embedding of the first `rotary_dim` dimensions of each head, in the
    /// half-split ("rotate_half") layout that Hugging Face uses.
    Rotary {
        base: f64,
        rotary_dim: i64,
        llama3_scaling: Option<Llama3RopeScaling>,
    },
}

/// Everything the one transformer implementation needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The source architecture name, for display (`gpt2`, `llama`, `qwen2`, ...).
    pub architecture: String,
    pub vocab_size: i64,
    pub d_model: i64,
    pub n_layers: usize,
    pub n_heads: i64,
    /// Key/value heads; fewer than `n_heads` means grouped-query attention.
    pub n_kv_heads: i64,
    pub d_head: i64,
    pub d_mlp: i64,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub activation: Activation,
    /// SwiGLU-style MLP: `down(act(gate(x)) * up(x))`.
    pub gated_mlp: bool,
    pub positions: PositionKind,
    /// GPT-NeoX: attention and MLP both read the block input.
    pub parallel_residual: bool,
    pub qkv_bias: bool,
    pub attn_out_bias: bool,
    pub mlp_bias: bool,
    pub tied_embeddings: bool,
    /// Longest context the model was trained for (learned positions cannot exceed it).
    pub max_context: i64,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
}

impl ModelConfig {
    /// Checks the internal consistency of the numbers.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("d_head", self.d_head),
            ("d_mlp", self.d_mlp),
            ("max_context", self.max_context),
        ];
        for (name, value) in positive {
            if value <= 0 {
                return Err(Error::Config(format!(
                    "{name} must be positive, got {value}"
                )));
            }
        }
        if self.n_layers == 0 {
            return Err(Error::Config("n_layers must be positive".into()));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(Error::Config(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            )));
        }
        if let PositionKind::Rotary { rotary_dim, .. } = self.positions {
            if rotary_dim <= 0 || rotary_dim > self.d_head || rotary_dim % 2 != 0 {
                return Err(Error::Config(format!(
                    "rotary_dim {rotary_dim} must be even and within d_head {}",
                    self.d_head
                )));
            }
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(Error::Config(format!(
                "norm_eps {} is not positive",
                self.norm_eps
            )));
        }
        Ok(())
    }

    /// The width of one row (one token) of `hook`'s activations: `d_mlp`
    /// for `mlp.hook_post`, all heads' `d_head` for `attn.hook_z`, `d_model`
    /// elsewhere. Attention patterns have no such row.
    pub fn hook_width(&self, hook: HookPoint) -> Result<usize> {
        let d = match hook {
            HookPoint::Block(_, BlockSite::MlpPost) => self.d_mlp,
            HookPoint::Block(_, BlockSite::AttnZ | BlockSite::AttnQ) => self.n_heads * self.d_head,
            HookPoint::Block(_, BlockSite::AttnK | BlockSite::AttnV) => {
                self.n_kv_heads * self.d_head
            }
            HookPoint::Block(_, BlockSite::AttnResult) => self.n_heads * self.d_model,
            HookPoint::Block(_, BlockSite::AttnPattern) => {
                return Err(Error::InvalidArgument(format!(
                    "`{hook}` is [batch, heads, seq, seq], not one row per token"
                )))
            }
            _ => self.d_model,
        };
        Ok(d as usize)
    }

    /// Rows of the fused query/key/value projection: `(n_heads + 2·n_kv_heads)·d_head`.
    pub fn qkv_rows(&self) -> i64 {
        (self.n_heads + 2 * self.n_kv_heads) * self.d_head
    }

    /// Parameters that every decode step reads once (the unembedding counted once
    /// even when tied, since the embedding lookup reads only one row).
    pub fn streamed_parameters(&self) -> i64 {
        let attn = self.qkv_rows() * self.d_model + self.d_model * self.n_heads * self.d_head;
        let mlp_in = if self.gated_mlp { 2 } else { 1 } * self.d_mlp * self.d_model;
        let mlp = mlp_in + self.d_mlp * self.d_model;
        self.n_layers as i64 * (attn + mlp) + self.vocab_size * self.d_model
    }

    /// Matmul FLOPs per token of a forward through `layers` blocks, with
    /// `context` tokens of attention, plus the unembedding when `with_unembed`.
    pub fn flops_per_token(&self, layers: usize, context: i64, with_unembed: bool) -> f64 {
        let attn_proj = self.qkv_rows() * self.d_model + self.d_model * self.n_heads * self.d_head;
        let mlp_in = if self.gated_mlp { 2 } else { 1 } * self.d_mlp * self.d_model;
        let weights = attn_proj + mlp_in + self.d_mlp * self.d_model;
        // QKᵀ and pattern·V: on average half the context under a causal mask, 2 matmuls.
        let attention = 2 * self.n_heads * self.d_head * context;
        let per_layer = 2.0 * weights as f64 + attention as f64;
        let unembed = if with_unembed {
            2.0 * (self.vocab_size * self.d_model) as f64
        } else {
            0.0
        };
        per_layer * layers as f64 + unembed
    }
}

impl ModelConfig {
    /// A tiny Llama-style configuration (GQA, RMSNorm, SwiGLU, rotary), for
    /// tests and examples with random weights.
    pub fn tiny_llama() -> Self {
        ModelConfig {
            architecture: "llama".into(),
            vocab_size: 64,
            d_model: 32,
            n_layers: 3,
            n_heads: 4,
            n_kv_heads: 2,
            d_head: 8,
            d_mlp: 48,
            norm: NormKind::RmsNorm,
            norm_eps: 1e-5,
            activation: Activation::Silu,
            gated_mlp: true,
            positions: PositionKind::Rotary {
                base: 10_000.0,
                rotary_dim: 8,
                llama3_scaling: None,
            },
            parallel_residual: false,
            qkv_bias: false,
            attn_out_bias: false,
            mlp_bias: false,
            tied_embeddings: false,
            max_context: 128,
            bos_token_id: Some(0),
            eos_token_ids: vec![1],
        }
    }
}
