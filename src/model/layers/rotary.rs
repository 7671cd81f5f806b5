//! Rotary position embedding (Su et al. 2021, "RoFormer"), in the half-split
//! layout Hugging Face uses (`rotate_half`), optionally on the first
//! `rotary_dim` dimensions only (GPT-NeoX's partial rotary) and with Llama-3's
//! frequency-dependent scaling.

use std::cell::OnceCell;
use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};

use crate::model::config::Llama3RopeScaling;
use crate::model::cpu::fused_ops::HostRotary;
use crate::model::cpu::gemv::round_bf16;

/// Inverse frequencies and the rotary width.
#[derive(Debug)]
pub struct Rotary {
    /// `[rotary_dim / 2]`, f32
    inv_freq: Tensor,
    /// The same on the host, for the fused kernels' tables.
    inv_freq_host: Vec<f32>,
    rotary_dim: i64,
}

/// Per-forward cos/sin tables for `positions` `[batch or 1, seq]` (int64),
/// built when first asked for: as tensors `[batch or 1, 1, seq, rotary_dim]`
/// in the model's dtype for libtorch's operators, or on the host for the
/// fused kernels.
pub struct RotaryTables<'r> {
    rotary: &'r Rotary,
    positions: Tensor,
    kind: Kind,
    tensors: OnceCell<(Tensor, Tensor)>,
    host: OnceCell<Option<HostRotary>>,
}

impl RotaryTables<'_> {
    /// `(cos, sin)`, computed in f32 as transformers does, then cast.
    fn tensors(&self) -> &(Tensor, Tensor) {
        self.tensors.get_or_init(|| {
            // [b, s, half] = positions ⊗ inv_freq
            let freqs = self.positions.to_kind(Kind::Float).unsqueeze(-1)
                * self.rotary.inv_freq.view([1, 1, -1]);
            let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
            (emb.cos().to_kind(self.kind), emb.sin().to_kind(self.kind))
        })
    }

    /// The same tables on the host (`None` if the positions cannot be read
    /// there); values rounded to the model's dtype like the tensors'.
    pub fn host(&self) -> Option<&HostRotary> {
        self.host
            .get_or_init(|| {
                let size = self.positions.size();
                let (rows, seq) = (*size.first()? as usize, *size.get(1)? as usize);
                let positions =
                    Vec::<i64>::try_from(self.positions.to_device(Device::Cpu).reshape([-1]))
                        .ok()?;
                let round = |x: f32| match self.kind {
                    Kind::BFloat16 => round_bf16(x),
                    _ => x,
                };
                let angles = || {
                    positions
                        .iter()
                        .flat_map(|&p| self.rotary.inv_freq_host.iter().map(move |f| p as f32 * f))
                };
                Some(HostRotary {
                    cos: angles().map(|a| round(a.cos())).collect(),
                    sin: angles().map(|a| round(a.sin())).collect(),
                    rows,
                    seq,
                    half: self.rotary.inv_freq_host.len(),
                })
            })
            .as_ref()
    }
}

impl Rotary {
    pub fn new(
        base: f64,
        rotary_dim: i64,
        scaling: Option<Llama3RopeScaling>,
        device: Device,
    ) -> Self {
        let half = rotary_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| {
                let freq = base.powf(-(2 * i) as f64 / rotary_dim as f64);
                let scaled = match scaling {
                    Some(s) => llama3_scale(freq, s),
                    None => freq,
                };
                scaled as f32
            })
            .collect();
        Rotary {
            inv_freq: Tensor::from_slice(&inv).to_device(device),
            inv_freq_host: inv,
            rotary_dim,
        }
    }

    /// The tables for `positions` `[batch or 1, seq]` (int64), built lazily.
    pub fn tables(&self, positions: &Tensor, kind: Kind) -> RotaryTables<'_> {
        RotaryTables {
            rotary: self,
            positions: positions.shallow_clone(),
            kind,
            tensors: OnceCell::new(),
            host: OnceCell::new(),
        }
    }

    /// Rotates `x` `[batch, heads, seq, d_head]`.
    pub fn apply(&self, x: &Tensor, tables: &RotaryTables) -> Tensor {
        let d_head = x.size()[3];
        if self.rotary_dim == d_head {
            return rotate(x, tables);
        }
        let rotated = rotate(&x.narrow(3, 0, self.rotary_dim), tables);
        let passed = x.narrow(3, self.rotary_dim, d_head - self.rotary_dim);
        Tensor::cat(&[rotated, passed], 3)
    }
}

fn rotate(x: &Tensor, t: &RotaryTables) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated_half = Tensor::cat(&[x2.neg(), x1], 3);
    let (cos, sin) = t.tensors();
    x * cos + rotated_half * sin
}

/// Llama 3's rope scaling: long wavelengths are slowed by `factor`, short ones
/// kept, and the band between interpolated smoothly.
fn llama3_scale(freq: f64, s: Llama3RopeScaling) -> f64 {
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    let wavelen = 2.0 * PI / freq;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor
    } else {
        let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * freq / s.factor + smooth * freq
    }
}
