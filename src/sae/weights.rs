//! The tensors of one SAE, in the layout saescope computes with. Every
//! encoder and decoder matrix is `[d_sae, d_in]` (one row per latent), so a
//! latent's encoder and decoder directions are both contiguous rows and a
//! sparse decode or encoder-gradient touches only the rows of active latents.
//! SAELens stores `W_enc` as `[d_in, d_sae]`; [`super::io`] transposes.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Parameters and buffers of an SAE.
pub struct SaeWeights {
    /// `[d_sae, d_in]` encoder rows (the gate encoder of a gated SAE).
    pub w_enc: Tensor,
    /// `[d_sae]` encoder bias (`b_gate` of a gated SAE).
    pub b_enc: Tensor,
    /// `[d_sae, d_in]` decoder rows.
    pub w_dec: Tensor,
    /// `[d_in]` decoder bias.
    pub b_dec: Tensor,
    /// `[d_sae]` log of the JumpReLU threshold (the trained parameter; kept in f32).
    pub log_threshold: Option<Tensor>,
    /// `[d_sae]` gated SAE: log of the magnitude encoder's per-latent scale.
    pub r_mag: Option<Tensor>,
    /// `[d_sae]` gated SAE: magnitude encoder bias.
    pub b_mag: Option<Tensor>,
    /// `[]` BatchTopK's running estimate of the activation threshold used at
    /// inference (a buffer, not trained by gradient).
    pub batch_threshold: Option<Tensor>,
}

/// Names of trainable tensors, in the order [`SaeWeights::trainable`] lists them.
pub const W_ENC: &str = "W_enc";
pub const B_ENC: &str = "b_enc";
pub const W_DEC: &str = "W_dec";
pub const B_DEC: &str = "b_dec";
pub const LOG_THRESHOLD: &str = "log_threshold";
pub const R_MAG: &str = "r_mag";
pub const B_MAG: &str = "b_mag";
pub const BATCH_THRESHOLD: &str = "batch_threshold";

impl SaeWeights {
    /// Zero biases around the given matrices.
    pub fn from_matrices(w_enc: Tensor, w_dec: Tensor) -> Self {
        let d_sae = w_enc.size()[0];
        let d_in = w_enc.size()[1];
        let opts = (Kind::Float, w_enc.device());
        SaeWeights {
            w_enc,
            b_enc: Tensor::zeros([d_sae], opts),
            w_dec,
            b_dec: Tensor::zeros([d_in], opts),
            log_threshold: None,
            r_mag: None,
            b_mag: None,
            batch_threshold: None,
        }
    }

    pub fn d_in(&self) -> i64 {
        self.w_dec.size()[1]
    }

    pub fn d_sae(&self) -> i64 {
        self.w_dec.size()[0]
    }

    pub fn device(&self) -> Device {
        self.w_dec.device()
    }

    /// Trainable tensors with their names; gradients and optimizer state use
    /// this order.
    pub fn trainable(&self) -> Vec<(&'static str, &Tensor)> {
        let mut out = vec![
            (W_ENC, &self.w_enc),
            (B_ENC, &self.b_enc),
            (W_DEC, &self.w_dec),
            (B_DEC, &self.b_dec),
        ];
        for (name, t) in [
            (LOG_THRESHOLD, &self.log_threshold),
            (R_MAG, &self.r_mag),
            (B_MAG, &self.b_mag),
        ] {
            if let Some(t) = t {
                out.push((name, t));
            }
        }
        out
    }

    /// Mutable view of [`SaeWeights::trainable`], same order.
    pub fn trainable_mut(&mut self) -> Vec<(&'static str, &mut Tensor)> {
        let mut out = vec![
            (W_ENC, &mut self.w_enc),
            (B_ENC, &mut self.b_enc),
            (W_DEC, &mut self.w_dec),
            (B_DEC, &mut self.b_dec),
        ];
        for (name, t) in [
            (LOG_THRESHOLD, &mut self.log_threshold),
            (R_MAG, &mut self.r_mag),
            (B_MAG, &mut self.b_mag),
        ] {
            if let Some(t) = t.as_mut() {
                out.push((name, t));
            }
        }
        out
    }

    /// Every tensor with its name, buffers included (for checkpoints).
    pub fn named_tensors(&self) -> Vec<(&'static str, &Tensor)> {
        let mut out = self.trainable();
        if let Some(t) = &self.batch_threshold {
            out.push((BATCH_THRESHOLD, t));
        }
        out
    }

    fn slot_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        match name {
            W_ENC => Some(&mut self.w_enc),
            B_ENC => Some(&mut self.b_enc),
            W_DEC => Some(&mut self.w_dec),
            B_DEC => Some(&mut self.b_dec),
            LOG_THRESHOLD => self.log_threshold.as_mut(),
            R_MAG => self.r_mag.as_mut(),
            B_MAG => self.b_mag.as_mut(),
            BATCH_THRESHOLD => self.batch_threshold.as_mut(),
            _ => None,
        }
    }

    /// Replaces every tensor of [`SaeWeights::named_tensors`] with the one
    /// `get` returns for its name (for checkpoints), checking shapes.
    pub fn load_named(&mut self, get: &dyn Fn(&str) -> Option<Tensor>) -> Result<()> {
        let device = self.device();
        let names: Vec<&'static str> = self.named_tensors().iter().map(|(n, _)| *n).collect();
        for name in names {
            let t = get(name).ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                source_desc: "SAE checkpoint".into(),
            })?;
            let Some(slot) = self.slot_mut(name) else {
                continue;
            };
            if t.size() != slot.size() {
                return Err(Error::ShapeMismatch {
                    name: name.to_string(),
                    expected: slot.size(),
                    got: t.size(),
                });
            }
            *slot = t.f_to_kind(Kind::Float)?.f_to_device(device)?;
        }
        Ok(())
    }

    /// Copies onto `device` (f32).
    pub fn to_device(&self, device: Device) -> Result<SaeWeights> {
        let mv =
            |t: &Tensor| -> Result<Tensor> { Ok(t.f_to_kind(Kind::Float)?.f_to_device(device)?) };
        let opt = |t: &Option<Tensor>| -> Result<Option<Tensor>> { t.as_ref().map(mv).transpose() };
        Ok(SaeWeights {
            w_enc: mv(&self.w_enc)?,
            b_enc: mv(&self.b_enc)?,
            w_dec: mv(&self.w_dec)?,
            b_dec: mv(&self.b_dec)?,
            log_threshold: opt(&self.log_threshold)?,
            r_mag: opt(&self.r_mag)?,
            b_mag: opt(&self.b_mag)?,
            batch_threshold: opt(&self.batch_threshold)?,
        })
    }

    /// Sets `requires_grad` on every trainable tensor.
    pub fn set_requires_grad(&mut self, on: bool) {
        for (_, t) in self.trainable_mut() {
            let _ = t.set_requires_grad(on);
        }
    }

    /// Scales the decoder rows to unit norm (in place, no gradient).
    pub fn normalize_decoder_rows(&mut self) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let norms = self
                .w_dec
                .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?
                .f_clamp_min(1e-12)?;
            let unit = self.w_dec.f_div(&norms)?;
            self.w_dec.f_copy_(&unit)?;
            Ok(())
        })
    }

    /// Folds an input scale into the weights: an SAE trained on `scale · x`
    /// becomes one that reads raw `x` and reconstructs raw `x`, with identical
    /// feature activations (`W_enc·scale`, `W_dec/scale`, `b_dec/scale`; the
    /// gated magnitude path shares `W_enc`).
    pub fn fold_input_scale(&mut self, scale: f64) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let w_enc = self.w_enc.f_mul_scalar(scale)?;
            let w_dec = self.w_dec.f_div_scalar(scale)?;
            let b_dec = self.b_dec.f_div_scalar(scale)?;
            self.w_enc.f_copy_(&w_enc)?;
            self.w_dec.f_copy_(&w_dec)?;
            self.b_dec.f_copy_(&b_dec)?;
            Ok(())
        })
    }
}
