//! An SAE ready to use: its config, its weights and its architecture.

use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use super::architecture::{decode, Architecture};
use super::config::{SaeConfig, NORMALIZE_CONSTANT_NORM, NORMALIZE_LAYER_NORM};
use super::registry::architecture;
use super::weights::SaeWeights;
use crate::error::{Error, Result};

/// Norm of freshly initialised decoder rows for architectures without a
/// unit-norm constraint (Anthropic's April 2024 recipe uses 0.1).
const FREE_DECODER_INIT_NORM: f64 = 0.1;

pub struct Sae {
    pub cfg: SaeConfig,
    pub weights: SaeWeights,
    arch: &'static dyn Architecture,
}

impl Sae {
    /// Wraps loaded weights, checking them against the config.
    pub fn new(cfg: SaeConfig, weights: SaeWeights) -> Result<Sae> {
        cfg.validate()?;
        let arch = architecture(&cfg.architecture)?;
        if arch.needs_k() {
            cfg.require_k()?;
        }
        let (d_sae, d_in) = (cfg.d_sae as i64, cfg.d_in as i64);
        let check = |name: &str, t: &Tensor, expected: &[i64]| -> Result<()> {
            if t.size() != expected {
                return Err(Error::ShapeMismatch {
                    name: name.into(),
                    expected: expected.to_vec(),
                    got: t.size(),
                });
            }
            Ok(())
        };
        check("W_enc (as [d_sae, d_in])", &weights.w_enc, &[d_sae, d_in])?;
        check("W_dec", &weights.w_dec, &[d_sae, d_in])?;
        check("b_enc", &weights.b_enc, &[d_sae])?;
        check("b_dec", &weights.b_dec, &[d_in])?;
        for (name, t) in [
            ("threshold", &weights.log_threshold),
            ("r_mag", &weights.r_mag),
            ("b_mag", &weights.b_mag),
        ] {
            if let Some(t) = t {
                check(name, t, &[d_sae])?;
            }
        }
        Ok(Sae { cfg, weights, arch })
    }

    /// A freshly initialised SAE for training: decoder rows in random
    /// directions (unit norm, or 0.1 where the decoder is free), `W_enc =
    /// W_decᵀ`, zero biases, plus the architecture's own parameters.
    pub fn init(cfg: SaeConfig, seed: u64, device: Device) -> Result<Sae> {
        Sae::init_scaled(cfg, seed, device, 1.0)
    }

    /// [`Sae::init`] with `W_enc = encoder_scale · W_decᵀ`.
    pub fn init_scaled(
        mut cfg: SaeConfig,
        seed: u64,
        device: Device,
        encoder_scale: f64,
    ) -> Result<Sae> {
        let arch = architecture(&cfg.architecture)?;
        if cfg.k.is_some() && !arch.needs_k() {
            cfg.k = None;
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let shape = [cfg.d_sae as i64, cfg.d_in as i64];
        let raw = crate::io::rng::normal(&mut rng, &shape, 1.0).f_to_device(device)?;
        let norm = if arch.unit_norm_decoder() {
            1.0
        } else {
            FREE_DECODER_INIT_NORM
        };
        let w_dec = raw
            .f_div(&raw.f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?)?
            .f_mul_scalar(norm)?;
        let mut weights = SaeWeights::from_matrices(w_dec.f_mul_scalar(encoder_scale)?, w_dec);
        arch.init_extra(&mut weights)?;
        Sae::new(cfg, weights)
    }

    pub fn architecture(&self) -> &dyn Architecture {
        self.arch
    }

    pub fn device(&self) -> Device {
        self.weights.device()
    }

    /// Moves the SAE to `device`.
    pub fn to_device(&self, device: Device) -> Result<Sae> {
        Sae::new(self.cfg.clone(), self.weights.to_device(device)?)
    }

    fn check_input(&self, x: &Tensor, what: &str, width: usize) -> Result<()> {
        let size = x.size();
        if size.last().copied() != Some(width as i64) {
            return Err(Error::ShapeMismatch {
                name: format!("{what} of SAE `{}`", self.cfg.architecture),
                expected: vec![-1, width as i64],
                got: size,
            });
        }
        Ok(())
    }

    /// `[n, d_in]` f32 rows of `x` on the SAE's device, with SAELens's
    /// per-row input normalisation applied, and what undoes it on the output.
    fn normalized_rows(&self, x: &Tensor) -> Result<(Tensor, RowNorm)> {
        self.check_input(x, "input", self.cfg.d_in)?;
        let rows = x
            .f_reshape([-1, self.cfg.d_in as i64])?
            .f_to_kind(Kind::Float)?
            .f_to_device(self.device())?;
        let dim = [1i64];
        Ok(match self.cfg.normalize_activations.as_str() {
            NORMALIZE_LAYER_NORM => {
                let mu = rows.f_mean_dim(dim.as_slice(), true, Kind::Float)?;
                let centred = rows.f_sub(&mu)?;
                let sigma = centred.f_std_dim(dim.as_slice(), true, true)?;
                let normed = centred.f_div(&sigma.f_add_scalar(1e-5)?)?;
                (
                    normed,
                    RowNorm::Affine {
                        scale: sigma,
                        shift: mu,
                    },
                )
            }
            NORMALIZE_CONSTANT_NORM => {
                let c = rows
                    .f_norm_scalaropt_dim(2.0, dim.as_slice(), true)?
                    .f_reciprocal()?
                    .f_mul_scalar((self.cfg.d_in as f64).sqrt())?;
                (rows.f_mul(&c)?, RowNorm::Divide(c))
            }
            _ => (rows, RowNorm::Identity),
        })
    }

    /// `[..., d_sae]` feature activations of `x` `[..., d_in]` (any leading
    /// shape), computed in f32 on the SAE's device and returned there.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let mut shape = x.size();
        let (rows, _) = self.normalized_rows(x)?;
        let acts = self.arch.encode(&self.weights, &self.cfg, &rows)?;
        shape.pop();
        shape.push(self.cfg.d_sae as i64);
        Ok(acts.f_reshape(shape)?)
    }

    /// `[..., d_in]` decoder output for feature activations `[..., d_sae]`
    /// (before undoing a per-row input normalisation; see [`Sae::forward`]).
    pub fn decode(&self, acts: &Tensor) -> Result<Tensor> {
        self.check_input(acts, "feature activations", self.cfg.d_sae)?;
        let mut lead = acts.size();
        lead.pop();
        let flat = acts.f_reshape([-1, self.cfg.d_sae as i64])?;
        lead.push(self.cfg.d_in as i64);
        Ok(decode(&self.weights, &flat)?.f_reshape(lead)?)
    }

    /// Feature activations `[..., d_sae]` and the reconstruction `[..., d_in]`
    /// of `x`, per-row normalisation undone.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut shape = x.size();
        let (rows, norm) = self.normalized_rows(x)?;
        let acts = self.arch.encode(&self.weights, &self.cfg, &rows)?;
        let recon = norm.undo(&decode(&self.weights, &acts)?)?;
        let recon = recon.f_reshape(shape.as_slice())?;
        shape.pop();
        shape.push(self.cfg.d_sae as i64);
        Ok((acts.f_reshape(shape)?, recon))
    }

    /// The reconstruction `[..., d_in]` of `x`.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward(x)?.1)
    }

    /// The hook point the SAE reads, from its metadata.
    pub fn hook_name(&self) -> Option<&str> {
        self.cfg.metadata.hook_name.as_deref()
    }
}

/// How to undo a per-row input normalisation on the decoder's output.
enum RowNorm {
    Identity,
    /// `y · scale + shift` (layer norm).
    Affine {
        scale: Tensor,
        shift: Tensor,
    },
    /// `y / c`.
    Divide(Tensor),
}

impl RowNorm {
    fn undo(&self, y: &Tensor) -> Result<Tensor> {
        Ok(match self {
            RowNorm::Identity => y.shallow_clone(),
            RowNorm::Affine { scale, shift } => y.f_mul(scale)?.f_add(shift)?,
            RowNorm::Divide(c) => y.f_div(c)?,
        })
    }
}
