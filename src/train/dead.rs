//! Dead latents, tracked as the number of tokens since each latent last
//! fired (as sparsify does); a latent is dead once that reaches the window.

use tch::{Device, Kind, Tensor};

use crate::error::Result;

pub struct DeadLatents {
    /// `[d_sae]` int64 tokens since each latent last fired.
    pub tokens_since_fired: Tensor,
    pub window: i64,
}

impl DeadLatents {
    pub fn new(d_sae: i64, window: u64, device: Device) -> Result<Self> {
        Ok(DeadLatents {
            tokens_since_fired: Tensor::f_zeros([d_sae], (Kind::Int64, device))?,
            window: window as i64,
        })
    }

    /// Records a batch of `rows` tokens in which `fired` `[d_sae]` latents fired.
    pub fn update(&mut self, fired: &Tensor, rows: i64) -> Result<()> {
        let _ = self.tokens_since_fired.f_add_scalar_(rows)?;
        let _ = self.tokens_since_fired.f_masked_fill_(fired, 0)?;
        Ok(())
    }

    /// `[d_sae]` bool: latents silent for the whole window.
    pub fn mask(&self) -> Result<Tensor> {
        Ok(self.tokens_since_fired.f_ge(self.window)?)
    }

    pub fn fraction(&self) -> Result<f64> {
        Ok(self
            .mask()?
            .f_to_kind(Kind::Float)?
            .f_mean(Kind::Float)?
            .f_double_value(&[])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latent_is_dead_after_a_window_of_silence() {
        let mut d = DeadLatents::new(3, 10, Device::Cpu).unwrap();
        let fired = Tensor::from_slice(&[true, false, false]);
        d.update(&fired, 6).unwrap();
        assert_eq!(d.fraction().unwrap(), 0.0);
        d.update(&Tensor::from_slice(&[false, false, true]), 6)
            .unwrap();
        let dead: Vec<bool> = Vec::try_from(&d.mask().unwrap()).unwrap();
        assert_eq!(dead, vec![false, true, false]);
    }
}
