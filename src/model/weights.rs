//! The canonical weight layout of the one transformer. Loaders for each file
//! format and architecture convert into this; the forward pass knows only this.
//!
//! Layout (PyTorch `[out, in]` for every projection):
//! - `embed [vocab, d_model]`, `pos_embed [max_context, d_model]` (learned positions only)
//! - per block: `ln1`, `qkv_w [(n_heads + 2·n_kv_heads)·d_head, d_model]` holding
//!   the query rows, then key rows, then value rows, head-major within each;
//!   `out_w [d_model, n_heads·d_head]`; `ln2`; `mlp_in_w [d_mlp or 2·d_mlp, d_model]`
//!   (gated MLPs: gate rows, then up rows); `mlp_out_w [d_model, d_mlp]`
//! - `ln_final`, `unembed [vocab, d_model]` (the same tensor as `embed` when tied).

use tch::{Device, Kind, Tensor};

use super::config::{ModelConfig, NormKind, PositionKind};
use crate::error::{Error, Result};
pub use crate::io::tensor_bag::TensorBag;

/// Weight and optional bias of a normalisation.
#[derive(Debug)]
pub struct NormWeights {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// One transformer block.
#[derive(Debug)]
pub struct BlockWeights {
    pub ln1: NormWeights,
    /// `[(n_heads + 2·n_kv_heads)·d_head, d_model]`
    pub qkv_w: Tensor,
    pub qkv_b: Option<Tensor>,
    /// `[d_model, n_heads·d_head]`
    pub out_w: Tensor,
    pub out_b: Option<Tensor>,
    pub ln2: NormWeights,
    /// `[d_mlp, d_model]`, or `[2·d_mlp, d_model]` (gate then up) when gated
    pub mlp_in_w: Tensor,
    pub mlp_in_b: Option<Tensor>,
    /// `[d_model, d_mlp]`
    pub mlp_out_w: Tensor,
    pub mlp_out_b: Option<Tensor>,
}

/// All weights of a model.
#[derive(Debug)]
pub struct ModelWeights {
    /// `[vocab, d_model]`
    pub embed: Tensor,
    /// `[max_context, d_model]` for learned positions
    pub pos_embed: Option<Tensor>,
    pub blocks: Vec<BlockWeights>,
    pub ln_final: NormWeights,
    /// `[vocab, d_model]`
    pub unembed: Tensor,
}

fn expect_shape(name: &str, tensor: &Tensor, expected: &[i64]) -> Result<()> {
    let got = tensor.size();
    if got != expected {
        return Err(Error::ShapeMismatch {
            name: name.to_string(),
            expected: expected.to_vec(),
            got,
        });
    }
    Ok(())
}

fn expect_opt_shape(name: &str, tensor: &Option<Tensor>, expected: &[i64]) -> Result<()> {
    match tensor {
        Some(t) => expect_shape(name, t, expected),
        None => Ok(()),
    }
}

impl NormWeights {
    fn validate(&self, name: &str, cfg: &ModelConfig) -> Result<()> {
        expect_shape(&format!("{name}.weight"), &self.weight, &[cfg.d_model])?;
        expect_opt_shape(&format!("{name}.bias"), &self.bias, &[cfg.d_model])?;
        if cfg.norm == NormKind::LayerNorm && self.bias.is_none() {
            return Err(Error::MissingTensor {
                name: format!("{name}.bias"),
                source_desc: "LayerNorm weights".into(),
            });
        }
        Ok(())
    }

    fn to(&self, device: Device, kind: Kind) -> NormWeights {
        NormWeights {
            weight: self.weight.to_device(device).to_kind(kind),
            bias: self
                .bias
                .as_ref()
                .map(|b| b.to_device(device).to_kind(kind)),
        }
    }
}

impl ModelWeights {
    /// Checks every shape against the configuration, so that a wrong file fails
    /// at load time with the tensor's name rather than deep inside a matmul.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let d = cfg.d_model;
        expect_shape("embed", &self.embed, &[cfg.vocab_size, d])?;
        expect_shape("unembed", &self.unembed, &[cfg.vocab_size, d])?;
        match (&cfg.positions, &self.pos_embed) {
            (PositionKind::Learned, None) => {
                return Err(Error::MissingTensor {
                    name: "pos_embed".into(),
                    source_desc: "learned-position model".into(),
                })
            }
            (PositionKind::Learned, Some(p)) => {
                expect_shape("pos_embed", p, &[cfg.max_context, d])?
            }
            _ => {}
        }
        if self.blocks.len() != cfg.n_layers {
            return Err(Error::Config(format!(
                "{} blocks of weights for {} layers",
                self.blocks.len(),
                cfg.n_layers
            )));
        }
        let mlp_rows = if cfg.gated_mlp {
            2 * cfg.d_mlp
        } else {
            cfg.d_mlp
        };
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("blocks.{i}");
            b.ln1.validate(&format!("{p}.ln1"), cfg)?;
            b.ln2.validate(&format!("{p}.ln2"), cfg)?;
            expect_shape(&format!("{p}.qkv_w"), &b.qkv_w, &[cfg.qkv_rows(), d])?;
            expect_opt_shape(&format!("{p}.qkv_b"), &b.qkv_b, &[cfg.qkv_rows()])?;
            expect_shape(
                &format!("{p}.out_w"),
                &b.out_w,
                &[d, cfg.n_heads * cfg.d_head],
            )?;
            expect_opt_shape(&format!("{p}.out_b"), &b.out_b, &[d])?;
            expect_shape(&format!("{p}.mlp_in_w"), &b.mlp_in_w, &[mlp_rows, d])?;
            expect_opt_shape(&format!("{p}.mlp_in_b"), &b.mlp_in_b, &[mlp_rows])?;
            expect_shape(&format!("{p}.mlp_out_w"), &b.mlp_out_w, &[d, cfg.d_mlp])?;
            expect_opt_shape(&format!("{p}.mlp_out_b"), &b.mlp_out_b, &[d])?;
        }
        self.ln_final.validate("ln_final", cfg)
    }

    /// Moves every tensor to `device` and `kind`, contiguous, without gradients.
    /// A tied unembedding stays shared with the embedding.
    pub fn to(&self, device: Device, kind: Kind, tied: bool) -> ModelWeights {
        let mv = |t: &Tensor| t.to_device(device).to_kind(kind).contiguous();
        let mv_opt = |t: &Option<Tensor>| t.as_ref().map(mv);
        let embed = mv(&self.embed);
        let unembed = if tied {
            embed.shallow_clone()
        } else {
            mv(&self.unembed)
        };
        ModelWeights {
            pos_embed: mv_opt(&self.pos_embed),
            blocks: self
                .blocks
                .iter()
                .map(|b| BlockWeights {
                    ln1: b.ln1.to(device, kind),
                    qkv_w: mv(&b.qkv_w),
                    qkv_b: mv_opt(&b.qkv_b),
                    out_w: mv(&b.out_w),
                    out_b: mv_opt(&b.out_b),
                    ln2: b.ln2.to(device, kind),
                    mlp_in_w: mv(&b.mlp_in_w),
                    mlp_in_b: mv_opt(&b.mlp_in_b),
                    mlp_out_w: mv(&b.mlp_out_w),
                    mlp_out_b: mv_opt(&b.mlp_out_b),
                })
                .collect(),
            ln_final: self.ln_final.to(device, kind),
            embed,
            unembed,
        }
    }
}

impl ModelWeights {
    /// Random weights for `cfg` (normal, std 0.2; norm gains near 1), for tests
    /// and tiny experiments. Deterministic for a `seed`, and independent of
    /// libtorch's global generator (which concurrent tests share).
    pub fn random(cfg: &ModelConfig, seed: i64) -> ModelWeights {
        use rand::SeedableRng;
        let opts = (Kind::Float, Device::Cpu);
        let rng = std::cell::RefCell::new(rand::rngs::StdRng::seed_from_u64(seed as u64));
        let w = |shape: &[i64]| crate::io::rng::normal(&mut rng.borrow_mut(), shape, 0.2);
        let bias = |on: bool, n: i64| on.then(|| w(&[n]));
        let norm = || NormWeights {
            weight: Tensor::ones([cfg.d_model], opts) + w(&[cfg.d_model]),
            bias: (cfg.norm == NormKind::LayerNorm).then(|| w(&[cfg.d_model])),
        };
        let d = cfg.d_model;
        let mlp_rows = if cfg.gated_mlp {
            2 * cfg.d_mlp
        } else {
            cfg.d_mlp
        };
        let embed = w(&[cfg.vocab_size, d]);
        let unembed = if cfg.tied_embeddings {
            embed.shallow_clone()
        } else {
            w(&[cfg.vocab_size, d])
        };
        ModelWeights {
            pos_embed: (cfg.positions == PositionKind::Learned).then(|| w(&[cfg.max_context, d])),
            blocks: (0..cfg.n_layers)
                .map(|_| BlockWeights {
                    ln1: norm(),
                    qkv_w: w(&[cfg.qkv_rows(), d]),
                    qkv_b: bias(cfg.qkv_bias, cfg.qkv_rows()),
                    out_w: w(&[d, cfg.n_heads * cfg.d_head]),
                    out_b: bias(cfg.attn_out_bias, d),
                    ln2: norm(),
                    mlp_in_w: w(&[mlp_rows, d]),
                    mlp_in_b: bias(cfg.mlp_bias, mlp_rows),
                    mlp_out_w: w(&[d, cfg.d_mlp]),
                    mlp_out_b: bias(cfg.mlp_bias, d),
                })
                .collect(),
            ln_final: norm(),
            embed,
            unembed,
        }
    }
}
