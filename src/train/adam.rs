//! Adam (Kingma & Ba 2015) over an SAE's trainable tensors, with its state
//! exposed so checkpoints can save and restore it exactly. (tch's optimizer
//! keeps its state inside libtorch, out of reach of a checkpoint.)

use tch::Tensor;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

pub struct Adam {
    cfg: AdamConfig,
    /// Steps taken (for bias correction).
    pub step: u64,
    /// First and second moments, one per parameter.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl Adam {
    /// Zero moments shaped like `params`.
    pub fn new(cfg: AdamConfig, params: &[&Tensor]) -> Result<Adam> {
        let zeros = |p: &&Tensor| p.f_zeros_like();
        Ok(Adam {
            cfg,
            step: 0,
            m: params
                .iter()
                .map(zeros)
                .collect::<std::result::Result<_, _>>()?,
            v: params
                .iter()
                .map(zeros)
                .collect::<std::result::Result<_, _>>()?,
        })
    }

    /// `p ← p − lr · m̂ / (√v̂ + eps)` for each parameter and its gradient.
    pub fn update(&mut self, params: &mut [&mut Tensor], grads: &[Tensor], lr: f64) -> Result<()> {
        if params.len() != grads.len() || params.len() != self.m.len() {
            return Err(Error::InvalidArgument(format!(
                "Adam holds {} moments but got {} parameters and {} gradients",
                self.m.len(),
                params.len(),
                grads.len()
            )));
        }
        self.step += 1;
        let AdamConfig { beta1, beta2, eps } = self.cfg;
        let bias1 = 1.0 - beta1.powi(self.step as i32);
        let bias2 = 1.0 - beta2.powi(self.step as i32);
        // Seven passes over each tensor: lerp the moments, then
        // p += m / (√v · (−bias1 / (lr·√bias2)) − eps·bias1/lr), which is
        // p −= (lr / bias1) · m / (√(v / bias2) + eps).
        let scale = -bias1 / (lr * bias2.sqrt());
        let offset = -bias1 * eps / lr;
        tch::no_grad(|| -> Result<()> {
            for (((p, g), m), v) in params
                .iter_mut()
                .zip(grads)
                .zip(&mut self.m)
                .zip(&mut self.v)
            {
                let _ = m.f_lerp_(g, 1.0 - beta1)?;
                let _ = v.f_lerp_(&g.f_square()?, 1.0 - beta2)?;
                if lr <= 0.0 {
                    continue;
                }
                let mut denom = v.f_sqrt()?;
                let _ = denom.f_mul_scalar_(scale)?;
                let _ = denom.f_add_scalar_(offset)?;
                let _ = p.f_addcdiv_(m, &denom)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_lr_against_its_gradient_sign() {
        let cfg = AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        let mut p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let mut adam = Adam::new(cfg, &[&p]).unwrap();
        let g = Tensor::from_slice(&[0.3f32, -4.0, 0.0]);
        adam.update(&mut [&mut p], &[g], 0.1).unwrap();
        // Bias-corrected first step: m̂/√v̂ = sign(g).
        let got: Vec<f32> = Vec::try_from(&p).unwrap();
        for (g, w) in got.iter().zip([0.9f32, -1.9, 0.5]) {
            assert!((g - w).abs() < 1e-5, "{got:?}");
        }
    }
}
